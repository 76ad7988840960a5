"""Subprocess helper of test_strategy.py: devices must be set before any TF op.

Usage: python tests/strategy_worker.py SCENARIO; prints one JSON line of results.
Scenarios:
  cpu4     create_strategy(num_cpu_devices=4), an all-reduce, the same config again,
           then num_cpu_devices=2 (refused: TF is initialised).
  default  use_tpu without a TPU (refused), the default strategy and an all-reduce,
           then num_cpu_devices=2 and a 2-worker TF_CONFIG after TF ran ops
           (both refused).
  worker   the strategy for the TF_CONFIG in the environment and an all-reduce.
"""

import json
import os
import pathlib
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from tf_simclr import config as config_lib  # pylint: disable=g-import-not-at-top
from tf_simclr import strategy as strategy_lib  # pylint: disable=g-import-not-at-top


def error_line(infra_config: config_lib.InfraConfig) -> str:
  try:
    strategy_lib.create_strategy(infra_config)
  except ValueError as error:
    return str(error)
  return 'no error'


def describe(strategy) -> dict:
  """Class, replicas and the sum over replicas of (global replica id + 1)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  @tf.function
  def replica_values():
    context = tf.distribute.get_replica_context()
    return tf.cast(context.replica_id_in_sync_group + 1, tf.float32)

  per_replica = strategy.run(replica_values)
  total = strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
  return {
      'class': type(strategy).__name__,
      'num_replicas': strategy.num_replicas_in_sync,
      'devices': list(strategy.extended.worker_devices),
      'replica_sum': float(total.numpy()),
      'num_workers': strategy_lib.num_workers(strategy),
      'is_chief': strategy_lib.is_chief(strategy),
      'save_dir': strategy_lib.chief_or_temp_dir(strategy, '/tmp/model_dir'),
  }


def main(scenario: str) -> dict:
  if scenario == 'cpu4':
    result = describe(strategy_lib.create_strategy(config_lib.InfraConfig(num_cpu_devices=4)))
    again = strategy_lib.create_strategy(config_lib.InfraConfig(num_cpu_devices=4))
    result['again_num_replicas'] = again.num_replicas_in_sync
    result['resplit_error'] = error_line(config_lib.InfraConfig(num_cpu_devices=2))
    return result
  if scenario == 'default':
    tpu_error = error_line(config_lib.InfraConfig(use_tpu=True))
    named_tpu_error = error_line(config_lib.InfraConfig(
        use_tpu=True, tpu_name='no-such-tpu.invalid', tpu_zone='us-central1-a',
        gcp_project='no-such-project'))
    result = describe(strategy_lib.create_strategy(config_lib.InfraConfig()))
    result['tpu_error'] = tpu_error
    result['named_tpu_error'] = named_tpu_error
    result['late_split_error'] = error_line(config_lib.InfraConfig(num_cpu_devices=2))
    os.environ['TF_CONFIG'] = json.dumps({
        'cluster': {'worker': ['127.0.0.1:1', '127.0.0.1:2']},
        'task': {'type': 'worker', 'index': 0}})
    result['late_worker_error'] = error_line(config_lib.InfraConfig())
    return result
  if scenario == 'worker':
    return describe(strategy_lib.create_strategy(config_lib.InfraConfig()))
  raise ValueError(f'unknown scenario {scenario!r}')


if __name__ == '__main__':
  print(json.dumps(main(sys.argv[1])))
