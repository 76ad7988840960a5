r"""Images/s, model FLOPs, matmul FLOP/s, utilisation and peak RSS of the training step.

    python bench/train_step.py --resnet_depth=18 --image_size=32 --train_batch_size=64
    python bench/train_step.py --resnet_depth=50 --image_size=224 --train_batch_size=64 \
        --bench_steps=3 --mixed_precision=bfloat16

Takes run.py's flags (model, data, optimizer, --mixed_precision, --jit_compile,
--num_cpu_devices, ...) plus --bench_* flags. Times the full training step on one fixed
random batch held in memory (no input pipeline): two views (pretrain), forward,
NT-Xent + supervised + weight-decay losses, backward, LARS update, under the strategy
run.py would use. Each timed call runs one step; the rate uses the median step time.
Measures float32 and bfloat16 matmul FLOP/s in the same process before and after the
steps (the higher rate counts). The last line is
one JSON object:

  images_per_sec            images (pairs of views when pretraining) per second
  model_flops_per_image     conv + matmul FLOPs of one image's training step
                            (3 x forward; 2 views when pretraining; 1 MAC = 2 FLOPs)
  matmul_flops_per_sec_fp32 best float32 [n, n] matmul rate over --bench_matmul_sizes
  matmul_flops_per_sec_bf16 same in bfloat16
  mfu                       images_per_sec * model_flops_per_image / the matmul rate of
                            the run's compute dtype (fp32, or bf16 with
                            --mixed_precision=bfloat16)
  peak_rss_mb               peak resident memory of the process during the timed steps
  mfu_best                  as mfu, from the fastest step (on a shared CPU both the
                            fastest step and the best matmul are the least disturbed)
  speedup_vs_float32        with --bench_compare_float32 on a bf16 run: median float32
                            step / median bf16 step, the two alternating step by step
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags as absl_flags
import tf_simclr  # Before TensorFlow: turns on its oneDNN CPU kernels.
import tensorflow as tf

from bench import common
import flags as simclr_flags
from tf_simclr import config as config_lib
from tf_simclr import precision
from tf_simclr import strategy as strategy_lib
from tf_simclr.models import fast_batch_norm
from tf_simclr.models import fast_conv
from tf_simclr.models import kernel_choice

simclr_flags.define_flags()
absl_flags.DEFINE_integer('bench_steps', 10, 'Timed training steps.')
absl_flags.DEFINE_integer('bench_warmup_steps', 2,
                          'Untimed steps first (the first one traces the function).')
absl_flags.DEFINE_integer('bench_num_classes', 1000,
                          'Classes of the supervised head (random labels).')
absl_flags.DEFINE_list('bench_matmul_sizes', ['2048', '4096'],
                       'Square matmul sizes n measured; the best rate counts.')
absl_flags.DEFINE_bool('bench_fused_batch_norm', True,
                       'Use the fused BatchNormalization kernels (False: the Keras '
                       'computation, for comparison).')
absl_flags.DEFINE_bool('bench_compare_keras_batch_norm', False,
                       'Also time the same step with the Keras BatchNormalization '
                       'computation, alternating steps with the fused one, and report '
                       'the speed-up.')
absl_flags.DEFINE_bool('bench_fast_conv_gradient', True,
                       'Compute conv input gradients by forward convolutions (CPU; '
                       'False: TensorFlow\'s Conv2DBackpropInput, for comparison).')
absl_flags.DEFINE_bool('bench_compare_plain_conv_gradient', False,
                       'Also time the same step with TensorFlow\'s conv input gradient, '
                       'alternating steps with ours, and report the speed-up.')
absl_flags.DEFINE_bool('bench_compare_tf_defaults', False,
                       'Also time the same step with both Keras BatchNormalization and '
                       'TensorFlow\'s conv input gradient (what stock TF/Keras layers '
                       'compute, as the official code does), alternating, and report '
                       'the speed-up.')
absl_flags.DEFINE_bool('bench_compare_cpu_kernels', False,
                       'Also time the step built with --cpu_kernels=ours and with '
                       '--cpu_kernels=stock, alternating with the run\'s own choice '
                       '(--cpu_kernels, auto by default), and report the speed-ups.')
absl_flags.DEFINE_bool('bench_compare_patches', False,
                       'Also time the step built without the convs as matmuls of patches '
                       '(the run\'s other kernel choices kept), alternating step by step, '
                       'and report the speed-up.')
absl_flags.DEFINE_bool('bench_compare_float32', False,
                       'With --mixed_precision=bfloat16: also time the same step built in '
                       'float32 (its own --cpu_kernels choice), alternating step by step, '
                       'and report the bf16 speed-up.')
FLAGS = absl_flags.FLAGS


def set_tf_defaults(enabled_ours: bool) -> None:
  """Both speed-ups on (True) or both off: Keras BN and TF's conv gradient (False)."""
  fast_batch_norm.set_fused_batch_norm_enabled(enabled_ours)
  fast_conv.set_fast_conv_gradient_enabled(enabled_ours)

KEYS = ('images_per_sec', 'model_flops_per_image', 'matmul_flops_per_sec_fp32',
        'matmul_flops_per_sec_bf16', 'mfu', 'peak_rss_mb')


def time_alternating(one_step: Callable[[], Any], others: dict[str, Callable[[], Any]],
                     steps: int) -> dict[str, list[float]]:
  """Step seconds of `one_step` ('run') and of each of `others`, one step of each per
  round, so all see the same machine load.

  Each step was traced with its own kernel choice; the module-level one goes back to
  the run's first.
  """
  kernel_choice.apply_choice(one_step.kernels)
  times: dict[str, list[float]] = {'run': [], **{name: [] for name in others}}
  for _ in range(steps):
    times['run'] += common.time_calls(one_step, 1)
    for name, step in others.items():
      times[name] += common.time_calls(step, 1)
  return times


def compare_alternating(config: config_lib.Config, strategy: tf.distribute.Strategy,
                        one_step: Callable[[], Any], set_enabled: Callable[[bool], None],
                        enabled: bool, *, num_classes: int, steps: int,
                        warmup_steps: int) -> tuple[float, float]:
  """Times `one_step` against the same step built with `set_enabled(False)`.

  The two steps alternate, so both see the same machine load. Returns the median step
  seconds (ours, theirs).
  """
  set_enabled(False)
  try:
    other_step, _ = common.timed_step_fn(config, strategy, num_classes, warmup_steps)
  finally:
    set_enabled(enabled)
  times = time_alternating(one_step, {'other': other_step}, steps)
  return common.median(times['run']), common.median(times['other'])


def compare_cpu_kernels(config: config_lib.Config, strategy: tf.distribute.Strategy,
                        one_step: Callable[[], Any], *, num_classes: int, steps: int,
                        warmup_steps: int) -> dict[str, float]:
  """The run's step vs the same step with --cpu_kernels=ours and =stock, alternating."""
  others = {}
  for mode in ('ours', 'stock'):
    other_config = config_lib.replace(config, train={'cpu_kernels': mode})
    others[mode], _ = common.timed_step_fn(other_config, strategy, num_classes, warmup_steps)
  times = time_alternating(one_step, others, steps)
  medians = {mode: common.median(values) for mode, values in times.items()}
  # Per round (one step of each, back to back): the spread of the ratio under load.
  round_ratios = {mode: [other / run for other, run in zip(times[mode], times['run'])]
                  for mode in others}
  return {'step_seconds_alternating_kernels': times['run'],
          'step_seconds_cpu_kernels_ours': times['ours'],
          'step_seconds_cpu_kernels_stock': times['stock'],
          'round_speedups_vs_cpu_kernels_ours': round_ratios['ours'],
          'round_speedups_vs_cpu_kernels_stock': round_ratios['stock'],
          'step_seconds_median_alternating_kernels': medians['run'],
          'step_seconds_median_cpu_kernels_ours': medians['ours'],
          'step_seconds_median_cpu_kernels_stock': medians['stock'],
          'speedup_vs_cpu_kernels_ours': medians['ours'] / medians['run'],
          'speedup_vs_cpu_kernels_stock': medians['stock'] / medians['run']}


def compare_float32(config: config_lib.Config, strategy: tf.distribute.Strategy,
                    one_step: Callable[[], Any], *, num_classes: int, steps: int,
                    warmup_steps: int) -> dict[str, Any]:
  """The run's (bf16) step vs the same step built in float32, alternating step by step."""
  float32_config = config_lib.replace(config, train={'mixed_precision': 'float32'})
  float32_step, _ = common.timed_step_fn(float32_config, strategy, num_classes, warmup_steps)
  times = time_alternating(one_step, {'float32': float32_step}, steps)
  return {'step_seconds_alternating_precision': times['run'],
          'step_seconds_float32': times['float32'],
          'round_speedups_vs_float32': [other / run for other, run in
                                        zip(times['float32'], times['run'])],
          'float32_cpu_kernels': float32_step.kernels.summary(),
          'speedup_vs_float32': common.median(times['float32']) / common.median(times['run'])}


def run_benchmark(config: config_lib.Config, strategy: tf.distribute.Strategy, *,
                  num_classes: int, steps: int, warmup_steps: int,
                  matmul_sizes: list[int],
                  compare_keras_batch_norm_steps: int = 0,
                  compare_plain_conv_gradient_steps: int = 0,
                  compare_tf_defaults_steps: int = 0,
                  compare_cpu_kernels_steps: int = 0,
                  compare_float32_steps: int = 0,
                  compare_patches_steps: int = 0) -> dict[str, Any]:
  """Times the training step; returns the result dict (KEYS plus details)."""
  num_replicas = strategy.num_replicas_in_sync
  global_batch = config.train.train_batch_size
  # Matmul rates before and after the steps; the higher counts (the CPU may be shared).
  # Under a oneDNN cap without bf16 kernels (--isa_limit of bench/cpu_kinds.py) a bf16
  # matmul crashes TensorFlow (precision.py): float32 only, bf16 reported as None.
  matmul_dtypes = ((tf.float32,) if precision.isa_limit_blocks_bfloat16(precision.isa_limit())
                   else (tf.float32, tf.bfloat16))
  matmul_before = {dtype: common.best_matmul_flops_per_sec(matmul_sizes, dtype)
                   for dtype in matmul_dtypes}
  common.reset_peak_rss()
  one_step, model = common.timed_step_fn(config, strategy, num_classes, warmup_steps)
  durations = common.time_calls(one_step, steps)
  peak_rss = common.peak_rss_mb()
  comparison = {}
  # (steps, switch, its value in this run, key of our median, what the other step is).
  switches = (
      (compare_keras_batch_norm_steps, fast_batch_norm.set_fused_batch_norm_enabled,
       fast_batch_norm.fused_batch_norm_enabled(), 'alternating', 'keras_batch_norm'),
      (compare_plain_conv_gradient_steps, fast_conv.set_fast_conv_gradient_enabled,
       fast_conv.fast_conv_gradient_enabled(), 'alternating_conv', 'plain_conv_gradient'),
      (compare_tf_defaults_steps, set_tf_defaults, True, 'alternating_defaults',
       'tf_defaults'),
      (compare_patches_steps, fast_conv.set_patches_enabled, fast_conv.patches_enabled(),
       'alternating_patches', 'without_patches'),
  )
  for switch_steps, set_enabled, enabled, run_name, other_name in switches:
    if switch_steps:
      ours, theirs = compare_alternating(
          config, strategy, one_step, set_enabled, enabled, num_classes=num_classes,
          steps=switch_steps, warmup_steps=warmup_steps)
      comparison.update({f'step_seconds_median_{run_name}': ours,
                         f'step_seconds_median_{other_name}': theirs,
                         f'speedup_vs_{other_name}': theirs / ours})
  if compare_cpu_kernels_steps:
    comparison.update(compare_cpu_kernels(config, strategy, one_step, num_classes=num_classes,
                                          steps=compare_cpu_kernels_steps,
                                          warmup_steps=warmup_steps))
  if compare_float32_steps and model.compute_dtype != 'float32':
    comparison.update(compare_float32(config, strategy, one_step, num_classes=num_classes,
                                      steps=compare_float32_steps, warmup_steps=warmup_steps))
  step_seconds = common.median(durations)
  images_per_sec = global_batch / step_seconds

  # FLOPs: one image's forward (training=False: the same convs and matmuls).
  image = tf.zeros([1, config.data.image_size, config.data.image_size, 3])
  forward = common.forward_flops(lambda x: model(x, training=False), image)
  views = 2 if config.train.train_mode == 'pretrain' else 1
  model_flops_per_image = common.TRAIN_FLOPS_PER_FORWARD_FLOP * views * forward

  matmul_fp32 = max(matmul_before[tf.float32],
                    common.best_matmul_flops_per_sec(matmul_sizes, tf.float32))
  matmul_bf16 = (max(matmul_before[tf.bfloat16],
                     common.best_matmul_flops_per_sec(matmul_sizes, tf.bfloat16))
                 if tf.bfloat16 in matmul_before else None)
  # What ran: --mixed_precision=bfloat16 runs float32 where bf16 does not pay on this CPU.
  compute_dtype = model.compute_dtype
  bf16 = compute_dtype == 'bfloat16'
  achieved = images_per_sec * model_flops_per_image
  return {
      'images_per_sec': images_per_sec,
      'model_flops_per_image': model_flops_per_image,
      'matmul_flops_per_sec_fp32': matmul_fp32,
      'matmul_flops_per_sec_bf16': matmul_bf16,
      'mfu': achieved / (matmul_bf16 if bf16 else matmul_fp32),
      'peak_rss_mb': peak_rss,
      'mfu_vs_fp32_matmul': achieved / matmul_fp32,
      # Fastest step over the fastest matmul: both the least disturbed by other load.
      'mfu_best': (global_batch / min(durations)) * model_flops_per_image / (
          matmul_bf16 if bf16 else matmul_fp32),
      'model_flops_per_sec': achieved,
      'step_seconds_median': step_seconds,
      'step_seconds_min': min(durations),
      'images_per_sec_best': global_batch / min(durations),
      'forward_flops_per_view': forward,
      'config': {
          'resnet_depth': config.model.resnet_depth,
          'width_multiplier': config.model.width_multiplier,
          'cifar_stem': config.model.use_cifar_stem(config.data.image_size),
          'image_size': config.data.image_size,
          'train_batch_size': global_batch,
          'train_mode': config.train.train_mode,
          'mixed_precision': config.train.mixed_precision,
          'compute_dtype': compute_dtype,
          'jit_compile': config.train.jit_compile,
          'global_bn': config.model.global_bn,
          'fused_batch_norm': fast_batch_norm.fused_batch_norm_enabled(),
          'fast_conv_gradient': fast_conv.fast_conv_gradient_enabled(),
          'onednn': common.onednn_enabled(),
          'replicas': num_replicas,
          'steps': steps,
      },
      'load_average_1min': common.load_average(),
      'tracing_count': one_step.tracing_count(),
      'cpu': kernel_choice.cpu_description(),
      'cpu_kernels': {'mode': config.train.cpu_kernels,
                      'summary': one_step.kernels.summary(),
                      'timings': one_step.kernels.timings},
      **comparison,
  }


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  common.fill_run_flags(FLAGS, 'bench_train_step_', FLAGS.bench_warmup_steps + FLAGS.bench_steps)
  try:
    config = simclr_flags.config_from_flags(FLAGS)
    if FLAGS.bench_steps < 1 or FLAGS.bench_warmup_steps < 0:
      raise ValueError('--bench_steps must be >= 1 and --bench_warmup_steps >= 0.')
    matmul_sizes = [int(size) for size in FLAGS.bench_matmul_sizes]
    strategy = strategy_lib.create_strategy(config.infra)
  except ValueError as error:
    sys.exit(f'error: {error}')
  fast_batch_norm.set_fused_batch_norm_enabled(FLAGS.bench_fused_batch_norm)
  fast_conv.set_fast_conv_gradient_enabled(FLAGS.bench_fast_conv_gradient)
  result = run_benchmark(config, strategy, num_classes=FLAGS.bench_num_classes,
                         steps=FLAGS.bench_steps, warmup_steps=FLAGS.bench_warmup_steps,
                         matmul_sizes=matmul_sizes,
                         compare_keras_batch_norm_steps=(
                             FLAGS.bench_steps if FLAGS.bench_compare_keras_batch_norm else 0),
                         compare_plain_conv_gradient_steps=(
                             FLAGS.bench_steps if FLAGS.bench_compare_plain_conv_gradient
                             else 0),
                         compare_tf_defaults_steps=(
                             FLAGS.bench_steps if FLAGS.bench_compare_tf_defaults else 0),
                         compare_cpu_kernels_steps=(
                             FLAGS.bench_steps if FLAGS.bench_compare_cpu_kernels else 0),
                         compare_float32_steps=(
                             FLAGS.bench_steps if FLAGS.bench_compare_float32 else 0),
                         compare_patches_steps=(
                             FLAGS.bench_steps if FLAGS.bench_compare_patches else 0))
  print(f"{result['images_per_sec']:.2f} images/s "
        f"({result['step_seconds_median']:.3f} s/step median of {FLAGS.bench_steps}), "
        f"{result['model_flops_per_image'] / 1e9:.2f} GFLOP/image-step, "
        f"{result['model_flops_per_sec'] / 1e9:.1f} GFLOP/s; matmul "
        f"fp32 {result['matmul_flops_per_sec_fp32'] / 1e9:.1f}, "
        f"bf16 {(result['matmul_flops_per_sec_bf16'] or float('nan')) / 1e9:.1f} GFLOP/s; "
        f"MFU {result['mfu']:.3f}; peak RSS {result['peak_rss_mb']:.0f} MiB; "
        f"load {result['load_average_1min']:.1f}; "
        f"oneDNN {'on' if result['config']['onednn'] else 'off'}", flush=True)
  if 'speedup_vs_keras_batch_norm' in result:
    print(f"fused BN vs Keras BN step (alternating): "
          f"{result['speedup_vs_keras_batch_norm']:.3f}x", flush=True)
  if 'speedup_vs_plain_conv_gradient' in result:
    print(f"fast conv input gradient vs TF's (alternating): "
          f"{result['speedup_vs_plain_conv_gradient']:.3f}x", flush=True)
  if 'speedup_vs_without_patches' in result:
    print(f"with vs without the convs as matmuls of patches (alternating): "
          f"{result['speedup_vs_without_patches']:.3f}x", flush=True)
  if 'speedup_vs_tf_defaults' in result:
    print(f"fused BN + fast conv gradient vs Keras BN + TF conv gradient (alternating): "
          f"{result['speedup_vs_tf_defaults']:.3f}x", flush=True)
  print(result['cpu_kernels']['summary'], flush=True)
  if 'speedup_vs_cpu_kernels_stock' in result:
    print(f"--cpu_kernels={FLAGS.cpu_kernels} vs ours everywhere / stock everywhere "
          f"(alternating): {result['speedup_vs_cpu_kernels_ours']:.3f}x / "
          f"{result['speedup_vs_cpu_kernels_stock']:.3f}x; per round: "
          + ', '.join(f'{ours:.2f}/{stock:.2f}' for ours, stock in zip(
              result['round_speedups_vs_cpu_kernels_ours'],
              result['round_speedups_vs_cpu_kernels_stock'])), flush=True)
  if 'speedup_vs_float32' in result:
    print(f"bf16 vs float32 step (alternating): {result['speedup_vs_float32']:.3f}x; "
          f"per round: " + ', '.join(f'{ratio:.2f}' for ratio in
                                      result['round_speedups_vs_float32'])
          + f"; float32 {result['float32_cpu_kernels']}", flush=True)
  elif FLAGS.bench_compare_float32:
    print('bf16 vs float32: not compared (the run computes in float32).', flush=True)
  print(json.dumps(result, sort_keys=True), flush=True)


if __name__ == '__main__':
  app.run(main)
