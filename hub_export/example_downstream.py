"""Downstream use of a tf_simclr export: fine-tune a classifier, then predict.

    python hub_export/example_downstream.py --export_dir=/exports/cifar_r18

Loads the export with `hub.KerasLayer(export_dir, trainable=True)` inside a tf_keras
classifier, fine-tunes it on a few labelled images (two synthetic classes: reddish and
bluish noise images, so the example needs no data set) and predicts held-out images.
"""

import argparse
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow_hub as hub
import tf_keras


def labelled_images(num_per_class: int, image_size: int,
                    seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Class 0: reddish noise, class 1: bluish noise; float32 [N, H, W, 3] in [0, 1]."""
  rng = np.random.default_rng(seed)
  images = rng.uniform(0.0, 0.6, (2 * num_per_class, image_size, image_size, 3))
  labels = np.repeat([0, 1], num_per_class)
  images[labels == 0, :, :, 0] += 0.4   # more red
  images[labels == 1, :, :, 2] += 0.4   # more blue
  order = rng.permutation(len(labels))
  return images[order].astype('float32'), labels[order]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--export_dir', required=True, help='A hub_export SavedModel.')
  parser.add_argument('--epochs', type=int, default=5)
  args = parser.parse_args()

  # The feature vector [batch, features]; trainable=True fine-tunes the encoder
  # (its BN layers use batch statistics and update their moving averages in fit()).
  encoder = hub.KerasLayer(args.export_dir, trainable=True)
  image_size = int(encoder.resolved_object.image_size) or 32  # the training size
  classifier = tf_keras.Sequential([
      tf_keras.Input((image_size, image_size, 3)),  # float32 RGB in [0, 1]
      encoder,
      tf_keras.layers.Dense(2),
  ])
  classifier.compile(optimizer=tf_keras.optimizers.SGD(0.05, momentum=0.9),
                     loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                     metrics=['accuracy'])
  images, labels = labelled_images(8, image_size, seed=0)
  classifier.fit(images, labels, batch_size=8, epochs=args.epochs, verbose=2)

  test_images, test_labels = labelled_images(4, image_size, seed=1)
  predicted = classifier.predict(test_images, verbose=0).argmax(axis=-1)
  print('predicted classes:', predicted.tolist())
  print('true classes:     ', test_labels.tolist())
  print(f'accuracy: {np.mean(predicted == test_labels):.2f}')


if __name__ == '__main__':
  main()
