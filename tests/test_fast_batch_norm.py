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
from tf_simclr.models import native_batch_norm
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
  native = native_batch_norm.usable()
  assert ('NativeBatchNormForward' if native else 'FusedBatchNormV3') in ops()
  with native_batch_norm.disabled():
    found = ops()
    assert 'FusedBatchNormV3' in found and 'NativeBatchNormForward' not in found
  fast_batch_norm.set_fused_batch_norm_enabled(False)
  try:
    assert not {'FusedBatchNormV3', 'NativeBatchNormForward'} & ops()
  finally:
    fast_batch_norm.set_fused_batch_norm_enabled(True)


def _numpy_batch_norm(x, gamma, beta, upstream, epsilon):
  """Float64 BN with batch statistics over all axes but the last, and its gradient."""
  axes = tuple(range(x.ndim - 1))
  count = x.size // x.shape[-1]
  mean, variance = x.mean(axes), x.var(axes)
  inverse = 1.0 / np.sqrt(variance + epsilon)
  normalized = (x - mean) * inverse
  d_beta = upstream.sum(axes)
  d_gamma = (upstream * normalized).sum(axes)
  d_x = gamma * inverse / count * (count * upstream - d_beta - normalized * d_gamma)
  return normalized * gamma + beta, mean, variance, d_x, d_gamma, d_beta


# A mean 333 standard deviations from 0 (offset 1e3) costs digits in float32: there the
# native kernels stay within 4e-6 of the largest value, TF's fused kernel 1e-4.
@pytest.mark.parametrize('shape, offset, tolerance', [
    ([8, 6, 6, 16], 1.5, 2e-6), ([4, 3, 3, 200], 0.0, 2e-6), ([2, 7], 0.0, 2e-6),
    ([300, 5], 30.0, 2e-6), ([300, 5], 1e3, 1e-5), ([1, 1, 1, 3], 0.0, 2e-6)])
def test_native_kernels_match_float64_formula(shape, offset, tolerance):
  if not native_batch_norm.usable():
    pytest.skip(native_batch_norm.status())
  rng = np.random.default_rng(1)
  channels = shape[-1]
  # The float32 values themselves, in float64 for the reference.
  as_float32 = lambda value: value.astype(np.float32).astype(np.float64)
  x = as_float32(rng.normal(size=shape) * 3.0 + offset)
  gamma, beta = as_float32(rng.uniform(0.5, 1.5, channels)), as_float32(rng.normal(size=channels))
  upstream = as_float32(rng.normal(size=shape))
  tensors = [tf.constant(value, tf.float32) for value in (x, gamma, beta)]
  with tf.GradientTape() as tape:
    tape.watch(tensors)
    y, mean, variance = native_batch_norm.batch_norm_training(*tensors, 1e-3)
  gradients = tape.gradient(y, tensors, output_gradients=tf.constant(upstream, tf.float32))
  expected = _numpy_batch_norm(x, gamma, beta, upstream, 1e-3)
  names = ('output', 'mean', 'variance', 'd_input', 'd_gamma', 'd_beta')
  for name, want, got in zip(names, expected, [y, mean, variance, *gradients]):
    # Float32 rounding of the terms: relative to the largest term of each quantity.
    scale = {'output': np.abs(gamma * (x - x.mean(tuple(range(x.ndim - 1))))).max() /
                       np.sqrt(x.var(tuple(range(x.ndim - 1))) + 1e-3).min() + np.abs(beta).max(),
             'd_input': np.abs(upstream).max() * np.abs(gamma).max() /
                        np.sqrt(expected[2].min() + 1e-3),
             'mean': np.abs(x).max()}.get(name, np.abs(want).max())
    assert np.max(np.abs(got.numpy() - want)) <= tolerance * max(scale, 1e-6), name


def test_native_kernels_match_tensorflow_fused_kernel():
  if not native_batch_norm.usable():
    pytest.skip(native_batch_norm.status())
  (_, fused_bn), x, upstream = _pair([16, 8, 8, 64])
  native = _forward_backward(fused_bn, x, upstream, True)
  with native_batch_norm.disabled():
    (_, tf_bn), _, _ = _pair([16, 8, 8, 64])
    stock = _forward_backward(tf_bn, x, upstream, True)
  for name, want, got in zip(('output', 'd_input', 'd_gamma', 'd_beta'), stock, native):
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=2e-5, err_msg=name)
  np.testing.assert_allclose(fused_bn.moving_variance.numpy(), tf_bn.moving_variance.numpy(),
                             rtol=1e-6)


@pytest.mark.parametrize('environment, status', [
    ({'CXX': 'no-such-compiler'}, 'no-such-compiler not on PATH'),
    ({'TF_SIMCLR_NATIVE_KERNELS': '0'}, 'native batch norm off (TF_SIMCLR_NATIVE_KERNELS=0)')])
def test_native_kernels_fall_back_without_a_compiler(tmp_path, environment, status):
  """No compiler, or turned off: one status line, the layer trains with TF's kernel."""
  script = (
      'import tensorflow as tf\n'
      'from tf_simclr.models import native_batch_norm\n'
      'from tf_simclr.models.fast_batch_norm import FusedBatchNormalization\n'
      'layer = FusedBatchNormalization()\n'
      'x = tf.random.normal([4, 3, 3, 5])\n'
      'ops = {op.type for op in tf.function(lambda t: layer(t, training=True))'
      '.get_concrete_function(x).graph.get_operations()}\n'
      'print(native_batch_norm.usable(), "FusedBatchNormV3" in ops)\n'
      'print(native_batch_norm.status())\n')
  result = subprocess.run(
      [sys.executable, '-c', script], capture_output=True, text=True, timeout=300,
      check=False, cwd=TESTS_DIR.parent,
      env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2', **environment,
           'TF_SIMCLR_NATIVE_CACHE': str(tmp_path)})
  assert result.returncode == 0, result.stderr[-3000:]
  usable_line, status_line = result.stdout.strip().splitlines()[-2:]
  assert usable_line == 'False True'
  assert status in status_line, status_line
  assert not list(tmp_path.iterdir())


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
