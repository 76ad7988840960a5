"""Final evaluation of scripts/cifar10_budget.sh: random init vs pretrained encoder.

Rebuilds the run's config from MODEL_DIR/flags.json, extracts final_avg_pool features
(unaugmented) of the first --train_examples of the train split and of the whole eval
split for (a) the encoder at the run's initialisation (same seed) and (b) the latest
checkpoint, then reports weighted kNN top-1 (k=200, T=0.1) and a quick linear probe
(tf_simclr.linear_probe), and plots kNN top-1 and loss against steps.

Usage: .venv/bin/python scripts/cifar10_budget_eval.py --model_dir=DIR \
           [--data_dir=../shared/data/cifar10] [--train_examples=10000] [--plot=PNG]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf

import flags as flags_lib
from tf_simclr import checkpoints
from tf_simclr import config as config_lib
from tf_simclr import data as data_lib
from tf_simclr import knn
from tf_simclr import linear_probe
from tf_simclr import run_dir


def read_scalars(model_dir: str) -> dict[str, list[tuple[int, float, float]]]:
  """{tag: [(step, value, wall_time)]} from the run's TensorBoard event files."""
  scalars: dict[str, list[tuple[int, float, float]]] = {}
  for path in sorted(glob.glob(os.path.join(model_dir, 'events.out.tfevents.*'))):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.HasField('tensor') and not value.tensor.string_val:
          number = float(tf.make_ndarray(value.tensor))
        elif value.HasField('simple_value'):
          number = value.simple_value
        else:
          continue
        scalars.setdefault(value.tag, []).append((event.step, number, event.wall_time))
  return scalars


def evaluate_encoder(feature_fn, strategy, bank_input_fn, query_input_fn, config,
                     train_examples: int, eval_examples: int, num_classes: int
                     ) -> dict[str, float]:
  """kNN and linear-probe top-1 of one feature function."""
  start = time.perf_counter()
  batch = config.train.eval_batch_size
  bank, bank_labels = knn.extract_features(feature_fn, strategy, bank_input_fn,
                                           max_examples=train_examples,
                                           global_batch_size=batch)
  query, query_labels = knn.extract_features(feature_fn, strategy, query_input_fn,
                                             max_examples=eval_examples,
                                             global_batch_size=batch)
  extract_secs = time.perf_counter() - start
  knn_result = knn.knn_accuracy(query, query_labels, bank, bank_labels, num_classes,
                                k=config.knn.knn_k, temperature=config.knn.knn_temperature)
  probe = linear_probe.linear_probe_accuracy(bank, bank_labels, query, query_labels,
                                             num_classes)
  return {'knn_top_1_accuracy': knn_result['top_1_accuracy'],
          'knn_top_5_accuracy': knn_result['top_5_accuracy'],
          'linear_probe_top_1_accuracy': probe['test_top_1_accuracy'],
          'linear_probe_train_top_1_accuracy': probe['train_top_1_accuracy'],
          'bank_size': int(bank.shape[0]), 'num_queries': int(query.shape[0]),
          'feature_seconds': extract_secs,
          'seconds': time.perf_counter() - start}


def plot(history: list[dict], scalars: dict, path: str, title: str) -> None:
  """kNN top-1 (left axis) and training loss (right axis) against steps."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  figure, knn_axis = plt.subplots(figsize=(6.4, 3.8), dpi=100)
  steps = [entry['global_step'] for entry in history]
  accuracy = [100 * entry['knn/top_1_accuracy'] for entry in history]
  knn_axis.plot(steps, accuracy, 'o-', color='tab:blue', label='kNN top-1 (monitor)')
  knn_axis.set_xlabel('training step')
  knn_axis.set_ylabel('kNN top-1 on test subset (%)', color='tab:blue')
  loss_axis = knn_axis.twinx()
  loss = scalars.get('train/contrast_loss') or scalars.get('train/total_loss') or []
  loss_axis.plot([s for s, _, _ in loss], [v for _, v, _ in loss], '-', color='tab:red',
                 label='NT-Xent loss')
  loss_axis.set_ylabel('NT-Xent loss', color='tab:red')
  knn_axis.set_title(title, fontsize=9)
  figure.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  figure.savefig(path)
  plt.close(figure)


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model_dir', required=True)
  parser.add_argument('--data_dir', default=None,
                      help='overrides the run\'s --data_dir (e.g. another mount)')
  parser.add_argument('--train_examples', type=int, default=10000,
                      help='kNN bank / probe training set: the first N of the train split')
  parser.add_argument('--eval_examples', type=int, default=0,
                      help='queries / probe test set: the first N of the eval split; 0: all')
  parser.add_argument('--plot', default='docs/cifar10_budget.png')
  args = parser.parse_args()

  config = flags_lib.config_from_flags_json(run_dir.flags_json_path(args.model_dir))
  if args.data_dir:
    config = config_lib.replace(config, data={'data_dir': args.data_dir})
  info = data_lib.get_dataset_info(config.data)
  strategy = tf.distribute.get_strategy()
  checkpoint_path = checkpoints.resolve_checkpoint(args.model_dir, '--model_dir')
  step = checkpoints.checkpoint_step(checkpoint_path)
  bank_fn = data_lib.eval_input_fn(config, split=config.data.train_split)
  query_fn = data_lib.eval_input_fn(config)

  results = {}
  for name, path in (('random_init', None), ('pretrained', checkpoint_path)):
    model = linear_probe.encoder_from_checkpoint(config, info.num_classes, path, strategy)
    results[name] = evaluate_encoder(knn.encoder_feature_fn(model), strategy, bank_fn,
                                     query_fn, config, args.train_examples,
                                     args.eval_examples, info.num_classes)
    print(f'{name}: {json.dumps(results[name])}', flush=True)

  scalars = read_scalars(args.model_dir)
  history = knn.read_history(args.model_dir)
  train_points = scalars.get('train/total_loss', [])
  # Wall-clock of training: the events file opens just before the step-0 kNN; the
  # last training scalar marks the end. kNN monitor time is reported separately.
  first_wall = min(w for values in scalars.values() for _, _, w in values)
  knn_secs = sum(entry.get('knn/seconds', 0.0) for entry in history)
  wall_secs = (train_points[-1][2] - first_wall + history[0].get('knn/seconds', 0.0)
               if train_points and history else float('nan'))
  train_secs = wall_secs - knn_secs
  images = step * config.train.train_batch_size
  summary = {
      'global_step': step, 'train_batch_size': config.train.train_batch_size,
      'wall_clock_secs': wall_secs, 'knn_monitor_secs': knn_secs,
      'train_secs_without_knn': train_secs,
      'images_per_sec': images / train_secs if train_secs > 0 else float('nan'),
      'epochs': images / info.num_train_examples,
      'final_contrast_loss': scalars.get('train/contrast_loss', [(0, float('nan'), 0)])[-1][1],
      **results,
      'gain_knn_points': 100 * (results['pretrained']['knn_top_1_accuracy']
                                - results['random_init']['knn_top_1_accuracy']),
      'gain_linear_probe_points': 100 * (
          results['pretrained']['linear_probe_top_1_accuracy']
          - results['random_init']['linear_probe_top_1_accuracy']),
      'knn_history': history,
  }
  run_dir.write_json_atomic(os.path.join(args.model_dir, 'budget_result.json'), summary)
  print(json.dumps({key: value for key, value in summary.items() if key != 'knn_history'},
                   indent=1), flush=True)
  if args.plot and history:
    plot(history, scalars, args.plot,
         f'SimCLR ResNet-{config.model.resnet_depth}, CIFAR-10, batch '
         f'{config.train.train_batch_size}, {step} steps, {wall_secs / 60:.1f} min on 2 CPU cores')
    print(f'plot: {args.plot}', flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
