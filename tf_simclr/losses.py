"""NT-Xent contrastive loss, its training metrics, and the supervised loss.

Same math and scaling as google-research/simclr `tf2/objective.py`
(`add_contrastive_loss`, `add_supervised_loss`) and `tf2/metrics.py`, written as pure
functions: cross-replica gathering is done through a replica context passed in by the
caller, never through a global strategy.
"""

from __future__ import annotations

from typing import Optional

import tensorflow as tf

# Subtracted from self-similarity logits so that exp() of them is exactly 0 (official).
LARGE_NUM = 1e9


def _cast_to_float(tensor: tf.Tensor) -> tf.Tensor:
  """float16/bfloat16 -> float32; float32/float64 are kept (float64 for tests)."""
  if tensor.dtype in (tf.float32, tf.float64):
    return tensor
  return tf.cast(tensor, tf.float32)


def nt_xent_loss(
    hidden: tf.Tensor,
    *,
    temperature: float,
    hidden_norm: bool = True,
    replica_context: Optional[tf.distribute.ReplicaContext] = None,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """NT-Xent (normalised temperature-scaled cross-entropy) loss of SimCLR.

  `hidden` holds the local batch of b examples as two stacked views: rows 0..b-1 are
  view 1 (a), rows b..2b-1 view 2 (b). With a replica context of R replicas, both
  views are all-gathered from all replicas (gradients flow back through the gather),
  giving B = R * b global examples; replica r's example i has global index r * b + i.

  With z = l2_normalize(hidden) (if `hidden_norm`) and t = temperature:

    logits_ab[i, j] = z_a[i] . Z_b[j] / t           [b, B]  (Z: gathered)
    logits_aa[i, j] = z_a[i] . Z_a[j] / t - LARGE_NUM * [j == g(i)]
    logits_ba, logits_bb likewise for view-2 anchors,   g(i) = r * b + i
    loss_a[i] = -log softmax([logits_ab[i], logits_aa[i]])[g(i)]
    loss_b[i] = -log softmax([logits_ba[i], logits_bb[i]])[g(i)]
    loss = mean_i(loss_a[i] + loss_b[i])

  i.e. the sum of the mean over view-1 anchors and the mean over view-2 anchors, which
  is twice the paper's L = 1/(2N) sum_k [l(2k-1, 2k) + l(2k, 2k-1)]. Under a strategy
  each replica returns its local value; the caller divides by R before summing
  gradients (as the official training loop does), which yields the gradient of the
  loss over the global batch. The two softmax pieces are combined with logsumexp, not
  concatenated, so no [b, 2B] logits copy is made; the result equals the official
  concatenation (tests check this).

  Args:
    hidden: [2b, d] projections, view 1 rows then view 2 rows. float16/bfloat16 are
      cast to float32.
    temperature: softmax temperature t > 0.
    hidden_norm: L2-normalise `hidden` rows first (cosine similarity).
    replica_context: `tf.distribute.get_replica_context()` inside
      `strategy.run`; None (or a single replica) for no gathering.

  Returns:
    (loss, logits_ab, labels): scalar loss; logits_ab [b, B] view-1 vs gathered view-2
    logits; labels [b, 2B] one-hot of the positive g(i), as the official code returns.
  """
  hidden = _cast_to_float(tf.convert_to_tensor(hidden))
  if hidden_norm:
    hidden = tf.math.l2_normalize(hidden, axis=-1)
  hidden1, hidden2 = tf.split(hidden, 2, axis=0)  # [b, d] each
  batch_size = tf.shape(hidden1)[0]

  if replica_context is not None and replica_context.num_replicas_in_sync > 1:
    hidden1_large = replica_context.all_gather(hidden1, axis=0)  # [B, d]
    hidden2_large = replica_context.all_gather(hidden2, axis=0)  # [B, d]
    replica_id = tf.cast(
        tf.cast(replica_context.replica_id_in_sync_group, tf.uint32), tf.int32)
  else:
    hidden1_large, hidden2_large = hidden1, hidden2
    replica_id = tf.constant(0, tf.int32)
  enlarged_batch_size = tf.shape(hidden1_large)[0]
  labels_idx = tf.range(batch_size) + replica_id * batch_size  # [b] global positives

  # Self-similarity mask: add -LARGE_NUM at (i, g(i)) without a dense [b, B] mask.
  self_indices = tf.stack([tf.range(batch_size), labels_idx], axis=1)  # [b, 2]
  self_offsets = tf.fill([batch_size], tf.constant(-LARGE_NUM, hidden.dtype))

  def masked(logits: tf.Tensor) -> tf.Tensor:
    return tf.tensor_scatter_nd_add(logits, self_indices, self_offsets)

  logits_aa = masked(tf.matmul(hidden1, hidden1_large, transpose_b=True) / temperature)
  logits_bb = masked(tf.matmul(hidden2, hidden2_large, transpose_b=True) / temperature)
  logits_ab = tf.matmul(hidden1, hidden2_large, transpose_b=True) / temperature
  logits_ba = tf.matmul(hidden2, hidden1_large, transpose_b=True) / temperature

  # The positive logit of anchor i is logits_ab[i, g(i)] = logits_ba[i, g(i)].
  positive_index = tf.stack([tf.range(batch_size), labels_idx], axis=1)  # [b, 2]
  positive_ab = tf.gather_nd(logits_ab, positive_index)  # [b]
  positive_ba = tf.gather_nd(logits_ba, positive_index)  # [b]

  def log_normaliser(cross: tf.Tensor, same: tf.Tensor) -> tf.Tensor:
    # logsumexp over the concatenation [cross, same] along axis 1, per row: [b].
    return tf.reduce_logsumexp(
        tf.stack([tf.reduce_logsumexp(cross, axis=1),
                  tf.reduce_logsumexp(same, axis=1)], axis=1), axis=1)

  loss_a = log_normaliser(logits_ab, logits_aa) - positive_ab  # [b]
  loss_b = log_normaliser(logits_ba, logits_bb) - positive_ba  # [b]
  loss = tf.reduce_mean(loss_a + loss_b)

  labels = tf.one_hot(labels_idx, enlarged_batch_size * 2, dtype=hidden.dtype)  # [b, 2B]
  return loss, logits_ab, labels


def contrastive_metrics(logits_ab: tf.Tensor, labels: tf.Tensor) -> dict[str, tf.Tensor]:
  """Contrastive accuracy and entropy as official `tf2/metrics.py`.

  Args:
    logits_ab: [b, B] logits from `nt_xent_loss`.
    labels: [b, 2B] one-hot labels from `nt_xent_loss`.

  Returns:
    {'contrast_acc': fraction of rows whose argmax of logits_ab is the positive,
     'contrast_entropy': mean over rows of the entropy of softmax(logits_ab)}.
  """
  correct = tf.equal(tf.argmax(labels, axis=1), tf.argmax(logits_ab, axis=1))
  contrast_acc = tf.reduce_mean(tf.cast(correct, tf.float32))
  probabilities = tf.nn.softmax(logits_ab)
  contrast_entropy = -tf.reduce_mean(
      tf.reduce_sum(probabilities * tf.math.log(probabilities + 1e-8), axis=-1))
  return {'contrast_acc': contrast_acc,
          'contrast_entropy': tf.cast(contrast_entropy, tf.float32)}


def supervised_loss(labels_onehot: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
  """Mean softmax cross-entropy over the local batch (official `add_supervised_loss`).

  Args:
    labels_onehot: [b, C] one-hot (or soft) labels.
    logits: [b, C] logits; float16/bfloat16 are cast to float32.

  Returns:
    Scalar mean cross-entropy.
  """
  logits = _cast_to_float(tf.convert_to_tensor(logits))
  labels_onehot = tf.cast(labels_onehot, logits.dtype)
  return tf.reduce_mean(
      tf.nn.softmax_cross_entropy_with_logits(labels=labels_onehot, logits=logits))


def supervised_accuracy(labels_onehot: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
  """Fraction of rows whose argmax of `logits` equals the argmax of `labels_onehot`."""
  correct = tf.equal(tf.argmax(labels_onehot, axis=1), tf.argmax(logits, axis=1))
  return tf.reduce_mean(tf.cast(correct, tf.float32))


def distillation_loss(
    teacher_logits: tf.Tensor,
    student_logits: tf.Tensor,
    *,
    temperature: float = 1.0,
    labels_onehot: Optional[tf.Tensor] = None,
    labeled_logits: Optional[tf.Tensor] = None,
    label_weight: float = 0.0,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """SimCLRv2 distillation loss (Chen et al. 2020b, eq. 3), plus an optional label term.

  On b unlabelled images, teacher logits t [b, C] and student logits s [b, C] of the
  same augmented view, with temperature T:

    p_T[i] = softmax(t[i] / T),   log p_S[i] = log_softmax(s[i] / T)
    distill = mean_i( -sum_c p_T[i, c] * log p_S[i, c] )
    supervised = mean_j( -sum_c y[j, c] * log_softmax(s_L[j])[c] )   (T = 1)
    total = distill + label_weight * supervised

  with s_L [b_L, C] the student logits of a labelled batch and y [b_L, C] its one-hot
  labels. No gradient flows into the teacher logits. The paper's weighted form
  (1 - a) * supervised + a * distill is this total times a with label_weight =
  (1 - a) / a. Each replica returns its local means; dividing by the number of
  replicas before summing gradients gives the global-batch mean, as for `nt_xent_loss`.

  Args:
    teacher_logits: [b, C] teacher logits; float16/bfloat16 are cast to float32.
    student_logits: [b, C] student logits on the same images.
    temperature: T > 0, applied to both teacher and student logits.
    labels_onehot: [b_L, C] labels of the labelled batch; needed when label_weight > 0.
    labeled_logits: [b_L, C] student logits of the labelled batch.
    label_weight: weight of the supervised term; 0 leaves it out (then it is 0).

  Returns:
    (total, distill, supervised) scalars; supervised is 0 when label_weight is 0.
  """
  if temperature <= 0:
    raise ValueError(f'--distill_temperature={temperature} must be > 0.')
  student_logits = _cast_to_float(tf.convert_to_tensor(student_logits))
  teacher_logits = tf.stop_gradient(tf.cast(teacher_logits, student_logits.dtype))
  teacher_probabilities = tf.nn.softmax(teacher_logits / temperature, axis=-1)  # [b, C]
  distill = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(
      labels=teacher_probabilities, logits=student_logits / temperature))
  if label_weight:
    if labels_onehot is None or labeled_logits is None:
      raise ValueError('distillation_loss: label_weight > 0 needs labels_onehot and '
                       'labeled_logits.')
    supervised = tf.cast(supervised_loss(labels_onehot, labeled_logits), distill.dtype)
  else:
    supervised = tf.zeros([], distill.dtype)
  return distill + label_weight * supervised, distill, supervised
