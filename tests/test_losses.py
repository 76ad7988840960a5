"""NT-Xent, contrastive metrics and supervised loss against NumPy float64 references.

The references are written from the SimCLR paper (Chen et al. 2020, eq. 1):

  l(i, j) = -log( exp(sim(z_i, z_j) / t) / sum_{k != i} exp(sim(z_i, z_k) / t) )
  L = 1 / (2N) * sum_{k=1..N} [ l(2k-1, 2k) + l(2k, 2k-1) ]

over the 2N augmented examples, sim = cosine similarity (hidden_norm=True) or the
plain dot product (hidden_norm=False). The official code (and ours) returns
mean_i(loss_a[i] + loss_b[i]) = 2 * L, so the tests compare against 2 * L.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tf_simclr import losses


def paper_nt_xent(hidden: np.ndarray, temperature: float, hidden_norm: bool) -> float:
  """2 * L of the paper, in float64, for hidden [2N, d] = [view 1; view 2]."""
  hidden = np.asarray(hidden, np.float64)
  if hidden_norm:
    hidden = hidden / np.linalg.norm(hidden, axis=1, keepdims=True)
  num_pairs = hidden.shape[0] // 2
  similarity = hidden @ hidden.T / temperature  # [2N, 2N]
  total = 0.0
  for anchor in range(2 * num_pairs):
    positive = (anchor + num_pairs) % (2 * num_pairs)
    others = np.delete(similarity[anchor], anchor)  # k != i
    log_denominator = np.log(np.sum(np.exp(others - others.max()))) + others.max()
    total += -(similarity[anchor, positive] - log_denominator)
  paper_loss = total / (2 * num_pairs)
  return 2.0 * paper_loss


def concat_nt_xent(hidden: tf.Tensor, temperature: float, hidden_norm: bool) -> tf.Tensor:
  """The straightforward single-device form: concatenated logits + one-hot CE."""
  if hidden_norm:
    hidden = tf.math.l2_normalize(hidden, -1)
  hidden1, hidden2 = tf.split(hidden, 2, 0)
  batch_size = tf.shape(hidden1)[0]
  labels = tf.one_hot(tf.range(batch_size), batch_size * 2, dtype=hidden.dtype)
  masks = tf.one_hot(tf.range(batch_size), batch_size, dtype=hidden.dtype)
  logits_aa = tf.matmul(hidden1, hidden1, transpose_b=True) / temperature - masks * 1e9
  logits_bb = tf.matmul(hidden2, hidden2, transpose_b=True) / temperature - masks * 1e9
  logits_ab = tf.matmul(hidden1, hidden2, transpose_b=True) / temperature
  logits_ba = tf.matmul(hidden2, hidden1, transpose_b=True) / temperature
  loss_a = tf.nn.softmax_cross_entropy_with_logits(labels, tf.concat([logits_ab, logits_aa], 1))
  loss_b = tf.nn.softmax_cross_entropy_with_logits(labels, tf.concat([logits_ba, logits_bb], 1))
  return tf.reduce_mean(loss_a + loss_b)


@pytest.mark.parametrize('batch_size, dim, temperature, hidden_norm', [
    (1, 3, 0.1, True),
    (2, 4, 0.5, True),
    (5, 8, 0.1, True),
    (16, 32, 1.0, True),
    (7, 5, 0.2, False),
    (4, 16, 1.0, False),
])
def test_loss_matches_paper_formula(batch_size, dim, temperature, hidden_norm):
  rng = np.random.default_rng(batch_size * 100 + dim)
  scale = 1.0 if hidden_norm else 0.3  # keep un-normalised logits moderate
  hidden = rng.normal(size=(2 * batch_size, dim)) * scale
  expected = paper_nt_xent(hidden, temperature, hidden_norm)
  loss, logits_ab, labels = losses.nt_xent_loss(
      tf.constant(hidden, tf.float32), temperature=temperature, hidden_norm=hidden_norm)
  assert loss.dtype == tf.float32
  np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5, atol=1e-5)
  assert logits_ab.shape == (batch_size, batch_size)
  assert labels.shape == (batch_size, 2 * batch_size)
  np.testing.assert_array_equal(labels.numpy(), np.eye(batch_size, 2 * batch_size))
  normalised = hidden / np.linalg.norm(hidden, axis=1, keepdims=True) if hidden_norm else hidden
  expected_logits_ab = normalised[:batch_size] @ normalised[batch_size:].T / temperature
  np.testing.assert_allclose(logits_ab.numpy(), expected_logits_ab, rtol=1e-5, atol=1e-5)


def test_loss_float64_is_exact():
  rng = np.random.default_rng(0)
  hidden = rng.normal(size=(12, 6))
  loss, _, _ = losses.nt_xent_loss(tf.constant(hidden), temperature=0.3)
  assert loss.dtype == tf.float64
  np.testing.assert_allclose(loss.numpy(), paper_nt_xent(hidden, 0.3, True), rtol=1e-12)


def test_logsumexp_form_equals_concatenation_and_official_scale():
  # Larger batch with low temperature: the logsumexp combination must match the
  # official concatenation in float32 (values and gradients).
  rng = np.random.default_rng(1)
  hidden = tf.constant(rng.normal(size=(256, 64)), tf.float32)
  for temperature in (0.05, 0.5):
    with tf.GradientTape(persistent=True) as tape:
      tape.watch(hidden)
      ours, _, _ = losses.nt_xent_loss(hidden, temperature=temperature)
      reference = concat_nt_xent(hidden, temperature, True)
    np.testing.assert_allclose(ours.numpy(), reference.numpy(), rtol=1e-6)
    np.testing.assert_allclose(tape.gradient(ours, hidden).numpy(),
                               tape.gradient(reference, hidden).numpy(), rtol=1e-4, atol=1e-7)


# Invariants in lightly's manner (its tests/loss/test_NTXentLoss.py), on our scale: the
# loss is the sum of the mean over view-1 anchors and the mean over view-2 anchors.


@pytest.mark.parametrize('batch_size, temperature, hidden_norm', [
    (1, 0.1, True), (3, 0.5, True), (8, 0.07, True), (6, 1.0, False)])
def test_swapping_the_two_views_gives_the_same_loss(batch_size, temperature, hidden_norm):
  rng = np.random.default_rng(batch_size)
  view1, view2 = rng.normal(size=(2, batch_size, 5))  # float64
  loss, _, _ = losses.nt_xent_loss(np.concatenate([view1, view2]), temperature=temperature,
                                   hidden_norm=hidden_norm)
  swapped, _, _ = losses.nt_xent_loss(np.concatenate([view2, view1]),
                                      temperature=temperature, hidden_norm=hidden_norm)
  np.testing.assert_allclose(float(swapped), float(loss), rtol=1e-12)


@pytest.mark.parametrize('batch_size', [1, 2, 7, 32])
@pytest.mark.parametrize('temperature', [0.05, 0.1, 0.5, 1.0, 10.0])
def test_identical_embeddings_give_twice_log_of_2b_minus_1(batch_size, temperature):
  # All 2B logits of an anchor's softmax (positive + 2B - 2 negatives; itself masked)
  # are equal, so each anchor's loss is log(2B - 1), whatever the temperature, and ours,
  # the sum of the two views' means, is 2 log(2B - 1).
  embedding = np.random.default_rng(0).normal(size=(1, 16))
  hidden = np.repeat(embedding, 2 * batch_size, axis=0)  # float64
  loss, _, _ = losses.nt_xent_loss(hidden, temperature=temperature)
  np.testing.assert_allclose(float(loss), 2 * np.log(2 * batch_size - 1), rtol=1e-12,
                             atol=1e-12)
  loss32, _, _ = losses.nt_xent_loss(tf.constant(hidden, tf.float32), temperature=temperature)
  np.testing.assert_allclose(float(loss32), 2 * np.log(2 * batch_size - 1), rtol=1e-5,
                             atol=1e-5)


def test_bfloat16_input_is_computed_in_float32():
  rng = np.random.default_rng(2)
  hidden = rng.normal(size=(8, 16)).astype(np.float32)
  bf16 = tf.cast(tf.constant(hidden), tf.bfloat16)
  loss, logits_ab, labels = losses.nt_xent_loss(bf16, temperature=0.1)
  assert loss.dtype == logits_ab.dtype == labels.dtype == tf.float32
  rounded = tf.cast(bf16, tf.float32).numpy().astype(np.float64)
  np.testing.assert_allclose(loss.numpy(), paper_nt_xent(rounded, 0.1, True), rtol=1e-5)


@pytest.mark.parametrize('hidden_norm', [True, False])
def test_gradient_matches_finite_differences(hidden_norm):
  rng = np.random.default_rng(3)
  temperature = 0.5
  hidden = rng.normal(size=(6, 4)) * (1.0 if hidden_norm else 0.5)
  hidden_tensor = tf.constant(hidden, tf.float64)
  with tf.GradientTape() as tape:
    tape.watch(hidden_tensor)
    loss, _, _ = losses.nt_xent_loss(hidden_tensor, temperature=temperature,
                                     hidden_norm=hidden_norm)
  gradient = tape.gradient(loss, hidden_tensor).numpy()
  step = 1e-6
  numeric = np.zeros_like(hidden)
  for index in np.ndindex(*hidden.shape):
    plus, minus = hidden.copy(), hidden.copy()
    plus[index] += step
    minus[index] -= step
    numeric[index] = (paper_nt_xent(plus, temperature, hidden_norm)
                      - paper_nt_xent(minus, temperature, hidden_norm)) / (2 * step)
  np.testing.assert_allclose(gradient, numeric, rtol=1e-6, atol=1e-8)


def test_contrastive_metrics_match_numpy():
  rng = np.random.default_rng(4)
  batch_size = 10
  hidden = rng.normal(size=(2 * batch_size, 8))
  hidden[batch_size:] = hidden[:batch_size] + rng.normal(size=(batch_size, 8)) * 0.8
  loss, logits_ab, labels = losses.nt_xent_loss(tf.constant(hidden, tf.float32), temperature=0.2)
  metrics = losses.contrastive_metrics(logits_ab, labels)

  normalised = hidden / np.linalg.norm(hidden, axis=1, keepdims=True)
  logits = normalised[:batch_size] @ normalised[batch_size:].T / 0.2
  expected_acc = np.mean(np.argmax(logits, axis=1) == np.arange(batch_size))
  assert 0.0 < expected_acc < 1.0  # the data make the test informative
  probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
  probabilities /= probabilities.sum(axis=1, keepdims=True)
  expected_entropy = -np.mean(np.sum(probabilities * np.log(probabilities + 1e-8), axis=1))
  np.testing.assert_allclose(metrics['contrast_acc'].numpy(), expected_acc, rtol=1e-6)
  np.testing.assert_allclose(metrics['contrast_entropy'].numpy(), expected_entropy, rtol=1e-5)


def test_supervised_loss_and_accuracy_match_numpy():
  rng = np.random.default_rng(5)
  logits = rng.normal(size=(9, 5)) * 3
  classes = rng.integers(0, 5, size=9)
  onehot = np.eye(5)[classes]
  log_probabilities = logits - logits.max(1, keepdims=True)
  log_probabilities -= np.log(np.exp(log_probabilities).sum(1, keepdims=True))
  expected_loss = -np.mean(log_probabilities[np.arange(9), classes])
  expected_acc = np.mean(np.argmax(logits, 1) == classes)
  loss = losses.supervised_loss(tf.constant(onehot, tf.float32), tf.constant(logits, tf.float32))
  acc = losses.supervised_accuracy(tf.constant(onehot, tf.float32), tf.constant(logits, tf.float32))
  np.testing.assert_allclose(loss.numpy(), expected_loss, rtol=1e-5)
  np.testing.assert_allclose(acc.numpy(), expected_acc, rtol=1e-7)
  bf16_loss = losses.supervised_loss(onehot, tf.cast(logits, tf.bfloat16))
  assert bf16_loss.dtype == tf.float32


def numpy_nt_xent_gradient(hidden: np.ndarray, temperature: float,
                           hidden_norm: bool) -> np.ndarray:
  """d(2 L)/d(hidden) of `paper_nt_xent` in float64, from the formula (chain rule).

  With s = z z^T / t (self excluded), p_i = softmax_k(s_ik), positive q(i):
  d(2L)/ds_ik = (p_ik - [k == q(i)]) / N, d/dz = (G + G^T) z / t; then the
  L2-normalisation Jacobian (I - z z^T) / |h| row by row.
  """
  hidden = np.asarray(hidden, np.float64)
  norms = np.linalg.norm(hidden, axis=1, keepdims=True)
  z = hidden / norms if hidden_norm else hidden
  rows = z.shape[0]
  num_pairs = rows // 2
  logits = z @ z.T / temperature
  np.fill_diagonal(logits, -np.inf)
  logits -= logits.max(axis=1, keepdims=True)
  probabilities = np.exp(logits)
  probabilities /= probabilities.sum(axis=1, keepdims=True)
  logit_gradient = probabilities.copy()
  logit_gradient[np.arange(rows), (np.arange(rows) + num_pairs) % rows] -= 1.0
  logit_gradient /= num_pairs
  z_gradient = (logit_gradient + logit_gradient.T) @ z / temperature
  if not hidden_norm:
    return z_gradient
  return (z_gradient - np.sum(z_gradient * z, axis=1, keepdims=True) * z) / norms


@pytest.mark.parametrize('batch_size, block_rows, temperature, hidden_norm', [
    (5, 1, 0.1, True),     # one anchor row per block
    (5, 3, 0.2, True),     # 3 does not divide 2b = 10
    (5, 4, 0.5, False),
    (5, 10, 0.1, True),    # one block of all 2b rows
    (5, 64, 0.1, True),    # block larger than 2b
    (16, 7, 0.07, True),   # 7 does not divide 32; view 1 / view 2 inside one block
    (16, 8, 1.0, True),
])
def test_blocked_loss_equals_nt_xent_and_float64_reference(batch_size, block_rows,
                                                           temperature, hidden_norm):
  rng = np.random.default_rng(batch_size * 10 + block_rows)
  hidden = rng.normal(size=(2 * batch_size, 6)) * (1.0 if hidden_norm else 0.4)
  hidden[batch_size:] = hidden[:batch_size] + 0.7 * hidden[batch_size:]  # Some positives win.
  hidden_tensor = tf.constant(hidden, tf.float32)
  with tf.GradientTape(persistent=True) as tape:
    tape.watch(hidden_tensor)
    blocked, blocked_metrics = losses.blocked_nt_xent_loss(
        hidden_tensor, temperature=temperature, hidden_norm=hidden_norm,
        block_rows=block_rows)
    reference, logits_ab, labels = losses.nt_xent_loss(
        hidden_tensor, temperature=temperature, hidden_norm=hidden_norm)
  blocked_gradient = tape.gradient(blocked, hidden_tensor).numpy()
  # Against the NumPy float64 formula (loss and gradient).
  np.testing.assert_allclose(float(blocked), paper_nt_xent(hidden, temperature, hidden_norm),
                             rtol=1e-5, atol=1e-5)
  expected_gradient = numpy_nt_xent_gradient(hidden, temperature, hidden_norm)
  gradient_scale = max(1.0, float(np.abs(expected_gradient).max()))
  np.testing.assert_allclose(blocked_gradient, expected_gradient, rtol=0,
                             atol=1e-5 * gradient_scale)
  # Against the unblocked loss: value, gradient, metrics.
  np.testing.assert_allclose(float(blocked), float(reference), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(blocked_gradient, tape.gradient(reference, hidden_tensor).numpy(),
                             rtol=0, atol=1e-5 * gradient_scale)
  for name, value in losses.contrastive_metrics(logits_ab, labels).items():
    np.testing.assert_allclose(float(blocked_metrics[name]), float(value), rtol=1e-5,
                               atol=1e-6, err_msg=name)
  # Float64 in: the same formula to float64 rounding.
  exact, _ = losses.blocked_nt_xent_loss(hidden, temperature=temperature,
                                         hidden_norm=hidden_norm, block_rows=block_rows)
  np.testing.assert_allclose(float(exact), paper_nt_xent(hidden, temperature, hidden_norm),
                             rtol=1e-12)


def test_blocked_loss_in_a_graph_and_its_default_block_rows():
  # Traced (as in the training step), with the rows chosen from the static shapes.
  rng = np.random.default_rng(6)
  hidden = tf.constant(rng.normal(size=(24, 8)), tf.float32)

  @tf.function
  def loss_and_gradient(hidden):
    with tf.GradientTape() as tape:
      tape.watch(hidden)
      loss, _ = losses.blocked_nt_xent_loss(hidden, temperature=0.1)
    return loss, tape.gradient(loss, hidden)

  loss, gradient = loss_and_gradient(hidden)
  np.testing.assert_allclose(float(loss), paper_nt_xent(hidden.numpy(), 0.1, True), rtol=1e-5)
  np.testing.assert_allclose(gradient.numpy(),
                             numpy_nt_xent_gradient(hidden.numpy(), 0.1, True), atol=1e-5)
  assert losses.default_block_rows(24, 1) == 24  # Small batches: one block.
  assert losses.default_block_rows(8192, 1) == 256  # B = 4096: 256 x 8192 per block.
  assert losses.default_block_rows(1024, 8) == 256  # 2B = 8192 gathered keys.
  with pytest.raises(ValueError, match='block_rows'):
    losses.blocked_nt_xent_loss(hidden, temperature=0.1, block_rows=0)


def run_distributed_check(num_replicas: int) -> dict:
  """Runs tests/distributed_numerics_check.py in a fresh process (logical CPUs)."""
  script = pathlib.Path(__file__).with_name('distributed_numerics_check.py')
  environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', CUDA_VISIBLE_DEVICES='')
  completed = subprocess.run(
      [sys.executable, str(script), f'--num_replicas={num_replicas}'],
      capture_output=True, text=True, timeout=600, env=environment, check=False)
  assert completed.returncode == 0, completed.stderr[-3000:]
  return json.loads(completed.stdout.strip().splitlines()[-1])


def check_distributed_results(results: dict) -> None:
  # Gathered negatives: replica losses / N summed, summed kernel gradients and each
  # replica's input-row gradients equal the single-device full batch (float32).
  assert results['loss_value_error'] <= 1e-6 * max(1.0, results['single_loss'])
  gradient_tolerance = 1e-6 * max(1.0, results['kernel_gradient_scale'])
  assert results['loss_kernel_gradient_error'] <= gradient_tolerance
  assert results['loss_input_gradient_error'] <= 1e-6
  assert results['loss_logits_error'] <= 2e-6  # logits up to 1 / temperature = 5
  assert results['loss_labels_ok']
  assert results['loss_metrics_error'] <= 1e-6
  # The row-blocked loss (gradient caching's) with gathered negatives: the same numbers.
  assert results['blocked_value_error'] <= 1e-5 * max(1.0, results['single_loss'])
  assert results['blocked_kernel_gradient_error'] <= 1e-5 * max(
      1.0, results['kernel_gradient_scale'])
  assert results['blocked_input_gradient_error'] <= 1e-5
  assert results['blocked_metrics_error'] <= 1e-5
  # Without the gather the same comparison fails: the check has teeth.
  assert results['no_gather_value_error'] > 1e-2
  assert results['no_gather_kernel_gradient_error'] > 1e-2
  assert not results['no_gather_labels_ok']
  # LARS + WarmUpAndCosineDecay + weight_decay_loss: 3 steps equal single device.
  assert results['lars_iterations'] == 3
  assert results['lars_weight_change'] > 1e-2
  assert results['lars_weight_error'] <= 1e-6
  assert results['lars_momentum_error'] <= 1e-6


def test_two_replicas_match_single_device():
  check_distributed_results(run_distributed_check(2))


@pytest.mark.slow
def test_four_replicas_match_single_device():
  check_distributed_results(run_distributed_check(4))


def numpy_distillation(teacher, student, temperature, labels=None, labeled=None,
                       label_weight=0.0):
  """SimCLRv2 eq. 3 (+ weighted cross-entropy on labels) in float64, from the formula."""
  def log_softmax(logits):
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
  teacher_probabilities = np.exp(log_softmax(np.asarray(teacher, np.float64) / temperature))
  distill = np.mean(-np.sum(teacher_probabilities *
                            log_softmax(np.asarray(student, np.float64) / temperature), axis=1))
  supervised = 0.0
  if label_weight:
    supervised = np.mean(-np.sum(np.asarray(labels, np.float64) * log_softmax(labeled), axis=1))
  return distill + label_weight * supervised, distill, supervised


@pytest.mark.parametrize('temperature, label_weight', [
    (1.0, 0.0), (0.1, 0.0), (4.0, 0.0), (1.0, 1.0), (0.5, 0.3), (2.0, 5.0)])
def test_distillation_loss_matches_numpy_float64(temperature, label_weight):
  rng = np.random.default_rng(int(temperature * 10 + label_weight * 100))
  teacher = rng.normal(scale=3.0, size=(12, 7))
  student = rng.normal(scale=3.0, size=(12, 7))
  labeled = rng.normal(scale=3.0, size=(5, 7))
  labels = np.eye(7)[rng.integers(0, 7, 5)]
  expected = numpy_distillation(teacher, student, temperature, labels, labeled, label_weight)
  actual = losses.distillation_loss(
      tf.constant(teacher, tf.float32), tf.constant(student, tf.float32),
      temperature=temperature, labels_onehot=tf.constant(labels, tf.float32),
      labeled_logits=tf.constant(labeled, tf.float32), label_weight=label_weight)
  np.testing.assert_allclose([float(value) for value in actual], expected, rtol=2e-6, atol=1e-6)
  exact = losses.distillation_loss(teacher, student, temperature=temperature,
                                   labels_onehot=labels, labeled_logits=labeled,
                                   label_weight=label_weight)  # float64 in, float64 out
  np.testing.assert_allclose([float(value) for value in exact], expected, rtol=1e-12)


def test_distillation_loss_gradient_reaches_the_student_only():
  rng = np.random.default_rng(3)
  teacher = tf.Variable(rng.normal(size=(6, 5)))
  student = tf.Variable(rng.normal(size=(6, 5)))
  temperature = 2.0
  with tf.GradientTape(persistent=True) as tape:
    total, _, _ = losses.distillation_loss(teacher, student, temperature=temperature)
  assert tape.gradient(total, teacher) is None
  # d/ds of mean_i CE(p_T, softmax(s/T)) = (softmax(s/T) - p_T) / (T * b).
  def softmax(logits):
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)
  expected = (softmax(student.numpy() / temperature) - softmax(teacher.numpy() / temperature)
              ) / (temperature * 6)
  np.testing.assert_allclose(tape.gradient(total, student).numpy(), expected, rtol=1e-10)
  # Equal logits: the loss is the teacher's entropy at T, its minimum.
  _, distill, _ = losses.distillation_loss(teacher, teacher, temperature=temperature)
  probabilities = softmax(teacher.numpy() / temperature)
  np.testing.assert_allclose(float(distill), np.mean(-np.sum(
      probabilities * np.log(probabilities), axis=1)), rtol=1e-12)
  with pytest.raises(ValueError, match='--distill_temperature=0.0 must be > 0'):
    losses.distillation_loss(teacher, student, temperature=0.0)
