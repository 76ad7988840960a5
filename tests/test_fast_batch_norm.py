"""FusedBatchNormalization equals keras.layers.BatchNormalization numerically."""

import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_simclr.models import fast_batch_norm
from tf_simclr.models.fast_batch_norm import FusedBatchNormalization

TESTS_DIR = pathlib.Path(__file__).resolve().parent


def _pair(shape, synchronized=False, momentum=0.9, seed=0):
  """A Keras BN and a fused BN with identical random gamma/beta/moving stats."""
  rng = np.random.default_rng(seed)
  channels = shape[-1]
  values = dict(gamma=rng.uniform(0.5, 1.5, channels), beta=rng.normal(size=channels),
                moving_mean=rng.normal(size=channels),
                moving_variance=rng.uniform(0.5, 2.0, channels))
  layers = []
  for cls in (keras.layers.BatchNormalization, FusedBatchNormalization):
    layer = cls(momentum=momentum, epsilon=1e-5, synchronized=synchronized,
                name='block_batch_normalization')
    layer.build(shape)
    for name, value in values.items():
      getattr(layer, name).assign(value.astype(np.float32))
    layers.append(layer)
  x = (rng.normal(size=shape) * 3.0 + 1.5).astype(np.float32)
  upstream = rng.normal(size=shape).astype(np.float32)
  return layers, tf.constant(x), tf.constant(upstream)


def _forward_backward(layer, x, upstream, training):
  with tf.GradientTape() as tape:
    tape.watch(x)
    y = layer(x, training=training)
  grads = tape.gradient(y, [x, layer.gamma, layer.beta], output_gradients=upstream)
  return [y] + grads


@pytest.mark.parametrize('shape', [[6, 5, 4, 7], [10, 7], [4, 3, 7]])
@pytest.mark.parametrize('training', [True, False])
@pytest.mark.parametrize('synchronized', [False, True])
def test_matches_keras(shape, training, synchronized):
  (keras_bn, fused_bn), x, upstream = _pair(shape, synchronized)
  for _ in range(2):  # Two steps: moving statistics compound.
    expected = _forward_backward(keras_bn, x, upstream, training)
    actual = _forward_backward(fused_bn, x, upstream, training)
    for name, want, got in zip(('output', 'd_input', 'd_gamma', 'd_beta'), expected, actual):
      np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=2e-5, err_msg=name)
  for name in ('moving_mean', 'moving_variance'):
    np.testing.assert_allclose(getattr(fused_bn, name).numpy(),
                               getattr(keras_bn, name).numpy(), rtol=1e-6, atol=1e-6,
                               err_msg=name)


def test_fused_kernel_in_graph_and_keras_fallback_switch():
  (_, fused_bn), x, _ = _pair([2, 3, 3, 4], synchronized=True)
  ops = lambda: {op.type for op in tf.function(lambda t: fused_bn(t, training=True))
                 .get_concrete_function(x).graph.get_operations()}
  assert 'FusedBatchNormV3' in ops()
  fast_batch_norm.set_fused_batch_norm_enabled(False)
  try:
    assert 'FusedBatchNormV3' not in ops()
  finally:
    fast_batch_norm.set_fused_batch_norm_enabled(True)


def test_mixed_bfloat16_close_to_keras():
  previous = keras.config.dtype_policy()
  keras.config.set_dtype_policy('mixed_bfloat16')
  try:
    (keras_bn, fused_bn), x, upstream = _pair([8, 4, 4, 16])
  finally:
    keras.config.set_dtype_policy(previous)
  x16 = tf.cast(x, tf.bfloat16)
  upstream16 = tf.cast(upstream, tf.bfloat16)
  expected = _forward_backward(keras_bn, x16, upstream16, True)
  actual = _forward_backward(fused_bn, x16, upstream16, True)
  assert actual[0].dtype == tf.bfloat16 and actual[1].dtype == tf.bfloat16
  for name, want, got in zip(('output', 'd_input', 'd_gamma', 'd_beta'), expected, actual):
    want, got = tf.cast(want, tf.float32).numpy(), tf.cast(got, tf.float32).numpy()
    scale = np.max(np.abs(want))
    assert np.max(np.abs(got - want)) <= 2e-2 * scale, name  # bf16 has 8 mantissa bits.
  np.testing.assert_allclose(fused_bn.moving_variance.numpy(),
                             keras_bn.moving_variance.numpy(), rtol=1e-2)


def test_same_variables_config_and_type():
  (keras_bn, fused_bn), _, _ = _pair([2, 5])
  assert isinstance(fused_bn, keras.layers.BatchNormalization)
  assert [v.path for v in fused_bn.weights] == [v.path for v in keras_bn.weights]
  assert [v.path.split('/')[-1] for v in fused_bn.weights] == [
      'gamma', 'beta', 'moving_mean', 'moving_variance']
  clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(fused_bn))
  assert type(clone) is FusedBatchNormalization
  assert clone.get_config() == fused_bn.get_config()


@pytest.mark.parametrize('rank', [4, 2])
def test_synchronized_two_replicas_equals_full_batch(rank):
  result = subprocess.run(
      [sys.executable, str(TESTS_DIR / 'fused_batch_norm_replicas_check.py'), str(rank)],
      capture_output=True, text=True, timeout=300, check=False,
      env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'})
  assert result.returncode == 0, result.stderr[-3000:]
  differences = json.loads(result.stdout.strip().splitlines()[-1])
  assert differences.pop('replicas') == 2
  for name, difference in differences.items():
    assert difference < 1e-5, (name, difference)
