"""A faster drop-in for `keras.layers.BatchNormalization` (last-axis, TensorFlow).

Keras 3 BatchNormalization normalises with unfused element-wise ops (on this CPU one
layer's forward + backward on [32, 24, 24, 256] is about 3x slower than TensorFlow's fused
kernel), and with `synchronized=True` it issues three all-reduces per layer (sum, sum of
squares, count), even with a single replica. `FusedBatchNormalization` keeps the Keras
layer's variables, config and semantics and changes only how `call` computes:

- training, one replica (or `synchronized=False`): in float32 on a CPU the C++ kernels of
  `native_batch_norm` (forward + backward 2-3x faster than TF's fused one on the AVX2-only
  EPYC, 2026-12-03; chosen per shape at start-up), else
  the fused kernel `FusedBatchNormV3(is_training=True)`; both with the exact BN gradient;
- training, synchronized over several replicas: local sum and sum of squares plus the
  count concatenated into ONE all-reduce, then normalisation with global statistics
  (its gradient all-reduces once too: the gradient of a SUM all-reduce is one);
- inference: the fused kernel with the moving statistics (`is_training=False`).

Moving statistics follow Keras exactly: `moving = moving * momentum + batch * (1 -
momentum)` with the biased batch variance. Anything this layer does not specialise
(renorm, masks, an axis other than the last, float64) falls back to the Keras code.
"""

from __future__ import annotations

from typing import Any, ContextManager, Mapping, Optional

import keras
import tensorflow as tf

from tf_simclr.models import native_batch_norm
from tf_simclr.models import shape_choices

_FUSED_DTYPES = (tf.float32, tf.bfloat16, tf.float16)
_enabled = True


# Per-shape choices (tf_simclr/models/kernel_choice.py): input shape without the batch
# -> fused (True) or the Keras computation (False), for unsynchronized statistics.
# Synchronized multi-replica BN stays ours (one all-reduce instead of Keras' three).
_choices = shape_choices.ShapeChoices()


# Per-shape choices between the native kernel (True, where `native_batch_norm.usable()`)
# and TF's fused one (False), for the shapes that take the fused path.
_native_choices = shape_choices.ShapeChoices()


def set_native_choices(choices: Mapping[tuple[int, ...], bool], default: bool = True) -> None:
  """Per-shape choice between the native kernel (True) and TF's fused one."""
  _native_choices.set(choices, default)


def native_choices() -> tuple[dict[tuple[int, ...], bool], bool]:
  """(per-shape native choices, default) currently set."""
  return _native_choices.get()


def set_fused_choices(choices: Mapping[tuple[int, ...], bool], default: bool = True) -> None:
  """Per-shape choice between the fused kernel (True) and the Keras computation."""
  _choices.set(choices, default)


def fused_choices() -> tuple[dict[tuple[int, ...], bool], bool]:
  """(per-shape choices, default) currently set."""
  return _choices.get()


def recording_shapes() -> ContextManager[list[tuple[int, ...]]]:
  """Collects the input shape (batch axis left out) of every BN call inside."""
  return _choices.recording()


def set_fused_batch_norm_enabled(enabled: bool) -> None:
  """Turns the fused paths on (default) or off (every layer computes as Keras does).

  Read when a layer is called (traced), so set it before building the step function.
  Benchmarks use it to compare both in one process.
  """
  global _enabled
  _enabled = bool(enabled)


def fused_batch_norm_enabled() -> bool:
  return _enabled


def shape_key(shape: Any) -> tuple[int, ...]:
  """A BN input shape without its batch axis (unknown sizes as -1)."""
  return tuple(-1 if size is None else int(size) for size in list(shape)[1:])


@keras.saving.register_keras_serializable(package='tf_simclr')
class FusedBatchNormalization(keras.layers.BatchNormalization):
  """`keras.layers.BatchNormalization` computed with fused kernels and one all-reduce.

  Same constructor, weights (gamma, beta, moving_mean, moving_variance), config and
  numerics (to float32 rounding) as the Keras layer, so checkpoints and saved configs
  are interchangeable. `isinstance(layer, keras.layers.BatchNormalization)` holds.
  """

  def _uses_keras_path(self, inputs: tf.Tensor, mask: Optional[tf.Tensor]) -> bool:
    rank = len(inputs.shape)
    if (not _enabled or mask is not None or self.renorm or rank < 2 or
        self.axis not in (-1, rank - 1) or inputs.dtype not in _FUSED_DTYPES):
      return True
    replica_context = tf.distribute.get_replica_context()
    if (self.synchronized and replica_context is not None and
        replica_context.num_replicas_in_sync > 1):
      return False
    return not _choices.ours(shape_key(inputs.shape))

  def call(self, inputs, training=None, mask=None):
    inputs = tf.convert_to_tensor(inputs)
    key = shape_key(inputs.shape)
    _choices.record(key)
    if self._uses_keras_path(inputs, mask):
      return super().call(inputs, training=training, mask=mask)
    channels = inputs.shape[-1]
    # Any rank -> NHWC: [..., C] -> [1, 1, prod(...), C] (a no-op for 4-D input).
    images = inputs if len(inputs.shape) == 4 else tf.reshape(inputs, [1, 1, -1, channels])
    gamma = (tf.cast(self.gamma, tf.float32) if self.scale else
             tf.ones([channels], tf.float32))
    beta = (tf.cast(self.beta, tf.float32) if self.center else
            tf.zeros([channels], tf.float32))
    if training and self.trainable:
      replica_context = tf.distribute.get_replica_context()
      if (self.synchronized and replica_context is not None and
          replica_context.num_replicas_in_sync > 1):
        outputs = self._synchronized_training(images, gamma, beta, replica_context)
      else:
        outputs = self._fused_training(images, gamma, beta, key)
    else:
      outputs = tf.raw_ops.FusedBatchNormV3(
          x=images, scale=gamma, offset=beta,
          mean=tf.cast(self.moving_mean, tf.float32),
          variance=tf.cast(self.moving_variance, tf.float32),
          epsilon=self.epsilon, data_format='NHWC', is_training=False).y
    if len(inputs.shape) != 4:
      outputs = tf.reshape(outputs, tf.shape(inputs))  # [1, 1, N, C] -> input shape.
    return tf.cast(outputs, self.compute_dtype)

  def _update_moving_statistics(self, mean: tf.Tensor, variance: tf.Tensor) -> None:
    """Keras' update: moving * momentum + batch * (1 - momentum); biased variance."""
    momentum = self.momentum
    self.moving_mean.assign(
        tf.cast(self.moving_mean, tf.float32) * momentum + mean * (1.0 - momentum))
    self.moving_variance.assign(
        tf.cast(self.moving_variance, tf.float32) * momentum + variance * (1.0 - momentum))

  def _fused_training(self, images: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor,
                      key: tuple[int, ...]) -> tf.Tensor:
    """Batch statistics of this replica's batch with the fused kernel (float32 on a CPU:
    the native one, `native_batch_norm`, where it can be built and is chosen for `key`)."""
    if native_batch_norm.usable(images.dtype) and _native_choices.ours(key):
      outputs, mean, biased_variance = native_batch_norm.batch_norm_training(
          images, gamma, beta, self.epsilon)
      self._update_moving_statistics(tf.stop_gradient(mean), tf.stop_gradient(biased_variance))
      return outputs
    result = tf.raw_ops.FusedBatchNormV3(
        x=images, scale=gamma, offset=beta, mean=tf.zeros([0], tf.float32),
        variance=tf.zeros([0], tf.float32), epsilon=self.epsilon, data_format='NHWC',
        is_training=True)
    # The kernel's batch_variance has Bessel's correction (n / (n - 1)); Keras keeps the
    # biased variance in its moving average.
    count = tf.cast(tf.size(images) // tf.shape(images)[-1], tf.float32)
    biased_variance = result.batch_variance * (tf.maximum(count - 1.0, 1.0) / count)
    self._update_moving_statistics(tf.stop_gradient(result.batch_mean),
                                   tf.stop_gradient(biased_variance))
    return result.y

  def _synchronized_training(self, images: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor,
                             replica_context: Any) -> tf.Tensor:
    """Global batch statistics over all replicas with one all-reduce."""
    channels = images.shape[-1]
    values = tf.cast(images, tf.float32)
    local_sum = tf.reduce_sum(values, axis=[0, 1, 2])                  # [C]
    local_squared_sum = tf.reduce_sum(tf.square(values), axis=[0, 1, 2])  # [C]
    local_count = tf.cast(tf.size(values) // tf.shape(values)[-1], tf.float32)[None]  # [1]
    packed = tf.concat([local_sum, local_squared_sum, local_count], axis=0)  # [2C + 1]
    packed = replica_context.all_reduce(tf.distribute.ReduceOp.SUM, packed)
    total_sum, total_squared_sum, total_count = tf.split(packed, [channels, channels, 1])
    mean = total_sum / total_count
    variance = tf.maximum(total_squared_sum / total_count - tf.square(mean), 0.0)
    self._update_moving_statistics(tf.stop_gradient(mean), tf.stop_gradient(variance))
    inverse_std = tf.math.rsqrt(variance + self.epsilon) * gamma
    return values * inverse_std + (beta - mean * inverse_std)
