"""Keras 3 downstream use of a tf_simclr export on real images (Fashion-MNIST).

    python hub_export/example_keras3.py --export_dir=/tmp/tf_simclr_quickstart/saved_model/60

1. Frozen encoder: `keras.layers.TFSMLayer(export_dir, call_endpoint='serve')` gives the
   `final_avg_pool` features; a linear classifier (one Dense layer) is trained on them.
2. Fine-tuning: the same layer with `call_training_endpoint='train_call'` and
   `trainable=True` under the linear classifier, trained end to end (the encoder's BN
   layers use batch statistics in training and update their moving averages).
3. Baseline: the same linear classifier on the raw pixels.

Prints the three test accuracies. The data are the idx files of Debian's
dataset-fashion-mnist package (`bash scripts/quickstart_data.sh` installs them in
/usr/share/datasets/fashion-mnist): the first --train_examples images of the train file
and the first --test_examples of the test file. Images go in as the export expects:
float32 RGB in [0, 1] (the grey value in all three channels), at the 28x28 training size.
"""

from __future__ import annotations

import argparse
import gzip
import os
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import keras  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'
NUM_CLASSES = 10


def read_idx(path: str) -> np.ndarray:
  """An idx file (optionally .gz) as a uint8 array."""
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'rb') as idx_file:
    data = idx_file.read()
  num_dims = data[3]
  shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(num_dims)]
  return np.frombuffer(data, np.uint8, offset=4 + 4 * num_dims).reshape(shape)


def fashion_mnist(data_dir: str, split: str, count: int) -> tuple[np.ndarray, np.ndarray]:
  """(images float32 [count, 28, 28, 3] in [0, 1], labels int [count]) of a split."""
  prefix = 'train' if split == 'train' else 't10k'

  def path(kind: str) -> str:
    name = os.path.join(data_dir, f'{prefix}-{kind}-idx{3 if kind == "images" else 1}-ubyte')
    return name + '.gz' if os.path.exists(name + '.gz') else name

  images = read_idx(path('images'))[:count].astype(np.float32) / 255.0
  labels = read_idx(path('labels'))[:count].astype(np.int64)
  return np.repeat(images[..., np.newaxis], 3, axis=-1), labels


def linear_classifier(input_shape: tuple[int, ...]) -> keras.Model:
  inputs = keras.Input(input_shape)
  outputs = keras.layers.Dense(NUM_CLASSES)(keras.layers.Flatten()(inputs))
  return keras.Model(inputs, outputs)


def fit_linear(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
               test_y: np.ndarray, epochs: int, seed: int) -> float:
  """Test accuracy of a linear classifier (Adam, cross-entropy) on fixed inputs."""
  keras.utils.set_random_seed(seed)
  model = linear_classifier(train_x.shape[1:])
  model.compile(optimizer=keras.optimizers.Adam(1e-3),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=['accuracy'])
  model.fit(train_x, train_y, batch_size=64, epochs=epochs, verbose=0)
  return float(model.evaluate(test_x, test_y, batch_size=256, verbose=0)[1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--export_dir', required=True, help='A hub_export SavedModel.')
  parser.add_argument('--data_dir', default=FASHION_MNIST_DIR)
  parser.add_argument('--train_examples', type=int, default=2000)
  parser.add_argument('--test_examples', type=int, default=2000)
  parser.add_argument('--linear_epochs', type=int, default=50)
  parser.add_argument('--finetune_examples', type=int, default=1000,
                      help='Fine-tune on the first N training images (0: skip).')
  parser.add_argument('--finetune_epochs', type=int, default=1)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()

  train_x, train_y = fashion_mnist(args.data_dir, 'train', args.train_examples)
  test_x, test_y = fashion_mnist(args.data_dir, 'test', args.test_examples)

  # 1. Frozen encoder: features once, then a linear classifier on them.
  start = time.perf_counter()
  frozen = keras.layers.TFSMLayer(args.export_dir, call_endpoint='serve', trainable=False)

  def features(images: np.ndarray) -> np.ndarray:
    return np.concatenate([np.asarray(frozen(images[i:i + 250])['final_avg_pool'])
                           for i in range(0, len(images), 250)])

  train_features, test_features = features(train_x), features(test_x)
  frozen_accuracy = fit_linear(train_features, train_y, test_features, test_y,
                               args.linear_epochs, args.seed)
  print(f'frozen encoder + linear classifier: test accuracy {frozen_accuracy:.4f} '
        f'({len(train_y)} train / {len(test_y)} test images, '
        f'{time.perf_counter() - start:.0f} s)', flush=True)

  # 3. Baseline: the same classifier on raw pixels.
  pixel_accuracy = fit_linear(train_x, train_y, test_x, test_y, args.linear_epochs, args.seed)
  print(f'raw pixels + linear classifier:     test accuracy {pixel_accuracy:.4f}', flush=True)

  # 2. Fine-tuning through the training endpoint.
  if args.finetune_examples > 0:
    start = time.perf_counter()
    keras.utils.set_random_seed(args.seed)
    encoder = keras.layers.TFSMLayer(args.export_dir, call_endpoint='serve',
                                     call_training_endpoint='train_call', trainable=True)
    inputs = keras.Input(train_x.shape[1:])  # float32 RGB in [0, 1]
    head = keras.layers.Dense(NUM_CLASSES)
    outputs = head(encoder(inputs)['final_avg_pool'])
    model = keras.Model(inputs, outputs)
    # Start the head from the linear classifier trained on frozen features.
    warm = linear_classifier(train_features.shape[1:])
    warm.compile(optimizer=keras.optimizers.Adam(1e-3),
                 loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    warm.fit(train_features, train_y, batch_size=64, epochs=args.linear_epochs, verbose=0)
    head.set_weights(warm.layers[-1].get_weights())
    # Plain SGD: optimizers with slots (momentum, Adam) fail on TFSMLayer variables in
    # Keras 3.15 ("'..._kernel:0_momentum' is not a valid scope name").
    model.compile(optimizer=keras.optimizers.SGD(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=['accuracy'])
    model.fit(train_x[:args.finetune_examples], train_y[:args.finetune_examples],
              batch_size=32, epochs=args.finetune_epochs, verbose=2)
    finetuned_accuracy = float(model.evaluate(test_x, test_y, batch_size=250, verbose=0)[1])
    print(f'fine-tuned encoder + linear classifier: test accuracy {finetuned_accuracy:.4f} '
          f'({args.finetune_examples} images x {args.finetune_epochs} epochs, '
          f'{time.perf_counter() - start:.0f} s)', flush=True)


if __name__ == '__main__':
  main()
