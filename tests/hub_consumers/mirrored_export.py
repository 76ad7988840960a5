"""Trains a tiny SimCLRModel for 2 steps under MirroredStrategy (2 logical CPUs,
synchronized BN), exports it with `export_during_training` and writes the reference
outputs of the trained weights (run as a separate process by test_hub_export.py).
"""

import argparse
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import tensorflow as tf  # pylint: disable=g-import-not-at-top

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices('CPU')[0], [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # pylint: disable=g-import-not-at-top
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from tf_simclr import export as export_lib  # pylint: disable=g-import-not-at-top
from tf_simclr.losses import nt_xent_loss
from tf_simclr.models import SimCLRModel

NUM_CLASSES = 5


def tiny_model() -> SimCLRModel:
  return SimCLRModel(resnet_depth=18, cifar_stem=True, proj_out_dim=16, global_bn=True,
                     num_classes=NUM_CLASSES)


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--model_dir', required=True)
  parser.add_argument('--inputs', required=True)
  parser.add_argument('--reference', required=True)
  args = parser.parse_args()
  keras.utils.set_random_seed(0)
  strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
  with strategy.scope():
    model = tiny_model()
    optimizer = keras.optimizers.SGD(0.1)
    optimizer.build(model.trainable_variables)
  rng = np.random.default_rng(0)
  # Per replica: 2 images x 2 views stacked on the batch axis.
  train_images = rng.uniform(0, 1, (8, 32, 32, 3)).astype('float32')
  dataset = strategy.experimental_distribute_dataset(
      tf.data.Dataset.from_tensor_slices(train_images).batch(8).repeat())
  iterator = iter(dataset)

  @tf.function
  def train_step(images):
    def replica_step(images):
      with tf.GradientTape() as tape:
        outputs = model(images, training=True)
        loss, _, _ = nt_xent_loss(outputs['proj_head_output'], temperature=0.1,
                                  replica_context=tf.distribute.get_replica_context())
        loss = loss / strategy.num_replicas_in_sync
      variables = model.trainable_variables
      optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
      return loss
    return strategy.run(replica_step, args=(images,))

  for _ in range(2):
    train_step(next(iterator))
  # As a training loop would call it, inside the strategy scope.
  with strategy.scope():
    export_lib.export_during_training(model, args.model_dir, 2, keep_hub_module_max=1,
                                      image_size=32)

  # Reference: the trained weights copied into a model without a strategy.
  reference_model = tiny_model()
  for target, source in zip(reference_model.variables, model.variables):
    target.assign(np.asarray(source))
  images = rng.uniform(0, 1, (4, 32, 32, 3)).astype('float32')
  np.savez(args.inputs, images=images, labels=np.arange(4) % NUM_CLASSES)
  np.savez(args.reference,
           inference=reference_model(images, training=False)['final_avg_pool'],
           training=reference_model(images, training=True)['final_avg_pool'])


if __name__ == '__main__':
  main()
