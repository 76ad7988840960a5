"""Consumer 3: plain `tf.saved_model.load` (run as a separate process)."""

import argparse
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf

from tests import hub_consumers


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--export_dir', required=True)
  parser.add_argument('--inputs', required=True)
  parser.add_argument('--output', required=True)
  args = parser.parse_args()
  data = np.load(args.inputs)
  images, projection = data['images'], data['projection']
  loaded = tf.saved_model.load(args.export_dir)
  out = {'feature_inference': loaded(images),
         'image_size': loaded.image_size,
         'input_contract': loaded.input_contract.numpy().decode(),
         'regularization_losses': np.array([float(f()) for f in loaded.regularization_losses]),
         'num_variables': len(loaded.variables),
         'num_trainable_variables': len(loaded.trainable_variables),
         'other_size/feature_inference': loaded(data['other_size_images'])}
  for prefix, outputs in (('dict_inference', loaded(images, training=False, as_dict=True)),
                          ('serve', loaded.serve(images)),
                          ('signature', loaded.signatures['serving_default'](images=images))):
    for name, value in outputs.items():
      out[f'{prefix}/{name}'] = value
  # uint8 pixels are divided by 255 in the export (before a training call moves BN).
  uint8_images = data['uint8_images']
  out['uint8/feature'] = loaded(uint8_images)
  out['uint8/serve'] = loaded.serve(uint8_images)['final_avg_pool']
  # Gradient of a fixed projection of the training-mode features.
  with tf.GradientTape() as tape:
    features = loaded(images, training=True)
    loss = tf.reduce_sum(features * projection)
  gradients = tape.gradient(loss, loaded.trainable_variables)
  for index, gradient in enumerate(gradients):
    out[f'gradient/{index}'] = gradient
  for name, value in loaded.train_call(images).items():
    out[f'train_call/{name}'] = value
  # Wrong inputs get the export's message from every callable.
  signature = loaded.signatures['serving_default']
  out['uint8/signature'] = hub_consumers.error_of(
      lambda x: signature(images=tf.constant(x)), uint8_images)
  callables = {'feature': loaded, 'dict': lambda x: loaded(x, as_dict=True),
               'serve': loaded.serve, 'train_call': loaded.train_call,
               'signature': lambda x: signature(images=tf.constant(x))}
  for case, bad in hub_consumers.bad_inputs(images).items():
    for name, function in callables.items():
      out[f'bad/{case}/{name}'] = hub_consumers.error_of(function, bad)
  out['no_batch_axis/feature'] = hub_consumers.error_of(loaded, images[0])
  out['float64/feature'] = hub_consumers.error_of(loaded, images.astype(np.float64))
  np.savez(args.output, **{k: np.asarray(v) for k, v in out.items()})


if __name__ == '__main__':
  main()
