"""Input-pipeline throughput: augmented pretraining examples per second.

    python bench/input_pipeline.py                       # all cases, defaults below
    python bench/input_pipeline.py --cases=cifar32 --num_batches=50

Cases (each the full pretraining pipeline: read, decode, two SimCLR views per example,
batch, prefetch; one input pipeline, as on one host):
- cifar32:  the CIFAR-10 train folder (../shared/data/cifar10) at 32 px (no blur: <= 32 px);
- cifar224: the same JPEGs cropped and resized to 224 px in the pipeline, with blur;
- jpeg224:  synthetic 256x256 JPEGs written to a temp folder, to 224 px, with blur
            (ImageNet-like decode cost).
Prints one line per case and a final JSON line. `compare_train_step_throughput` times
a real train step fed by the pipeline against the same step on one fixed batch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from typing import Any, Callable, Iterable, Optional

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # `python bench/input_pipeline.py` from anywhere.
  sys.path.insert(0, REPO_ROOT)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # pylint: disable=g-import-not-at-top
from PIL import Image  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

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


def compare_train_step_throughput(train_step: Callable[[Any], Any], batches: Iterable[Any], *,
                                  examples_per_step: int, num_steps: int = 20,
                                  warmup_steps: int = 3) -> dict[str, float]:
  """Train-step throughput fed by the input pipeline vs. one fixed, prefetched batch.

  Args:
    train_step: Runs one step on a batch (e.g. `strategy.run` of the real step over a
      distributed batch); its result is fetched with `tf.nest` + `.numpy()` to wait for it.
    batches: An iterable of batches (a dataset or distributed dataset).
    examples_per_step: Examples per step (global batch size), for examples/s.
    num_steps: Timed steps per variant.
    warmup_steps: Untimed steps first (tracing, autotuning).

  Returns:
    {'pipeline_examples_per_s', 'fixed_batch_examples_per_s', 'ratio'}: a ratio near 1
    means the pipeline does not starve the model.
  """
  def wait(result: Any) -> None:
    for value in tf.nest.flatten(result):
      if hasattr(value, 'numpy'):
        value.numpy()

  def timed(next_batch: Callable[[], Any]) -> float:
    for _ in range(warmup_steps):
      wait(train_step(next_batch()))
    start = time.perf_counter()
    for _ in range(num_steps):
      result = train_step(next_batch())
    wait(result)
    return num_steps * examples_per_step / (time.perf_counter() - start)

  iterator = iter(batches)
  fixed = next(iterator)
  fixed_rate = timed(lambda: fixed)
  pipeline_rate = timed(lambda: next(iterator))
  return {'pipeline_examples_per_s': pipeline_rate, 'fixed_batch_examples_per_s': fixed_rate,
          'ratio': pipeline_rate / fixed_rate}


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
  args = parser.parse_args(argv)

  results: dict[str, Any] = {'cpu_count': os.cpu_count(), 'batch_size': args.batch_size,
                             'num_batches': args.num_batches, 'tensorflow': tf.__version__}
  cifar = DataConfig(dataset='image_folder', data_dir=args.cifar_dir, train_split='train')
  with tempfile.TemporaryDirectory() as temp_dir:
    for case in args.cases.split(','):
      if case == 'cifar32':
        config = dataclasses.replace(cifar, image_size=32)
      elif case == 'cifar224':
        config = dataclasses.replace(cifar, image_size=224)
      elif case == 'jpeg224':
        root = write_synthetic_jpegs(os.path.join(temp_dir, 'jpeg'), args.synthetic_count)
        config = DataConfig(dataset='image_folder', data_dir=root, train_split='train',
                            image_size=224)
      else:
        raise SystemExit(f'error: --cases: unknown case {case!r}; use cifar32, cifar224, jpeg224.')
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
