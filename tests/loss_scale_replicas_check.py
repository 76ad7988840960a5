"""Subprocess for tests/test_float16.py: one replica's overflow skips the step on all.

MirroredStrategy over 2 logical CPUs, a LossScaleOptimizer (SGD inside) on one
variable. Replica 1's gradient is Inf in the first step, both are finite in the
second. Prints one JSON line: per step the replicas' skipped flags, the variable,
the loss scale and `iterations`.
"""

import json
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # pylint: disable=g-import-not-at-top

cpu = tf.config.list_physical_devices('CPU')[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # pylint: disable=g-import-not-at-top

from tf_simclr import loss_scale  # pylint: disable=g-import-not-at-top


def main() -> None:
  strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
  with strategy.scope():
    variable = tf.Variable([1.0, 2.0])
    optimizer = loss_scale.LossScaleOptimizer(keras.optimizers.SGD(0.5), initial_scale=4.0)
    optimizer.build([variable])

  def replica_step(overflow_on_replica_1):
    context = tf.distribute.get_replica_context()
    replica = tf.cast(context.replica_id_in_sync_group, tf.float32)
    # d(scaled loss)/d variable = scale * (replica + 1); Inf on replica 1 when asked.
    gradient = optimizer.dynamic_scale * (replica + 1.0) * tf.ones([2])
    gradient = tf.where(tf.logical_and(overflow_on_replica_1, replica > 0),
                        float('inf'), gradient)
    gradients, skipped = loss_scale.agree_on_overflow([gradient], context)
    optimizer.apply_gradients(zip(gradients, [variable]))
    return skipped

  @tf.function
  def step(overflow_on_replica_1):
    skipped = strategy.run(replica_step, args=(overflow_on_replica_1,))
    return strategy.experimental_local_results(skipped)

  records = []
  for overflow in (True, False):
    skipped = step(tf.constant(overflow))
    records.append({'skipped': [float(value) for value in skipped],
                    'variable': variable.numpy().tolist(),
                    'scale': float(optimizer.dynamic_scale.numpy()),
                    'iterations': int(optimizer.iterations.numpy())})
  print(json.dumps(records), flush=True)


if __name__ == '__main__':
  main()
