"""Subprocess for tests/test_distributed_train.py: trains a tiny model for 3 steps.

Modes:
  mirrored OUT_DIR R1,R2,...   one process, N logical CPUs; for each replica count R a
                              MirroredStrategy over the first R devices trains from the
                              same seed on the same global batches; the final
                              checkpoint's variables go to OUT_DIR/weights_R<R>.npz.
  worker OUT_DIR               a MultiWorkerMirroredStrategy worker (TF_CONFIG set by
                              the test); the chief writes OUT_DIR/weights_mwms.npz.

Logical devices and MWMS must be set up before any TF op, hence a fresh process.
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top


def run(strategy: tf.distribute.Strategy, model_dir: str) -> dict[str, np.ndarray]:
  from tests import train_fixtures  # pylint: disable=g-import-not-at-top
  return train_fixtures.train_fixed_batches(strategy, model_dir)


def main() -> None:
  mode, out_dir = sys.argv[1], sys.argv[2]
  if mode == 'mirrored':
    replica_counts = [int(count) for count in sys.argv[3].split(',')]
    cpu = tf.config.list_physical_devices('CPU')[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * max(replica_counts))
    for count in replica_counts:
      devices = [f'/cpu:{index}' for index in range(count)]
      strategy = tf.distribute.MirroredStrategy(devices)
      weights = run(strategy, os.path.join(out_dir, f'run_R{count}'))
      np.savez(os.path.join(out_dir, f'weights_R{count}.npz'), **weights)
      print(f'R{count} done', flush=True)
  elif mode == 'worker':
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    task_id = strategy.cluster_resolver.task_id
    weights = run(strategy, os.path.join(out_dir, 'run_mwms'))
    if task_id == 0:
      np.savez(os.path.join(out_dir, 'weights_mwms.npz'), **weights)
    print(f'worker {task_id} done', flush=True)
  else:
    raise SystemExit(f'unknown mode {mode}')


if __name__ == '__main__':
  main()
