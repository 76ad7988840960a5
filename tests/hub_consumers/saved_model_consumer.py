"""Consumer 3: plain `tf.saved_model.load` (run as a separate process)."""

import argparse
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf


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
         'regularization_losses': np.array([float(f()) for f in loaded.regularization_losses]),
         'num_variables': len(loaded.variables),
         'num_trainable_variables': len(loaded.trainable_variables),
         'other_size/feature_inference': loaded(data['other_size_images'])}
  for prefix, outputs in (('dict_inference', loaded(images, training=False, as_dict=True)),
                          ('serve', loaded.serve(images)),
                          ('signature', loaded.signatures['serving_default'](images=images))):
    for name, value in outputs.items():
      out[f'{prefix}/{name}'] = value
  # Gradient of a fixed projection of the training-mode features.
  with tf.GradientTape() as tape:
    features = loaded(images, training=True)
    loss = tf.reduce_sum(features * projection)
  gradients = tape.gradient(loss, loaded.trainable_variables)
  for index, gradient in enumerate(gradients):
    out[f'gradient/{index}'] = gradient
  for name, value in loaded.train_call(images).items():
    out[f'train_call/{name}'] = value
  np.savez(args.output, **{k: np.asarray(v) for k, v in out.items()})


if __name__ == '__main__':
  main()
