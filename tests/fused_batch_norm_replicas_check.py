"""Subprocess check: synchronized FusedBatchNormalization over 2 logical CPU replicas
equals keras.layers.BatchNormalization on the full batch on one device.

Run as `python tests/fused_batch_norm_replicas_check.py`; prints one JSON line with the
maximum absolute differences and the number of all-reduces in the traced step.
"""

import json
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # pylint: disable=g-import-not-at-top

NUM_REPLICAS = 2
physical = tf.config.list_physical_devices('CPU')[0]
tf.config.set_logical_device_configuration(
    physical, [tf.config.LogicalDeviceConfiguration()] * NUM_REPLICAS)

import keras  # pylint: disable=g-import-not-at-top
import numpy as np

from tf_simclr.models.fast_batch_norm import FusedBatchNormalization


def main() -> None:
  rank = int(sys.argv[1]) if len(sys.argv) > 1 else 4
  shape = [8, 3, 3, 6] if rank == 4 else [8, 6]
  rng = np.random.default_rng(0)
  images = (rng.normal(size=shape) * 2.0 + 0.5).astype(np.float32)
  upstream = rng.normal(size=shape).astype(np.float32)
  gamma = rng.uniform(0.5, 1.5, size=shape[-1]).astype(np.float32)
  beta = rng.normal(size=shape[-1]).astype(np.float32)

  def init(layer: keras.layers.BatchNormalization) -> None:
    layer.build(shape)
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)

  # Reference: Keras BN, one device, full batch.
  reference = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)
  init(reference)
  x = tf.constant(images)
  with tf.GradientTape() as tape:
    tape.watch(x)
    y = reference(x, training=True)
  ref_grads = tape.gradient(y, [x, reference.gamma, reference.beta],
                            output_gradients=tf.constant(upstream))

  strategy = tf.distribute.MirroredStrategy(
      [f'/cpu:{index}' for index in range(NUM_REPLICAS)])
  with strategy.scope():
    layer = FusedBatchNormalization(momentum=0.9, epsilon=1e-5, synchronized=True)
    init(layer)
  local = shape[0] // NUM_REPLICAS

  def replica_values(array):
    return strategy.experimental_distribute_values_from_function(
        lambda context: tf.constant(array[context.replica_id_in_sync_group * local:
                                          (context.replica_id_in_sync_group + 1) * local]))

  @tf.function
  def step(x_local, dy_local):
    def fn(x_local, dy_local):
      with tf.GradientTape() as tape:
        tape.watch(x_local)
        y_local = layer(x_local, training=True)
      grads = tape.gradient(y_local, [x_local, layer.gamma, layer.beta],
                            output_gradients=dy_local)
      context = tf.distribute.get_replica_context()
      # Variable gradients are per-replica partial sums, as an optimizer sums them.
      grads[1:] = [context.all_reduce(tf.distribute.ReduceOp.SUM, g) for g in grads[1:]]
      return y_local, grads
    return strategy.run(fn, args=(x_local, dy_local))

  x_dist, dy_dist = replica_values(images), replica_values(upstream)
  y_dist, grads_dist = step(x_dist, dy_dist)
  y_out = np.concatenate([t.numpy() for t in strategy.experimental_local_results(y_dist)])
  dx_out = np.concatenate(
      [t.numpy() for t in strategy.experimental_local_results(grads_dist[0])])
  dgamma = strategy.experimental_local_results(grads_dist[1])[0].numpy()
  dbeta = strategy.experimental_local_results(grads_dist[2])[0].numpy()
  print(json.dumps({
      'output': float(np.max(np.abs(y_out - y.numpy()))),
      'grad_input': float(np.max(np.abs(dx_out - ref_grads[0].numpy()))),
      'grad_gamma': float(np.max(np.abs(dgamma - ref_grads[1].numpy()))),
      'grad_beta': float(np.max(np.abs(dbeta - ref_grads[2].numpy()))),
      'moving_mean': float(np.max(np.abs(layer.moving_mean.numpy() -
                                         reference.moving_mean.numpy()))),
      'moving_variance': float(np.max(np.abs(layer.moving_variance.numpy() -
                                             reference.moving_variance.numpy()))),
      'replicas': strategy.num_replicas_in_sync,
  }))


if __name__ == '__main__':
  main()
