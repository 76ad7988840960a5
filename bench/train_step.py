r"""Images/s, model FLOPs, matmul FLOP/s, utilisation and peak RSS of the training step.

    python bench/train_step.py --resnet_depth=18 --image_size=32 --train_batch_size=64
    python bench/train_step.py --resnet_depth=50 --image_size=224 --train_batch_size=64 \
        --bench_steps=3 --mixed_precision=bfloat16

Takes run.py's flags (model, data, optimizer, --mixed_precision, --jit_compile,
--num_cpu_devices, ...) plus --bench_* flags. Times the full training step on one fixed
random batch held in memory (no input pipeline): two views (pretrain), forward,
NT-Xent + supervised + weight-decay losses, backward, LARS update, under the strategy
run.py would use. Each timed call runs one step; the rate uses the median step time.
Then measures float32 and bfloat16 matmul FLOP/s in the same process. The last line is
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
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from typing import Any, Callable

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags as absl_flags
import keras
import tensorflow as tf

from bench import common
import flags as simclr_flags
from tf_simclr import config as config_lib
from tf_simclr import losses
from tf_simclr import metrics as metrics_lib
from tf_simclr import optim
from tf_simclr import strategy as strategy_lib
from tf_simclr import train as train_lib
from tf_simclr.models import fast_batch_norm

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
FLAGS = absl_flags.FLAGS

KEYS = ('images_per_sec', 'model_flops_per_image', 'matmul_flops_per_sec_fp32',
        'matmul_flops_per_sec_bf16', 'mfu', 'peak_rss_mb')


def random_batch(config: config_lib.Config, batch_size: int, num_classes: int,
                 seed: int = 0) -> dict[str, tf.Tensor]:
  """One per-replica batch as the data module yields it (random pixels and labels)."""
  size = config.data.image_size
  views = 2 if config.train.train_mode == 'pretrain' else 1
  generator = tf.random.Generator.from_seed(seed)
  images = generator.uniform([views * batch_size, size, size, 3])  # [2b, H, W, 3]
  labels = tf.one_hot(generator.uniform([batch_size], 0, num_classes, tf.int32), num_classes)
  return {'image': images, 'label': labels, 'mask': tf.ones([batch_size])}


def build_train_loop(config: config_lib.Config, strategy: tf.distribute.Strategy,
                     num_classes: int) -> tuple[Callable[..., tf.Tensor], Any, Any]:
  """Model, optimizer and the `train_loop(iterator, num_steps)` of tf_simclr.train.

  Mirrors `tf_simclr.train.train` step for step (same model builder, schedule,
  optimizer, losses and loop structure).

  Returns:
    (train_loop, model, optimizer).
  """
  train_config = config.train
  num_replicas = strategy.num_replicas_in_sync
  pretrain = train_config.train_mode == 'pretrain'
  with strategy.scope():
    model = train_lib.build_model_for(config, num_classes)
    total_steps = max(1, train_config.train_steps)
    learning_rate = optim.WarmUpAndCosineDecay(
        config.optim.learning_rate, total_steps * train_config.train_batch_size,
        train_config.train_batch_size, config.optim.warmup_epochs, total_steps,
        config.optim.learning_rate_scaling)
    optimizer = optim.build_optimizer(config.optim, learning_rate)
    optimizer.build(model.trainable_variables)
  supervised = model.supervised_head is not None
  metric_names = metrics_lib.train_metric_names(pretrain, supervised)

  def train_step(batch: dict[str, tf.Tensor]) -> tf.Tensor:
    images, labels = batch['image'], batch['label']
    values = {}
    with tf.GradientTape() as tape:
      outputs = model(images, training=True)
      loss = tf.constant(0.0)
      if pretrain:
        contrast_loss, logits_ab, contrast_labels = losses.nt_xent_loss(
            tf.cast(outputs['proj_head_output'], tf.float32),
            temperature=config.loss.temperature, hidden_norm=config.loss.hidden_norm,
            replica_context=tf.distribute.get_replica_context())
        values['contrast_loss'] = contrast_loss
        values.update(losses.contrastive_metrics(logits_ab, contrast_labels))
        loss += contrast_loss
      if supervised:
        sup_labels = tf.concat([labels, labels], 0) if pretrain else labels
        logits = tf.cast(outputs['logits_sup'], tf.float32)
        values['supervised_loss'] = losses.supervised_loss(sup_labels, logits)
        values['supervised_acc'] = losses.supervised_accuracy(sup_labels, logits)
        loss += values['supervised_loss']
      values['weight_decay'] = optim.weight_decay_loss(model, config.optim)
      loss += values['weight_decay']
      values['total_loss'] = loss
      scaled_loss = loss / num_replicas
    variables = model.trainable_variables
    gradients = tape.gradient(scaled_loss, variables)
    optimizer.apply_gradients(zip(gradients, variables))
    return metrics_lib.pack(values, metric_names)

  step_fn = tf.function(train_step, jit_compile=True) if train_config.jit_compile else train_step

  @tf.function
  def train_loop(iterator: Any, num_steps: tf.Tensor) -> tf.Tensor:
    sums = tf.zeros([len(metric_names)], tf.float32)
    for _ in tf.range(num_steps):
      per_replica = strategy.run(step_fn, args=(next(iterator),))
      sums += strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None)
    return sums

  return train_loop, model, optimizer


def run_benchmark(config: config_lib.Config, strategy: tf.distribute.Strategy, *,
                  num_classes: int, steps: int, warmup_steps: int,
                  matmul_sizes: list[int]) -> dict[str, Any]:
  """Times the training step; returns the result dict (KEYS plus details)."""
  num_replicas = strategy.num_replicas_in_sync
  global_batch = config.train.train_batch_size
  per_replica_batch = global_batch // num_replicas
  train_loop, model, _ = build_train_loop(config, strategy, num_classes)

  batch = random_batch(config, per_replica_batch, num_classes, config.train.seed)
  dataset = strategy.distribute_datasets_from_function(
      lambda context: tf.data.Dataset.from_tensors(batch).repeat())
  iterator = iter(dataset)
  one_step = tf.constant(1, tf.int32)

  common.reset_peak_rss()
  train_loop(iterator, tf.constant(max(1, warmup_steps), tf.int32)).numpy()
  durations = common.time_calls(lambda: train_loop(iterator, one_step).numpy(), steps)
  peak_rss = common.peak_rss_mb()
  step_seconds = common.median(durations)
  images_per_sec = global_batch / step_seconds

  # FLOPs: one image's forward (training=False: the same convs and matmuls).
  image = tf.zeros([1, config.data.image_size, config.data.image_size, 3])
  forward = common.forward_flops(lambda x: model(x, training=False), image)
  views = 2 if config.train.train_mode == 'pretrain' else 1
  model_flops_per_image = common.TRAIN_FLOPS_PER_FORWARD_FLOP * views * forward

  matmul_fp32 = common.best_matmul_flops_per_sec(matmul_sizes, tf.float32)
  matmul_bf16 = common.best_matmul_flops_per_sec(matmul_sizes, tf.bfloat16)
  bf16 = config.train.mixed_precision == 'bfloat16'
  achieved = images_per_sec * model_flops_per_image
  return {
      'images_per_sec': images_per_sec,
      'model_flops_per_image': model_flops_per_image,
      'matmul_flops_per_sec_fp32': matmul_fp32,
      'matmul_flops_per_sec_bf16': matmul_bf16,
      'mfu': achieved / (matmul_bf16 if bf16 else matmul_fp32),
      'peak_rss_mb': peak_rss,
      'mfu_vs_fp32_matmul': achieved / matmul_fp32,
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
          'jit_compile': config.train.jit_compile,
          'global_bn': config.model.global_bn,
          'fused_batch_norm': fast_batch_norm.fused_batch_norm_enabled(),
          'replicas': num_replicas,
          'steps': steps,
      },
      'load_average_1min': common.load_average(),
  }


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not FLAGS.model_dir:  # Required by the config; nothing is written there.
    FLAGS.model_dir = tempfile.mkdtemp(prefix='bench_train_step_')
  if not FLAGS.train_steps:
    FLAGS.train_steps = FLAGS.bench_warmup_steps + FLAGS.bench_steps
  try:
    config = simclr_flags.config_from_flags(FLAGS)
    if FLAGS.bench_steps < 1 or FLAGS.bench_warmup_steps < 0:
      raise ValueError('--bench_steps must be >= 1 and --bench_warmup_steps >= 0.')
    matmul_sizes = [int(size) for size in FLAGS.bench_matmul_sizes]
    strategy = strategy_lib.create_strategy(config.infra)
  except ValueError as error:
    sys.exit(f'error: {error}')
  fast_batch_norm.set_fused_batch_norm_enabled(FLAGS.bench_fused_batch_norm)
  result = run_benchmark(config, strategy, num_classes=FLAGS.bench_num_classes,
                         steps=FLAGS.bench_steps, warmup_steps=FLAGS.bench_warmup_steps,
                         matmul_sizes=matmul_sizes)
  print(f"{result['images_per_sec']:.2f} images/s "
        f"({result['step_seconds_median']:.3f} s/step median of {FLAGS.bench_steps}), "
        f"{result['model_flops_per_image'] / 1e9:.2f} GFLOP/image-step, "
        f"{result['model_flops_per_sec'] / 1e9:.1f} GFLOP/s; matmul "
        f"fp32 {result['matmul_flops_per_sec_fp32'] / 1e9:.1f}, "
        f"bf16 {result['matmul_flops_per_sec_bf16'] / 1e9:.1f} GFLOP/s; "
        f"MFU {result['mfu']:.3f}; peak RSS {result['peak_rss_mb']:.0f} MiB; "
        f"load {result['load_average_1min']:.1f}", flush=True)
  print(json.dumps(result, sort_keys=True), flush=True)


if __name__ == '__main__':
  app.run(main)
