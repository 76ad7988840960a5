"""Subprocess for tests/test_distill.py: distillation on 1 vs 2 replicas.

`python tests/distill_replicas_script.py OUT_DIR`: 2 logical CPUs (before any TF op);
writes a teacher checkpoint and its hub export, then trains the same student 3 steps
on fixed batches (label weight 0.5) with MirroredStrategy over 1 device (checkpoint
teacher), 2 devices (checkpoint teacher) and 2 devices (export teacher); the final
checkpoints' model and optimizer tensors go to OUT_DIR/weights_<name>.npz.
"""

import os
import pathlib
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tf_simclr  # pylint: disable=g-import-not-at-top,unused-import
import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

NUM_STEPS = 3
GLOBAL_BATCH = 8
IMAGE_SIZE = 16


def input_fn_of(batches):
  """Per-replica rows of fixed global batches: view1 unlabelled, view2 labelled."""

  def input_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
    local = GLOBAL_BATCH // context.num_replicas_in_sync
    replicas_here = context.num_replicas_in_sync // context.num_input_pipelines
    elements = {'image': [], 'label': [], 'mask': [], 'labeled_image': [], 'labeled_label': []}
    for batch in batches:
      for replica in range(replicas_here):
        rows = slice((context.input_pipeline_id * replicas_here + replica) * local,
                     (context.input_pipeline_id * replicas_here + replica + 1) * local)
        elements['image'].append(batch['view1'][rows])
        elements['label'].append(np.zeros_like(batch['label'][rows]))
        elements['mask'].append(np.ones(local, np.float32))
        elements['labeled_image'].append(batch['view2'][rows])
        elements['labeled_label'].append(batch['label'][rows])
    return tf.data.Dataset.from_tensor_slices(
        {key: np.stack(value) for key, value in elements.items()}).repeat()

  return input_fn


def main() -> None:
  out_dir = pathlib.Path(sys.argv[1])
  cpu = tf.config.list_physical_devices('CPU')[0]
  tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
  from tf_simclr import export as export_lib  # pylint: disable=g-import-not-at-top
  from tests import test_distill  # pylint: disable=g-import-not-at-top
  from tests import train_fixtures  # pylint: disable=g-import-not-at-top
  from tf_simclr import train as train_lib  # pylint: disable=g-import-not-at-top
  teacher_dir = out_dir / 'teacher'
  teacher_config = test_distill.write_teacher(teacher_dir)
  export_dir = export_lib.export_encoder(
      test_distill.restored_teacher(teacher_config, teacher_dir), str(out_dir / 'export'),
      image_size=IMAGE_SIZE)
  batches = train_fixtures.global_batches(NUM_STEPS, GLOBAL_BATCH, IMAGE_SIZE)
  for name, devices, teacher in (('R1', 1, teacher_dir), ('R2', 2, teacher_dir),
                                 ('R2_export', 2, export_dir)):
    model_dir = out_dir / f'run_{name}'
    config = test_distill.distill_config(model_dir, teacher)
    strategy = tf.distribute.MirroredStrategy([f'/cpu:{index}' for index in range(devices)])
    result = train_lib.train(config, strategy, input_fn=input_fn_of(batches),
                             data_sizes=train_fixtures.Sizes(GLOBAL_BATCH * NUM_STEPS, 8),
                             verbose=False)
    assert result['global_step'] == NUM_STEPS, result
    weights = train_fixtures.checkpoint_weights(str(model_dir / f'ckpt-{NUM_STEPS}'))
    np.savez(out_dir / f'weights_{name}.npz', **weights)
    print(name, 'done', result, flush=True)


if __name__ == '__main__':
  main()
