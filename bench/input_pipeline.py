"""Input-pipeline throughput: augmented pretraining examples per second.

    python bench/input_pipeline.py                       # all cases, defaults below
    python bench/input_pipeline.py --cases=cifar32 --num_batches=50

Cases (each the full pretraining pipeline: read, decode, two SimCLR views per example,
batch, prefetch; one input pipeline, as on one host):
- cifar32:  the CIFAR-10 train folder (../shared/data/cifar10) at 32 px (--use_blur=False, as the
            official CIFAR-10 recipe);
- cifar224: the same JPEGs cropped and resized to 224 px in the pipeline, with blur;
- jpeg224:  synthetic 256x256 JPEGs written to a temp folder, to 224 px, with blur
            (ImageNet-like decode cost).
Prints one line per case and a final JSON line.

    python bench/input_pipeline.py --cases=train_step --resnet_depth=18 --image_size=32 \
        --batch_size=64

- train_step: the real training step and loop of tf_simclr.train (ResNet, NT-Xent,
  LARS) fed by the CIFAR-10 folder pipeline, against the same step and loop fed one
  fixed batch held in memory (taken from that pipeline). Both alternate in rounds so
  they see the same machine load; 'ratio' = pipeline-fed / fixed-batch images/s (the
  target is >= 0.95: the input pipeline must not starve or slow the model).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from typing import Any, Optional

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # `python bench/input_pipeline.py` from anywhere.
  sys.path.insert(0, REPO_ROOT)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # pylint: disable=g-import-not-at-top
from PIL import Image  # pylint: disable=g-import-not-at-top
import tf_simclr  # Before TensorFlow: turns on its oneDNN CPU kernels.
import tensorflow as tf  # pylint: disable=g-import-not-at-top

from tf_simclr import config as config_lib  # pylint: disable=g-import-not-at-top
from tf_simclr import train as train_lib  # pylint: disable=g-import-not-at-top
from tf_simclr.config import DataConfig  # pylint: disable=g-import-not-at-top
from tf_simclr.data import datasets  # pylint: disable=g-import-not-at-top

DEFAULT_CIFAR_DIR = os.path.join(os.path.dirname(REPO_ROOT), 'shared', 'data', 'cifar10')


def pipeline_throughput(data_config: DataConfig, *, split: str, global_batch_size: int,
                        num_batches: int, warmup_batches: int = 3,
                        train_mode: str = 'pretrain') -> dict[str, float]:
  """Examples/s (and views/s) of the training pipeline, after `warmup_batches` batches."""
  input_fn = datasets.build_input_fn(data_config, split=split, is_training=True,
                                     train_mode=train_mode, global_batch_size=global_batch_size)
  iterator = iter(input_fn(None))
  for _ in range(warmup_batches):
    next(iterator)
  start = time.perf_counter()
  for _ in range(num_batches):
    batch = next(iterator)
  batch['image'].numpy()
  seconds = time.perf_counter() - start
  examples = num_batches * global_batch_size
  views_per_example = 2 if train_mode == 'pretrain' else 1
  return {'examples_per_s': examples / seconds,
          'views_per_s': views_per_example * examples / seconds,
          'seconds': seconds, 'examples': examples}


def compare_train_step_throughput(config: config_lib.Config, *, num_classes: int,
                                  steps_per_round: int = 2, rounds: int = 3,
                                  warmup_steps: int = 2) -> dict[str, float]:
  """Images/s of the real training loop fed by the data pipeline vs. one fixed batch.

  Builds the model, optimizer, step and loop exactly as `tf_simclr.train.train`
  (`bench.common.build_train_loop`, i.e. `train.build_train_step` /
  `train.build_train_loop`) under the default strategy, and two distributed iterators:
  the training input of `config.data` (`train.make_iterator`) and one batch of it
  repeated from memory. Each round runs `steps_per_round` steps on each (one
  tf.function call per step, as the benchmark of the step), alternating which goes
  first.

  Returns:
    {'pipeline_images_per_s', 'fixed_batch_images_per_s', 'ratio', 'steps'}.
  """
  from bench import common  # pylint: disable=g-import-not-at-top
  strategy = tf.distribute.get_strategy()
  train_loop, _, _ = common.build_train_loop(config, strategy, num_classes)
  pipeline = train_lib.make_iterator(strategy, train_lib.train_input_fn(config))
  fixed_batch = next(iter(train_lib.train_input_fn(config)(tf.distribute.InputContext())))
  fixed = iter(strategy.distribute_datasets_from_function(
      lambda context: tf.data.Dataset.from_tensors(fixed_batch).repeat()))
  one = tf.constant(1, tf.int32)

  def run(iterator: Any, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
      train_loop(iterator, one).numpy()
    return time.perf_counter() - start

  run(fixed, warmup_steps)
  run(pipeline, warmup_steps)
  seconds = {'pipeline': 0.0, 'fixed': 0.0}
  for round_index in range(rounds):
    order = ('pipeline', 'fixed') if round_index % 2 else ('fixed', 'pipeline')
    for name in order:
      seconds[name] += run(pipeline if name == 'pipeline' else fixed, steps_per_round)
  images = rounds * steps_per_round * config.train.train_batch_size
  return {'pipeline_images_per_s': images / seconds['pipeline'],
          'fixed_batch_images_per_s': images / seconds['fixed'],
          'ratio': seconds['fixed'] / seconds['pipeline'],
          'steps': rounds * steps_per_round,
          'tracing_count': train_loop.experimental_get_tracing_count()}


def train_step_config(data_dir: str, *, resnet_depth: int, image_size: int,
                      batch_size: int) -> config_lib.Config:
  """Pretraining on the image folder at `data_dir`, run.py's defaults otherwise."""
  return config_lib.Config(
      model=config_lib.ModelConfig(resnet_depth=resnet_depth),
      data=config_lib.DataConfig(dataset='image_folder', data_dir=data_dir,
                                 train_split='train', eval_split='test',
                                 image_size=image_size),
      train=config_lib.TrainConfig(train_batch_size=batch_size, train_steps=1000,
                                   model_dir=tempfile.mkdtemp(prefix='bench_input_')))


def write_synthetic_jpegs(root: str, count: int, size: int = 256, num_classes: int = 10) -> str:
  """ROOT/train/class_k/*.jpg: smooth random colour fields with noise, quality 90."""
  rng = np.random.RandomState(0)
  ramp = np.linspace(0.0, 1.0, size)
  for index in range(count):
    class_dir = os.path.join(root, 'train', f'class_{index % num_classes}')
    os.makedirs(class_dir, exist_ok=True)
    low, high = rng.uniform(0, 255, size=(2, 3))
    field = low + (high - low) * (ramp[:, None, None] + ramp[None, :, None]) / 2
    image = np.clip(field + rng.normal(0, 12, size=(size, size, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(image).save(os.path.join(class_dir, f'{index:05d}.jpg'), quality=90)
  return root


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--cases', default='cifar32,cifar224,jpeg224')
  parser.add_argument('--cifar_dir', default=DEFAULT_CIFAR_DIR)
  parser.add_argument('--batch_size', type=int, default=128, help='Examples per batch.')
  parser.add_argument('--num_batches', type=int, default=20)
  parser.add_argument('--warmup_batches', type=int, default=3)
  parser.add_argument('--synthetic_count', type=int, default=512)
  parser.add_argument('--resnet_depth', type=int, default=18, help='train_step case.')
  parser.add_argument('--image_size', type=int, default=32, help='train_step case.')
  parser.add_argument('--steps_per_round', type=int, default=2, help='train_step case.')
  parser.add_argument('--rounds', type=int, default=3, help='train_step case.')
  args = parser.parse_args(argv)

  results: dict[str, Any] = {'cpu_count': os.cpu_count(), 'batch_size': args.batch_size,
                             'num_batches': args.num_batches, 'tensorflow': tf.__version__}
  cifar = DataConfig(dataset='image_folder', data_dir=args.cifar_dir, train_split='train')
  with tempfile.TemporaryDirectory() as temp_dir:
    for case in args.cases.split(','):
      if case == 'train_step':
        try:
          config = train_step_config(args.cifar_dir, resnet_depth=args.resnet_depth,
                                     image_size=args.image_size, batch_size=args.batch_size)
          config_lib.validate(config, 1)
          num_classes = datasets.get_dataset_info(config.data).num_classes
        except (ValueError, FileNotFoundError) as error:
          raise SystemExit(f'error: {case}: {error}') from None
        result = compare_train_step_throughput(
            config, num_classes=num_classes, steps_per_round=args.steps_per_round,
            rounds=args.rounds)
        print(f'{case}: ResNet-{args.resnet_depth} {args.image_size} px batch '
              f'{args.batch_size}: {result["pipeline_images_per_s"]:.2f} images/s fed by '
              f'the pipeline, {result["fixed_batch_images_per_s"]:.2f} on a fixed batch, '
              f'ratio {result["ratio"]:.3f} over {result["steps"]} steps each')
        results[case] = {key: round(value, 4) for key, value in result.items()}
        continue
      if case == 'cifar32':
        config = dataclasses.replace(cifar, image_size=32, use_blur=False)
      elif case == 'cifar224':
        config = dataclasses.replace(cifar, image_size=224)
      elif case == 'jpeg224':
        root = write_synthetic_jpegs(os.path.join(temp_dir, 'jpeg'), args.synthetic_count)
        config = DataConfig(dataset='image_folder', data_dir=root, train_split='train',
                            image_size=224)
      else:
        raise SystemExit(f'error: --cases: unknown case {case!r}; use cifar32, cifar224, '
                         'jpeg224, train_step.')
      try:
        result = pipeline_throughput(config, split='train', global_batch_size=args.batch_size,
                                     num_batches=args.num_batches,
                                     warmup_batches=args.warmup_batches)
      except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f'error: {case}: {error}') from None
      print(f'{case}: {result["examples_per_s"]:.0f} examples/s '
            f'({result["views_per_s"]:.0f} augmented views/s) over {result["examples"]} examples')
      results[case] = {key: round(value, 2) for key, value in result.items()}
  print(json.dumps(results))
  return results


if __name__ == '__main__':
  main()
