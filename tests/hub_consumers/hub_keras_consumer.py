"""Consumer 1: TF Hub `hub.KerasLayer` in tf_keras (run as a separate process).

Reads images/labels from --inputs (.npz), writes what the export returns to
--output (.npz); the test compares it with the live model.
"""

import argparse
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf
import tensorflow_hub as hub
import tf_keras

from tests import hub_consumers


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--export_dir', required=True)
  parser.add_argument('--inputs', required=True)
  parser.add_argument('--output', required=True)
  parser.add_argument('--finetune_steps', type=int, default=3)
  args = parser.parse_args()
  data = np.load(args.inputs)
  images, labels = data['images'], data['labels']
  out = {}

  # One loaded object shared by several layers: inference first, then one training call.
  loaded = hub.load(args.export_dir)
  out['feature_inference'] = hub.KerasLayer(loaded, trainable=True)(images, training=False)
  # uint8 pixels are divided by 255 in the export (before any training call moves BN).
  if 'uint8_images' in data:
    out['uint8/feature'] = hub.KerasLayer(loaded)(data['uint8_images'])
  as_dict = hub.KerasLayer(loaded, arguments={'as_dict': True})(images)
  for name, value in as_dict.items():
    out[f'dict_inference/{name}'] = value
  out['output_key/block_group4'] = hub.KerasLayer(
      loaded, arguments={'as_dict': True}, output_key='block_group4')(images)
  signature = hub.KerasLayer(loaded, signature='serving_default',
                             signature_outputs_as_dict=True)(images)
  for name, value in signature.items():
    out[f'signature/{name}'] = value
  training_dict = hub.KerasLayer(loaded, trainable=True,
                                 arguments={'as_dict': True})(images, training=True)
  for name, value in training_dict.items():
    out[f'dict_training/{name}'] = value
  for index, variable in enumerate(loaded.variables):  # BN moving averages updated once.
    out[f'variables_after_training_call/{index}'] = variable.numpy()
  out['feature_training'] = hub.KerasLayer(loaded, trainable=True)(images, training=True)
  # Wrong inputs get the export's message.
  for case, bad in hub_consumers.bad_inputs(images).items():
    out[f'bad/{case}/feature'] = hub_consumers.error_of(hub.KerasLayer(loaded), bad)
    out[f'bad/{case}/signature'] = hub_consumers.error_of(
        hub.KerasLayer(loaded, signature='serving_default', signature_outputs_as_dict=True), bad)

  # Fine-tuning from the path, with no extra arguments.
  encoder = hub.KerasLayer(args.export_dir, trainable=True)
  num_classes = int(labels.max()) + 1
  classifier = tf_keras.Sequential([
      tf_keras.Input(images.shape[1:]), encoder, tf_keras.layers.Dense(num_classes)])
  classifier.compile(tf_keras.optimizers.SGD(0.1),
                     tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  trainable_ids = {id(weight) for weight in encoder.trainable_weights}
  before = [weight.numpy().copy() for weight in encoder.weights]
  out['regularization_losses'] = np.array([float(loss) for loss in encoder.losses])
  classifier.fit(images, labels, epochs=args.finetune_steps, batch_size=len(images), verbose=0)
  changed = [not np.array_equal(a, w.numpy()) for a, w in zip(before, encoder.weights)]
  is_trainable = [id(w) in trainable_ids for w in encoder.weights]
  out['finetune/trainable_changed'] = np.array(
      [c for c, t in zip(changed, is_trainable) if t])
  out['finetune/non_trainable_changed'] = np.array(
      [c for c, t in zip(changed, is_trainable) if not t])
  out['finetune/non_trainable_names'] = np.array(
      [w.name for w, t in zip(encoder.weights, is_trainable) if not t])
  out['bad/pixels_0_255/fit'] = hub_consumers.error_of(
      lambda bad: classifier.fit(bad, labels, batch_size=len(images), verbose=0),
      hub_consumers.bad_inputs(images)['pixels_0_255'])
  np.savez(args.output, **{k: np.asarray(v) for k, v in out.items()})


if __name__ == '__main__':
  main()
