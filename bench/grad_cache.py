r"""Peak memory and per-image step time of gradient caching (--micro_batch_size).

    python bench/grad_cache.py --resnet_depth=18 --image_size=32 --micro_batch_size=64
    python bench/grad_cache.py --resnet_depth=18 --image_size=32 --cifar_stem=false \
        --micro_batch_size=64 --bench_large_batch=4096 --bench_small_batch=256

Takes run.py's flags (model, data, optimizer, --micro_batch_size, ...; the batch sizes
come from --bench_large_batch / --bench_small_batch) plus --bench_* flags.

1. Memory: one training step (the real `tf_simclr.train` step, on one fixed random batch
   in memory, no input pipeline) at --bench_large_batch and at --bench_small_batch, both
   with --micro_batch_size, each in a fresh subprocess; its peak RSS (VmHWM: model,
   batch, tracing and the step). Target: large / small <= 1.2.
2. Time: in one process, the plain step and the gradient-caching step at
   --bench_small_batch, alternating step by step (both see the same load on a shared
   machine); the ratio of their median seconds per image. Target: <= 1.4 (gradient
   caching does n - 1 extra micro-batch forward passes: 1.25x the plain step's FLOPs
   at n = 4 micro-batches, 1.33x at n = 64). With --bench_time_large_batch, each round
   also times the gradient-caching step at --bench_large_batch, compared per image
   with the plain step at the small batch (the largest a small machine holds); with
   --bench_plain_large_batch also with the plain step at the large batch, where it
   fits (both then pay the same O(B^2) whole-batch loss).

The last line is one JSON object: rss_mb_large, rss_mb_small, rss_ratio,
step_seconds_large (its one step includes tracing), seconds_per_image_plain,
seconds_per_image_cached, time_ratio (and with --bench_time_large_batch
seconds_per_image_cached_large, time_ratio_large; with --bench_plain_large_batch
seconds_per_image_plain_large, time_ratio_large_same_batch), the config, the load
average.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags as absl_flags
import tf_simclr  # Before TensorFlow: turns on its oneDNN CPU kernels.
import tensorflow as tf

from bench import common
import flags as simclr_flags
from tf_simclr import config as config_lib
from tf_simclr import train as train_lib

simclr_flags.define_flags()
absl_flags.DEFINE_integer('bench_large_batch', 4096, 'The large global batch.')
absl_flags.DEFINE_integer('bench_small_batch', 256, 'The small global batch.')
absl_flags.DEFINE_integer('bench_steps', 3, 'Timed steps of each kind (time part).')
absl_flags.DEFINE_integer('bench_num_classes', 10, 'Classes of the supervised head.')
absl_flags.DEFINE_bool('bench_time_large_batch', False,
                       'Time part: also time the gradient-caching step at '
                       '--bench_large_batch (one warm-up step, then --bench_steps steps, '
                       'each after a plain step at the small batch) and compare its time '
                       'per image with the plain step at the small batch.')
absl_flags.DEFINE_bool('bench_plain_large_batch', False,
                       'With --bench_time_large_batch: each round also times the plain '
                       'step at --bench_large_batch (it must fit in memory: all its '
                       'activations at once) and compares gradient caching with it at the '
                       'same batch, where both pay the same whole-batch loss.')
absl_flags.DEFINE_enum('bench_role', 'all', ['all', 'memory', 'time'],
                       'all: both parts; memory: one step at --train_batch_size in '
                       'this process (the subprocess of part 1); time: part 2 only.')
FLAGS = absl_flags.FLAGS


def memory_of_one_step(config: config_lib.Config) -> dict[str, Any]:
  """Builds the real step, runs one step; peak RSS and its seconds (with tracing)."""
  train_lib.keep_nan_propagation()
  strategy = tf.distribute.get_strategy()
  train_loop, _, _ = common.build_train_loop(config, strategy, FLAGS.bench_num_classes)
  batch = common.random_batch(config, config.train.train_batch_size,
                              FLAGS.bench_num_classes)
  iterator = iter(tf.data.Dataset.from_tensors(batch).repeat())
  seconds = common.time_calls(
      lambda: train_loop(iterator, tf.constant(1, tf.int32)).numpy(), 1)[0]
  return {'peak_rss_mb': common.peak_rss_mb(), 'step_seconds': seconds,
          'train_batch_size': config.train.train_batch_size,
          'micro_batch_size': config.train.micro_batch_size}


def memory_in_subprocess(batch_size: int) -> dict[str, Any]:
  """`--bench_role=memory` in a fresh process (its own peak RSS) at `batch_size`."""
  argv = [arg for arg in sys.argv[1:]
          if not arg.startswith(('--bench_role', '--train_batch_size'))]
  command = [sys.executable, os.path.abspath(__file__), *argv, '--bench_role=memory',
             f'--train_batch_size={batch_size}']
  result = subprocess.run(command, capture_output=True, text=True, check=False)
  if result.returncode:
    sys.exit(f'error: memory run at batch {batch_size} failed:\n{result.stderr[-2000:]}')
  return json.loads(result.stdout.strip().splitlines()[-1])


def time_plain_and_cached(config: config_lib.Config) -> dict[str, float]:
  """Median seconds per image: plain step vs gradient caching, alternating."""
  strategy = tf.distribute.get_strategy()
  plain_config = config_lib.replace(config, train={'micro_batch_size': 0})
  plain_step, _ = common.timed_step_fn(plain_config, strategy, FLAGS.bench_num_classes, 1)
  cached_step, _ = common.timed_step_fn(config, strategy, FLAGS.bench_num_classes, 1)
  large_step = plain_large_step = None
  large_batch = FLAGS.bench_large_batch
  if FLAGS.bench_time_large_batch:
    large_config = config_lib.replace(config, train={'train_batch_size': large_batch})
    large_step, _ = common.timed_step_fn(large_config, strategy, FLAGS.bench_num_classes, 1)
    if FLAGS.bench_plain_large_batch:
      plain_large_step, _ = common.timed_step_fn(
          config_lib.replace(large_config, train={'micro_batch_size': 0}), strategy,
          FLAGS.bench_num_classes, 1)
  plain, cached, large, plain_large = [], [], [], []
  for _ in range(FLAGS.bench_steps):
    plain += common.time_calls(plain_step, 1)
    cached += common.time_calls(cached_step, 1)
    if large_step is not None:
      large += common.time_calls(large_step, 1)
    if plain_large_step is not None:
      plain_large += common.time_calls(plain_large_step, 1)
  batch = config.train.train_batch_size
  result = {'round_time_ratios': [one / other for one, other in zip(cached, plain)],
            'seconds_per_image_plain': common.median(plain) / batch,
            'seconds_per_image_cached': common.median(cached) / batch,
            'time_ratio': common.median(cached) / common.median(plain)}
  if large:
    result.update({
        'seconds_per_image_cached_large': common.median(large) / large_batch,
        'time_ratio_large': (common.median(large) / large_batch) / (common.median(plain) / batch),
        'round_time_ratios_large': [(one / large_batch) / (other / batch)
                                    for one, other in zip(large, plain)]})
  if plain_large:
    result.update({
        'seconds_per_image_plain_large': common.median(plain_large) / large_batch,
        'time_ratio_large_same_batch': common.median(large) / common.median(plain_large),
        'round_time_ratios_large_same_batch': [
            one / other for one, other in zip(large, plain_large)]})
  return result


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  common.fill_run_flags(FLAGS, 'bench_grad_cache_', 100)
  if FLAGS.bench_role != 'memory':
    FLAGS.train_batch_size = FLAGS.bench_small_batch
  try:
    config = simclr_flags.config_from_flags(FLAGS)
    if not config.train.micro_batch_size:
      raise ValueError('--micro_batch_size must be set (> 0).')
    config_lib.validate(config_lib.replace(
        config, train={'train_batch_size': FLAGS.bench_large_batch}))
  except ValueError as error:
    sys.exit(f'error: {error}')
  if FLAGS.bench_role == 'memory':
    print(json.dumps(memory_of_one_step(config)), flush=True)
    return
  result: dict[str, Any] = {}
  if FLAGS.bench_role == 'all':
    large = memory_in_subprocess(FLAGS.bench_large_batch)
    small = memory_in_subprocess(FLAGS.bench_small_batch)
    result.update({'rss_mb_large': large['peak_rss_mb'], 'rss_mb_small': small['peak_rss_mb'],
                   'rss_ratio': large['peak_rss_mb'] / small['peak_rss_mb'],
                   'step_seconds_large': large['step_seconds'],
                   'step_seconds_small': small['step_seconds']})
    print(f"peak RSS: batch {FLAGS.bench_large_batch} {large['peak_rss_mb']:.0f} MiB, "
          f"batch {FLAGS.bench_small_batch} {small['peak_rss_mb']:.0f} MiB "
          f"(micro-batch {config.train.micro_batch_size}): "
          f"{result['rss_ratio']:.2f}x (target <= 1.2)", flush=True)
  result.update(time_plain_and_cached(config))
  small, large = FLAGS.bench_small_batch, FLAGS.bench_large_batch
  comparisons = [
      ('', f'vs plain step at batch {small} (alternating, median of {FLAGS.bench_steps})'),
      ('_large', f'at batch {large} vs plain step at batch {small}'),
      ('_large_same_batch', f'vs plain step, both at batch {large}')]
  for suffix, description in comparisons:
    if f'time_ratio{suffix}' in result:
      rounds = ', '.join(f'{ratio:.2f}' for ratio in result[f'round_time_ratios{suffix}'])
      print(f"per image, gradient caching {description}: {result[f'time_ratio{suffix}']:.2f}x "
            f'(target <= 1.4); per round: {rounds}', flush=True)
  result.update({
      'config': {'resnet_depth': config.model.resnet_depth,
                 'image_size': config.data.image_size,
                 'cifar_stem': config.model.use_cifar_stem(config.data.image_size),
                 'micro_batch_size': config.train.micro_batch_size,
                 'large_batch': FLAGS.bench_large_batch,
                 'small_batch': FLAGS.bench_small_batch,
                 'onednn': common.onednn_enabled()},
      'load_average_1min': common.load_average()})
  print(json.dumps(result, sort_keys=True), flush=True)


if __name__ == '__main__':
  app.run(main)
