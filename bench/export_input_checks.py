r"""Cost of the hub export's input checks (`tf_simclr.export.hub_module.checked_images`).

    python bench/export_input_checks.py                 # ResNet-18 CIFAR stem, 32 px
    python bench/export_input_checks.py --image_size=224 --batch_sizes=8,32 --cifar_stem=false

Exports one SimCLRModel twice, with the checks and with `checked_images` replaced by a
plain cast, loads both in this process and times them alternately (median of
--repeats): the feature vector in inference and its gradient in training mode, per
batch size. It also times the export itself (after an untimed first one) with every
accepted input dtype and with float32 only (the extra traces). The last line is one
JSON object.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags as absl_flags
import numpy as np
import tf_simclr  # Before TensorFlow: turns on its oneDNN CPU kernels.
import tensorflow as tf

from tf_simclr.export import hub_module
from tf_simclr.models import SimCLRModel

absl_flags.DEFINE_list('batch_sizes', ['8', '128'], 'Batch sizes to time.')
absl_flags.DEFINE_integer('image_size', 32, 'Image side.')
absl_flags.DEFINE_integer('resnet_depth', 18, 'ResNet depth.')
absl_flags.DEFINE_bool('cifar_stem', True, 'The CIFAR stem (3x3 conv, no max pool).')
absl_flags.DEFINE_integer('repeats', 15, 'Timed calls per export, batch size and mode.')
FLAGS = absl_flags.FLAGS


def _unchecked(images: tf.Tensor) -> tf.Tensor:
  images = tf.cast(images, tf.float32)
  images.set_shape([None, None, None, 3])
  return images


def _export_seconds(model: Any, export_dir: str) -> float:
  start = time.perf_counter()
  hub_module.export_encoder(model, export_dir)
  return time.perf_counter() - start


def _timed(function: Callable[[], Any]) -> float:
  start = time.perf_counter()
  np.asarray(function())
  return time.perf_counter() - start


def main(argv: list[str]) -> None:
  del argv
  root = tempfile.mkdtemp()
  model = SimCLRModel(resnet_depth=FLAGS.resnet_depth, cifar_stem=FLAGS.cifar_stem,
                      proj_out_dim=128, num_classes=10, lineareval_while_pretraining=True)
  model(tf.zeros([1, FLAGS.image_size, FLAGS.image_size, 3]))
  results: dict[str, Any] = {'export_seconds': {}}
  hub_module.export_encoder(model, f'{root}/warm_up')  # The first export pays one-time costs.
  checked = hub_module.checked_images
  all_dtypes = hub_module.INPUT_DTYPES
  for name, check, dtypes in (('checked', checked, all_dtypes),
                              ('unchecked', _unchecked, all_dtypes),
                              ('checked_float32_only', checked, (tf.float32,))):
    hub_module.checked_images, hub_module.INPUT_DTYPES = check, dtypes
    try:
      results['export_seconds'][name] = round(_export_seconds(model, f'{root}/{name}'), 2)
    finally:
      hub_module.checked_images, hub_module.INPUT_DTYPES = checked, all_dtypes
  loaded = {name: tf.saved_model.load(f'{root}/{name}') for name in ('checked', 'unchecked')}
  rng = np.random.default_rng(0)
  for batch_size in map(int, FLAGS.batch_sizes):
    images = tf.constant(rng.uniform(
        0, 1, (batch_size, FLAGS.image_size, FLAGS.image_size, 3)).astype(np.float32))
    for mode in ('inference', 'gradient'):

      def step(module: Any, mode: str = mode, images: tf.Tensor = images) -> Any:
        if mode == 'inference':
          return module(images)
        with tf.GradientTape() as tape:
          loss = tf.reduce_sum(module(images, training=True))
        return tape.gradient(loss, module.trainable_variables)[0]

      for module in loaded.values():  # Warm-up.
        for _ in range(3):
          _timed(lambda module=module: step(module))
      times = {name: [] for name in loaded}
      for _ in range(FLAGS.repeats):  # Alternating, so that load changes hit both.
        for name, module in loaded.items():
          times[name].append(_timed(lambda module=module: step(module)))
      medians = {name: statistics.median(values) for name, values in times.items()}
      entry = {'checked_ms': round(medians['checked'] * 1e3, 2),
               'unchecked_ms': round(medians['unchecked'] * 1e3, 2),
               'ratio': round(medians['checked'] / medians['unchecked'], 4)}
      results[f'batch{batch_size}/{mode}'] = entry
      print(f'batch {batch_size} {mode}: {entry}', flush=True)
  print(json.dumps(results))


if __name__ == '__main__':
  app.run(main)
