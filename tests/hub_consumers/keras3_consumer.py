"""Consumer 2: Keras 3 `keras.layers.TFSMLayer` (run as a separate process)."""

import argparse
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import keras  # pylint: disable=g-import-not-at-top
import numpy as np

from tests import hub_consumers


class Classifier(keras.Model):
  """The export's feature vector under a new Dense head."""

  def __init__(self, export_dir: str, num_classes: int):
    super().__init__()
    self.encoder = keras.layers.TFSMLayer(export_dir, call_endpoint='serve',
                                          call_training_endpoint='train_call')
    self.head = keras.layers.Dense(num_classes)

  def call(self, images, training=False):
    return self.head(self.encoder(images, training=training)['final_avg_pool'])


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--export_dir', required=True)
  parser.add_argument('--inputs', required=True)
  parser.add_argument('--output', required=True)
  args = parser.parse_args()
  data = np.load(args.inputs)
  images, labels = data['images'], data['labels']
  out = {}
  layer = keras.layers.TFSMLayer(args.export_dir, call_endpoint='serve',
                                 call_training_endpoint='train_call')
  for name, value in layer(images).items():
    out[f'dict_inference/{name}'] = value
  # uint8 pixels are divided by 255 in the export (before a training call moves BN).
  out['uint8/feature'] = layer(data['uint8_images'])['final_avg_pool']
  for name, value in layer(images, training=True).items():
    out[f'dict_training/{name}'] = value
  # Wrong inputs get the export's message.
  for case, bad in hub_consumers.bad_inputs(images).items():
    out[f'bad/{case}/serve'] = hub_consumers.error_of(layer, bad)

  classifier = Classifier(args.export_dir, int(labels.max()) + 1)
  classifier(images)
  encoder_weights = classifier.encoder.weights
  before = [weight.numpy().copy() for weight in encoder_weights]
  classifier.compile(keras.optimizers.SGD(0.1),
                     keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  classifier.fit(images, labels, epochs=2, batch_size=len(images), verbose=0)
  changed = [not np.array_equal(a, w.numpy()) for a, w in zip(before, encoder_weights)]
  out['finetune/trainable_changed'] = np.array(
      [c for c, w in zip(changed, encoder_weights) if w.trainable])
  out['finetune/non_trainable_changed'] = np.array(
      [c for c, w in zip(changed, encoder_weights) if not w.trainable])
  # The fine-tuned weights drive the endpoint (they are the SavedModel's variables).
  out['finetune/serve_after'] = classifier.encoder(images)['final_avg_pool']
  out['bad/pixels_0_255/fit'] = hub_consumers.error_of(
      lambda bad: classifier.fit(bad, labels, batch_size=len(images), verbose=0),
      hub_consumers.bad_inputs(images)['pixels_0_255'])
  np.savez(args.output, **{k: np.asarray(v) for k, v in out.items()})


if __name__ == '__main__':
  main()
