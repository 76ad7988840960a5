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

NUM_STEPS = 3
GLOBAL_BATCH = 8
IMAGE_SIZE = 16


def checkpoint_weights(checkpoint_path: str) -> dict[str, np.ndarray]:
  """Model and optimizer tensors of a checkpoint (input state and counters left out)."""
  reader = tf.train.load_checkpoint(checkpoint_path)
  return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()
          if not key.startswith(('input_iterators', 'save_counter', '_CHECKPOINTABLE'))}


def run(strategy: tf.distribute.Strategy, model_dir: str) -> dict[str, np.ndarray]:
  from tests import train_fixtures  # pylint: disable=g-import-not-at-top
  from tf_simclr import train as train_lib  # pylint: disable=g-import-not-at-top
  config = train_fixtures.tiny_config(model_dir, train_steps=NUM_STEPS,
                                      checkpoint_steps=NUM_STEPS,
                                      train_batch_size=GLOBAL_BATCH)
  batches = train_fixtures.global_batches(NUM_STEPS, GLOBAL_BATCH, IMAGE_SIZE)
  result = train_lib.train(config, strategy, input_fn=train_fixtures.make_input_fn(batches),
                           data_sizes=train_fixtures.Sizes(GLOBAL_BATCH * NUM_STEPS, 8),
                           verbose=False)
  assert result['global_step'] == NUM_STEPS, result
  return checkpoint_weights(os.path.join(model_dir, f'ckpt-{NUM_STEPS}'))


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
