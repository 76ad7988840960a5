"""Subprocess for tests/test_grad_cache.py: one step's gradients, with and without
gradient caching, on logical CPU devices (which must be set up before any TF op).

    python tests/grad_cache_check.py OUT_DIR TRAIN_MODE RUN[,RUN...]

RUN is `<replicas>x<micro_batch_size>` (0: the plain step). Every run starts from the
same weights and takes the same global batch (replica r of R gets examples r*b..r*b+b-1
of both views); the optimizer writes the summed-over-replicas gradient into each
variable instead of updating it, so after one step each trainable variable holds its
gradient. Writes OUT_DIR/<RUN>.npz: `grad_<i>` per trainable variable, `stat_<i>` per
non-trainable one (the mean over replicas of the per-replica copies: BN moving
statistics without --global_bn drift apart per replica), `metrics`.
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tf_simclr  # pylint: disable=g-import-not-at-top,unused-import  (oneDNN as run.py)
import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

NUM_DEVICES = 4
GLOBAL_BATCH = 8
IMAGE_SIZE = 16


def main() -> None:
  out_dir, train_mode, runs = sys.argv[1], sys.argv[2], sys.argv[3].split(',')
  cpu = tf.config.list_physical_devices('CPU')[0]
  tf.config.set_logical_device_configuration(
      cpu, [tf.config.LogicalDeviceConfiguration()] * NUM_DEVICES)

  import keras  # pylint: disable=g-import-not-at-top
  from tests import train_fixtures  # pylint: disable=g-import-not-at-top
  from tf_simclr import config as config_lib  # pylint: disable=g-import-not-at-top
  from tf_simclr import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  from tf_simclr import models  # pylint: disable=g-import-not-at-top
  from tf_simclr import train as train_lib  # pylint: disable=g-import-not-at-top

  class GradientRecorder(keras.optimizers.Optimizer):
    """Sets each variable to its (replica-summed) gradient: a probe, not a trainer."""

    def __init__(self):
      super().__init__(learning_rate=1.0, name='gradient_recorder')

    def update_step(self, gradient, variable, learning_rate):
      self.assign(variable, gradient)

  def config_for(micro_batch_size: int) -> config_lib.Config:
    config = train_fixtures.tiny_config('/unused', train_batch_size=GLOBAL_BATCH,
                                        train_mode=train_mode,
                                        micro_batch_size=micro_batch_size)
    # Per-replica BN: the reference for per-micro-batch statistics; LARS' weight decay
    # rule puts the supervised head's decay into the loss (its gradient is checked too).
    return config_lib.replace(config, model={'global_bn': False})

  batch = train_fixtures.global_batches(1, GLOBAL_BATCH, IMAGE_SIZE)[0]
  keras.utils.set_random_seed(0)
  initial_weights = models.build_model_for(config_for(0), train_fixtures.NUM_CLASSES
                                              ).get_weights()
  pretrain = train_mode == 'pretrain'

  for run in runs:
    num_replicas, micro_batch_size = (int(part) for part in run.split('x'))
    config = config_for(micro_batch_size)
    strategy = tf.distribute.MirroredStrategy(
        [f'/cpu:{index}' for index in range(num_replicas)])
    with strategy.scope():
      model = models.build_model_for(config, train_fixtures.NUM_CLASSES)
      model.set_weights(initial_weights)
      optimizer = GradientRecorder()
      optimizer.build(model.trainable_variables)
    metric_names = metrics_lib.train_metric_names(pretrain, True)
    step = train_lib.build_train_step(config, model, optimizer, strategy, metric_names)
    local = GLOBAL_BATCH // num_replicas

    def replica_batch(context, local=local):
      rows = slice(context.replica_id_in_sync_group * local,
                   (context.replica_id_in_sync_group + 1) * local)
      view1, view2 = batch['view1'][rows], batch['view2'][rows]
      images = np.concatenate([view1, view2]) if pretrain else view1
      return {'image': tf.constant(images), 'label': tf.constant(batch['label'][rows])}

    distributed = strategy.experimental_distribute_values_from_function(replica_batch)

    @tf.function
    def one_step(distributed=distributed, step=step, strategy=strategy):
      per_replica = strategy.run(step, args=(distributed,))
      return strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None)

    metrics = one_step().numpy()
    arrays = {'metrics': metrics}
    for index, variable in enumerate(model.trainable_variables):
      arrays[f'grad_{index}'] = np.asarray(variable.numpy(), np.float64)
    for index, variable in enumerate(model.non_trainable_variables):
      copies = strategy.experimental_local_results(variable.value)
      arrays[f'stat_{index}'] = np.mean([np.asarray(copy) for copy in copies], axis=0)
    np.savez(os.path.join(out_dir, f'{run}.npz'), **arrays)
    print(f'{run} done', flush=True)


if __name__ == '__main__':
  main()
