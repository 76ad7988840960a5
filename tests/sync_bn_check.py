"""Synchronized-BN check, run as a subprocess by tests/test_resnet.py.

Splits the CPU into 2 logical devices (before any TF op), runs one training-mode forward
pass of a small ResNet-18 under MirroredStrategy on a batch split across the replicas,
and compares every BN moving mean / variance of each replica with a single-device run
on the full batch. Usage: `python tests/sync_bn_check.py [true|false ...]` (global_bn
values; default true). Prints one JSON line
{global_bn: {max_abs_diff, replica_spread, num_stats}}.
"""

import json
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices('CPU')[0],
    [tf.config.LogicalDeviceConfiguration()] * 2)

from tf_simclr.models import build_resnet  # pylint: disable=g-import-not-at-top

BATCH, SIZE = 8, 8


def bn_stats(model):
  return [v for v in model.variables if 'moving_' in v.path]


def main():
  rng = np.random.default_rng(0)
  images = rng.normal(size=(BATCH, SIZE, SIZE, 3)).astype(np.float32)
  images[BATCH // 2:] = 2.0 * images[BATCH // 2:] + 1.0  # replica statistics differ
  results = {}
  modes = [arg == 'true' for arg in sys.argv[1:]] or [True]
  for global_bn in modes:
    strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
    with strategy.scope():
      model = build_resnet(18, cifar_stem=True, global_bn=global_bn, name='mirrored')
    reference = build_resnet(18, cifar_stem=True, global_bn=global_bn, name='single')
    for target, source in zip(reference.variables, model.variables):
      target.assign(source.numpy())
    reference(images, training=True)

    def per_replica(context):
      half = BATCH // strategy.num_replicas_in_sync
      start = context.replica_id_in_sync_group * half
      return tf.constant(images[start:start + half])

    distributed = strategy.experimental_distribute_values_from_function(per_replica)

    @tf.function
    def step(batch):
      model(batch, training=True)

    strategy.run(step, args=(distributed,))
    max_diff, replica_spread = 0.0, 0.0
    for variable, expected in zip(bn_stats(model), bn_stats(reference)):
      # variable.value is the tf.distribute MirroredVariable holding one copy per replica.
      values = [np.asarray(v) for v in strategy.experimental_local_results(variable.value)]
      for value in values:
        max_diff = max(max_diff, float(np.max(np.abs(value - expected.numpy()))))
      replica_spread = max(replica_spread, float(np.max(np.abs(values[0] - values[1]))))
    results[str(global_bn)] = {'max_abs_diff': max_diff, 'replica_spread': replica_spread,
                               'num_stats': len(bn_stats(model))}
  print(json.dumps(results))


if __name__ == '__main__':
  main()
