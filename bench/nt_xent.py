r"""Cost of the NT-Xent loss alone (forward + backward) against a ResNet-50 step.

    python bench/nt_xent.py                                  # global batch 512 and 4096
    python bench/nt_xent.py --batch_sizes=4096 --reference_image_size=224
    python bench/nt_xent.py --batch_sizes=256,4096 --reference_image_size=0 --blocked

For each global batch b it times `tf_simclr.losses.nt_xent_loss` and its gradient on
random projections [2b, proj_out_dim] on one device (for b = 4096 that is 8192 x 8192
logits in four [b, b] blocks), and reports seconds per call, FLOPs and the peak RSS
added by the call (with --blocked, first `losses.blocked_nt_xent_loss`, the row-blocked
loss of gradient caching, then the plain loss, in the same process: memory the first
freed may be reused by the second). It then times the real ResNet-50 training step
(bench/common's step, the loop of tf_simclr.train) at a small batch, takes its
per-image cost and EXTRAPOLATES it linearly to batch b, reporting the NT-Xent share of
such a step. The last line is one JSON object.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from typing import Any

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags as absl_flags
import tf_simclr  # Before TensorFlow: turns on its oneDNN CPU kernels.
import tensorflow as tf

from bench import common
from tf_simclr import config as config_lib
from tf_simclr import losses

absl_flags.DEFINE_list('batch_sizes', ['512', '4096'], 'Global batch sizes b (2b rows).')
absl_flags.DEFINE_integer('proj_out_dim', 128, 'Projection dimension d.')
absl_flags.DEFINE_float('temperature', 0.1, 'Softmax temperature.')
absl_flags.DEFINE_integer('steps', 3, 'Timed loss + gradient calls per batch size.')
absl_flags.DEFINE_integer('reference_image_size', 224,
                          'Image size of the ResNet-50 step; 0 skips it.')
absl_flags.DEFINE_integer('reference_batch_size', 8, 'Batch of the measured ResNet-50 step.')
absl_flags.DEFINE_integer('reference_steps', 2, 'Timed ResNet-50 steps (after one warm-up).')
absl_flags.DEFINE_bool('blocked', False,
                       'Also time `losses.blocked_nt_xent_loss` (the row-blocked loss of '
                       'gradient caching) at each batch size, after the plain loss.')
absl_flags.DEFINE_enum('mixed_precision', 'float32', ['float32', 'bfloat16'],
                       'Precision of the ResNet-50 step (the loss is float32 either way).')
FLAGS = absl_flags.FLAGS


def time_nt_xent(batch_size: int, dim: int, temperature: float, steps: int,
                 blocked: bool = False) -> dict[str, Any]:
  """Seconds, FLOPs and memory of one NT-Xent loss + gradient at global batch b.

  `blocked`: `losses.blocked_nt_xent_loss` (its default row blocks) instead of
  `losses.nt_xent_loss`; the FLOPs are those of the plain loss either way.
  """
  hidden = tf.random.stateless_normal([2 * batch_size, dim], seed=[1, batch_size])

  @tf.function
  def loss_and_gradient(hidden: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    with tf.GradientTape() as tape:
      tape.watch(hidden)
      if blocked:
        loss, _ = losses.blocked_nt_xent_loss(hidden, temperature=temperature)
      else:
        loss, _, _ = losses.nt_xent_loss(hidden, temperature=temperature)
    return loss, tape.gradient(loss, hidden)

  forward = common.forward_flops(lambda h: losses.nt_xent_loss(h, temperature=temperature)[0],
                                 hidden)
  common.reset_peak_rss()  # From here VmHWM is this call's peak (earlier calls' too if
  baseline_rss = common.peak_rss_mb()  # the kernel cannot reset it).
  loss_and_gradient(hidden)[1].numpy()  # Trace + warm up.
  durations = common.time_calls(lambda: loss_and_gradient(hidden)[1].numpy(), steps)
  peak = common.peak_rss_mb()
  logits_bytes = (2 * batch_size) ** 2 * 4
  return {
      'batch_size': batch_size,
      'blocked': blocked,
      'seconds': common.median(durations),
      'seconds_min': min(durations),
      'flops': common.TRAIN_FLOPS_PER_FORWARD_FLOP * forward,
      'peak_rss_mb': peak,
      'rss_increase_mb': max(0.0, peak - baseline_rss),
      'logits_mb': logits_bytes / 2 ** 20,
  }


def time_resnet50_per_image(image_size: int, batch_size: int, steps: int,
                            mixed_precision: str) -> dict[str, Any]:
  """Median seconds per image of the real ResNet-50 pretraining step at this batch."""
  config = config_lib.Config(
      model=config_lib.ModelConfig(resnet_depth=50),
      data=config_lib.DataConfig(image_size=image_size),
      train=config_lib.TrainConfig(train_batch_size=batch_size, train_steps=steps + 1,
                                   mixed_precision=mixed_precision,
                                   model_dir=tempfile.mkdtemp(prefix='bench_nt_xent_')))
  strategy = tf.distribute.get_strategy()
  one_step, _ = common.timed_step_fn(config, strategy, num_classes=1000, warmup_steps=1)
  seconds = common.median(common.time_calls(one_step, steps))
  return {'image_size': image_size, 'batch_size': batch_size, 'step_seconds': seconds,
          'seconds_per_image': seconds / batch_size, 'mixed_precision': mixed_precision}


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  batch_sizes = [int(size) for size in FLAGS.batch_sizes]
  result: dict[str, Any] = {'nt_xent': [], 'load_average_1min': common.load_average()}
  for batch_size, blocked in [(size, blocked) for size in batch_sizes
                              for blocked in ([True, False] if FLAGS.blocked else [False])]:
    measured = time_nt_xent(batch_size, FLAGS.proj_out_dim, FLAGS.temperature, FLAGS.steps,
                            blocked)
    result['nt_xent'].append(measured)
    print(f"NT-Xent{' (row blocks)' if blocked else ''} b={batch_size} "
          f'({2 * batch_size}x{2 * batch_size} logits): '
          f"{measured['seconds']:.3f} s fwd+bwd, {measured['flops'] / 1e9:.1f} GFLOP, "
          f"peak RSS {measured['peak_rss_mb']:.0f} MiB "
          f"(+{measured['rss_increase_mb']:.0f}; the 2b x 2b float32 logits are "
          f"{measured['logits_mb']:.0f} MiB)", flush=True)
  if FLAGS.reference_image_size:
    reference = time_resnet50_per_image(FLAGS.reference_image_size,
                                        FLAGS.reference_batch_size, FLAGS.reference_steps,
                                        FLAGS.mixed_precision)
    result['resnet50'] = reference
    for measured in result['nt_xent']:
      step = reference['seconds_per_image'] * measured['batch_size']  # Linear extrapolation.
      measured['resnet50_step_seconds_extrapolated'] = step
      measured['fraction_of_resnet50_step'] = measured['seconds'] / step
      print(f"b={measured['batch_size']}: NT-Xent is "
            f"{100 * measured['fraction_of_resnet50_step']:.3g}% of a ResNet-50 "
            f"{reference['image_size']}px step (extrapolated linearly from "
            f"{reference['seconds_per_image']:.3f} s/image measured at batch "
            f"{reference['batch_size']}: {step:.0f} s)", flush=True)
  result['load_average_1min_end'] = common.load_average()
  print(json.dumps(result, sort_keys=True), flush=True)


if __name__ == '__main__':
  app.run(main)
