"""Subprocess for tests/test_jit.py: 3 training steps with and without --jit_compile.

  python tests/jit_equality_script.py mirrored OUT_DIR R   one process, R logical CPUs
      (R=1: OneDeviceStrategy; R>1: MirroredStrategy over R logical CPUs)
  python tests/jit_equality_script.py worker OUT_DIR       a MultiWorkerMirroredStrategy
      worker (TF_CONFIG set by the test)

Each run trains the tiny ResNet-18 of tests/train_fixtures.py (global BN, LARS,
NT-Xent with gathered negatives, linear eval head) for 3 steps on the same fixed
global batches, first without XLA, then with --jit_compile, under the same strategy;
the final checkpoints' variables go to OUT_DIR/<label>_{plain,xla}.npz (the chief
writes them under MultiWorkerMirroredStrategy).
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top
import tf_simclr  # pylint: disable=g-import-not-at-top,unused-import  (oneDNN as run.py)
import tensorflow as tf  # pylint: disable=g-import-not-at-top


def run(strategy: tf.distribute.Strategy, model_dir: str, jit_compile: bool
        ) -> dict[str, np.ndarray]:
  from tests import train_fixtures  # pylint: disable=g-import-not-at-top
  return train_fixtures.train_fixed_batches(strategy, model_dir, jit_compile=jit_compile)


def main() -> None:
  mode, out_dir = sys.argv[1], sys.argv[2]
  if mode == 'mirrored':
    count = int(sys.argv[3])
    if count == 1:
      strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
    else:
      cpu = tf.config.list_physical_devices('CPU')[0]
      tf.config.set_logical_device_configuration(
          cpu, [tf.config.LogicalDeviceConfiguration()] * count)
      strategy = tf.distribute.MirroredStrategy([f'/cpu:{index}' for index in range(count)])
    label, chief = f'R{count}', True
  elif mode == 'worker':
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    label, chief = 'mwms', strategy.cluster_resolver.task_id == 0
  else:
    raise SystemExit(f'unknown mode {mode}')
  for jit_compile in (False, True):
    kind = 'xla' if jit_compile else 'plain'
    weights = run(strategy, os.path.join(out_dir, f'run_{label}_{kind}'), jit_compile)
    if chief:
      np.savez(os.path.join(out_dir, f'{label}_{kind}.npz'), **weights)
    print(f'{label} {kind} done', flush=True)


if __name__ == '__main__':
  main()
