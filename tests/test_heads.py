"""Tests of tf_simclr.models.heads against a NumPy float64 reference of the official heads."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_simclr.models.heads import ProjectionHead, SupervisedHead

BATCH, WIDTH, OUT_DIM = 6, 12, 5


def _bn_train_reference(x, gamma, beta):
  """BN with batch statistics (biased variance), epsilon 1e-5."""
  mean = x.mean(axis=0)
  variance = ((x - mean) ** 2).mean(axis=0)
  return (x - mean) / np.sqrt(variance + 1e-5) * gamma + beta


def _build(mode, num_layers=3, global_bn=False):
  head = ProjectionHead(mode, num_layers, OUT_DIM, batch_norm_decay=0.9, global_bn=global_bn)
  head.build((None, WIDTH))
  return head


@pytest.mark.parametrize('mode,num_layers,expected_dims', [
    ('none', 3, [WIDTH]),
    ('linear', 3, [WIDTH, OUT_DIM]),
    ('nonlinear', 1, [WIDTH, OUT_DIM]),
    ('nonlinear', 2, [WIDTH, WIDTH, OUT_DIM]),
    ('nonlinear', 3, [WIDTH, WIDTH, WIDTH, OUT_DIM]),
])
def test_modes_output_shapes(mode, num_layers, expected_dims):
  head = _build(mode, num_layers)
  inputs = tf.random.normal([BATCH, WIDTH])
  projection, hiddens = head(inputs, training=True)
  assert [tuple(h.shape) for h in hiddens] == [(BATCH, d) for d in expected_dims]
  assert head.num_hiddens == len(expected_dims)
  assert head.hidden_dims(WIDTH) == expected_dims
  assert tuple(projection.shape) == (BATCH, expected_dims[-1])
  # ft_proj_selector indexing: 0 is the encoder output, -1 the projection.
  np.testing.assert_array_equal(hiddens[0], inputs)
  np.testing.assert_array_equal(hiddens[-1], projection)


def test_nonlinear_matches_official_formula():
  rng = np.random.default_rng(0)
  head = _build('nonlinear', 3)
  for bn in head.bn_layers:
    bn.gamma.assign(rng.uniform(0.5, 1.5, bn.gamma.shape).astype(np.float32))
    if bn.center:
      bn.beta.assign(rng.normal(size=bn.beta.shape).astype(np.float32))
  inputs = rng.normal(size=(BATCH, WIDTH)).astype(np.float32)
  projection, hiddens = head(inputs, training=True)

  expected = [inputs.astype(np.float64)]
  for j, (dense, bn) in enumerate(zip(head.dense_layers, head.bn_layers)):
    beta = bn.beta.numpy() if bn.center else 0.0
    hidden = _bn_train_reference(expected[-1] @ dense.kernel.numpy(), bn.gamma.numpy(), beta)
    expected.append(np.maximum(hidden, 0) if j < 2 else hidden)
  for got, want in zip(hiddens, expected):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(projection, expected[-1], rtol=1e-4, atol=1e-4)
  assert np.any(expected[-1] < 0)  # no ReLU on the last layer


def test_layer_structure_matches_official():
  head = _build('nonlinear', 3, global_bn=True)
  assert [d.units for d in head.dense_layers] == [WIDTH, WIDTH, OUT_DIM]
  assert not any(d.use_bias for d in head.dense_layers)
  assert [bn.center for bn in head.bn_layers] == [True, True, False]
  assert all(bn.synchronized and bn.epsilon == 1e-5 and bn.momentum == 0.9
             for bn in head.bn_layers)
  for variable in head.variables:
    assert variable.path.endswith('/kernel') or 'batch_normalization' in variable.path
  np.testing.assert_allclose(np.std(head.dense_layers[0].kernel.numpy()), 0.01, rtol=0.5)

  linear = _build('linear')
  assert len(linear.dense_layers) == 1 and linear.dense_layers[0].units == OUT_DIM
  assert not linear.dense_layers[0].use_bias and not linear.bn_layers[0].center
  assert not _build('none').weights


def test_linear_matches_official_formula():
  head = _build('linear')
  inputs = np.random.default_rng(1).normal(size=(BATCH, WIDTH)).astype(np.float32)
  projection, _ = head(inputs, training=True)
  expected = _bn_train_reference(inputs.astype(np.float64) @ head.dense_layers[0].kernel.numpy(),
                                 1.0, 0.0)
  np.testing.assert_allclose(projection, expected, rtol=1e-4, atol=1e-4)


def test_bad_mode_is_one_clear_error():
  with pytest.raises(ValueError, match='--proj_head_mode'):
    ProjectionHead('mlp')


def test_supervised_head():
  head = SupervisedHead(7)
  inputs = tf.random.normal([BATCH, WIDTH])
  logits = head(inputs)
  assert tuple(logits.shape) == (BATCH, 7)
  paths = sorted(v.path for v in head.weights)
  assert all('head_supervised' in p for p in paths)
  assert paths[0].endswith('/bias') and paths[1].endswith('/kernel')
  np.testing.assert_allclose(logits, inputs.numpy() @ head.dense.kernel.numpy()
                             + head.dense.bias.numpy(), rtol=1e-5, atol=1e-6)
  assert 0.005 < np.std(head.dense.kernel.numpy()) < 0.02
  head.reset_to_zeros()
  assert not np.any(head(inputs).numpy())


def test_supervised_head_zero_init():
  head = SupervisedHead(3, zero_init=True)
  logits = head(tf.random.normal([BATCH, WIDTH]))
  assert not np.any(logits.numpy())
  assert not np.any(head.dense.kernel.numpy())
  with pytest.raises(ValueError, match='head_supervised'):
    SupervisedHead(3, name='classifier')
  assert isinstance(head.dense, keras.layers.Dense)
