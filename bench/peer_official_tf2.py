r"""The official google-research/simclr tf2 training step, timed on this machine.

    git clone https://github.com/google-research/simclr /tmp/simclr   # not vendored here
    python bench/peer_official_tf2.py --official_tf2_dir=/tmp/simclr/tf2 --depth=18 --stem=cifar
    python bench/peer_official_tf2.py --official_tf2_dir=/tmp/simclr/tf2 --depth=50 --stem=imagenet

Imports the official code from `--official_tf2_dir` (its `run.py` defines the flags; its
`model.Model`, `objective`, `metrics` and LARS are used as they are) under tf_keras
(`TF_USE_LEGACY_KERAS=1`, as that code needs), and times what its `single_step` computes
inside its `train_multiple_steps` loop under `MirroredStrategy`, its non-TPU strategy:
the model on the two views (concatenated on channels, as its input pipeline yields
them), the contrastive loss, the supervised head's loss (`lineareval_while_pretraining`
is on by default), its weight decay, the gradient and the LARS update, plus its metric
updates. Its default flags otherwise (global BN on, LARS, temperature 0.1), except
`--use_blur=false` (its in-model blur is data augmentation; our step does not blur
either: blur is in our input pipeline) and batch / size / depth from this script.
Nothing of that code is copied here; the loop body below only calls it, in the same
order as its `single_step`.

`--stem=imagenet` at 32 px replaces the official `cifar_stem=image_size <= 32` rule
(the only way to get the ImageNet stem at 32 px there). oneDNN kernels are on by default
(`--onednn=false` gives TensorFlow's Eigen kernels, the official code's default on
CPUs where TF leaves oneDNN off).

Like bench/train_step.py it times steps on one fixed random batch and measures the
float32 [n, n] matmul rate in the same process. The last line is one JSON object:
images_per_sec (median step), images_per_sec_best, matmul_flops_per_sec_fp32, onednn,
and the config.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys


def _parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--official_tf2_dir', required=True,
                      help='The tf2/ folder of a google-research/simclr checkout.')
  parser.add_argument('--depth', type=int, default=18)
  parser.add_argument('--stem', choices=['cifar', 'imagenet'], default='cifar')
  parser.add_argument('--batch_size', type=int, default=64)
  parser.add_argument('--image_size', type=int, default=32)
  parser.add_argument('--num_classes', type=int, default=1000)
  parser.add_argument('--steps', type=int, default=8, help='Timed steps.')
  parser.add_argument('--warmup_steps', type=int, default=2)
  parser.add_argument('--profile_steps', type=int, default=0,
                      help='After timing, trace this many steps with TF\'s profiler and '
                           'print the time per op type (as bench/op_profile.py does).')
  parser.add_argument('--onednn', type=lambda text: text.lower() in ('1', 'true', 'yes'),
                      default=True)
  return parser.parse_args()


def main() -> None:
  args = _parse_args()
  run_py = os.path.join(args.official_tf2_dir, 'run.py')
  if not os.path.isfile(run_py):
    sys.exit(f'error: --official_tf2_dir={args.official_tf2_dir} has no run.py; pass the '
             'tf2/ folder of a google-research/simclr checkout.')
  # Before TensorFlow is imported: tf.keras must be tf_keras for the official code.
  os.environ['TF_USE_LEGACY_KERAS'] = '1'
  os.environ['TF_ENABLE_ONEDNN_OPTS'] = '1' if args.onednn else '0'
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  sys.path.insert(0, os.path.abspath(args.official_tf2_dir))
  repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  sys.path.insert(1, repo_root)

  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import run as official_run  # pylint: disable=g-import-not-at-top  (defines the flags)
  import metrics as official_metrics  # pylint: disable=g-import-not-at-top
  import model as official_model  # pylint: disable=g-import-not-at-top
  import objective as official_objective  # pylint: disable=g-import-not-at-top
  from bench import common  # pylint: disable=g-import-not-at-top

  flags = official_run.FLAGS
  flags([sys.argv[0], f'--resnet_depth={args.depth}', f'--image_size={args.image_size}',
         f'--train_batch_size={args.batch_size}', '--train_mode=pretrain', '--use_blur=false',
         '--use_tpu=false'])
  original_resnet = official_model.resnet.resnet

  @functools.wraps(original_resnet)
  def resnet_with_chosen_stem(*resnet_args, **resnet_kwargs):
    resnet_kwargs['cifar_stem'] = args.stem == 'cifar'
    return original_resnet(*resnet_args, **resnet_kwargs)

  official_model.resnet.resnet = resnet_with_chosen_stem

  strategy = tf.distribute.MirroredStrategy()
  with strategy.scope():
    model = official_model.Model(args.num_classes)
    learning_rate = official_model.WarmUpAndCosineDecay(flags.learning_rate, 50000)
    optimizer = official_model.build_optimizer(learning_rate)
    contrast_loss = tf.keras.metrics.Mean('train/contrast_loss')
    contrast_acc = tf.keras.metrics.Mean('train/contrast_acc')
    contrast_entropy = tf.keras.metrics.Mean('train/contrast_entropy')
    supervised_loss_metric = tf.keras.metrics.Mean('train/supervised_loss')
    supervised_acc = tf.keras.metrics.Mean('train/supervised_acc')

  def single_step(features, labels):  # The official single_step's computation.
    with tf.GradientTape() as tape:
      projection, supervised = model(features, training=True)
      loss, logits_con, labels_con = official_objective.add_contrastive_loss(
          projection, hidden_norm=flags.hidden_norm, temperature=flags.temperature,
          strategy=strategy)
      official_metrics.update_pretrain_metrics_train(
          contrast_loss, contrast_acc, contrast_entropy, loss, logits_con, labels_con)
      both_views_labels = tf.concat([labels, labels], 0)
      supervised_loss = official_objective.add_supervised_loss(
          labels=both_views_labels, logits=supervised)
      loss += supervised_loss
      official_metrics.update_finetune_metrics_train(
          supervised_loss_metric, supervised_acc, supervised_loss, both_views_labels,
          supervised)
      loss += official_model.add_weight_decay(model, adjust_per_optimizer=True)
      loss = loss / strategy.num_replicas_in_sync
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))

  generator = tf.random.Generator.from_seed(0)
  images = generator.uniform([args.batch_size, args.image_size, args.image_size, 6])
  labels = tf.one_hot(generator.uniform([args.batch_size], 0, args.num_classes, tf.int32),
                      args.num_classes)
  dataset = tf.data.Dataset.from_tensors((images, labels)).repeat()
  iterator = iter(strategy.experimental_distribute_dataset(dataset))

  with strategy.scope():
    @tf.function
    def train_multiple_steps(iterator, steps_per_loop):
      for _ in tf.range(steps_per_loop):
        with tf.name_scope(''):
          features, batch_labels = next(iterator)
          strategy.run(single_step, (features, batch_labels))
      return optimizer.iterations

  one = tf.constant(1)
  for _ in range(max(1, args.warmup_steps)):
    train_multiple_steps(iterator, one).numpy()
  matmul_before = common.best_matmul_flops_per_sec([2048, 4096])
  seconds = common.time_calls(lambda: train_multiple_steps(iterator, one).numpy(), args.steps)
  matmul_after = common.best_matmul_flops_per_sec([2048, 4096])
  result = {
      'images_per_sec': args.batch_size / statistics.median(seconds),
      'images_per_sec_best': args.batch_size / min(seconds),
      'step_seconds': seconds,
      'matmul_flops_per_sec_fp32': max(matmul_before, matmul_after),
      'onednn': common.onednn_enabled(),
      'tensorflow': tf.__version__,
      'config': {'depth': args.depth, 'stem': args.stem, 'batch_size': args.batch_size,
                 'image_size': args.image_size, 'num_classes': args.num_classes,
                 'global_bn': flags.global_bn, 'optimizer': flags.optimizer,
                 'steps': args.steps},
  }
  print(f'official tf2 step, ResNet-{args.depth} {args.stem} stem b{args.batch_size} '
        f'{args.image_size}px: {result["images_per_sec"]:.2f} images/s (median of '
        f'{args.steps}; best {result["images_per_sec_best"]:.2f}); matmul fp32 '
        f'{result["matmul_flops_per_sec_fp32"] / 1e9:.1f} GFLOP/s; oneDNN '
        f'{"on" if result["onednn"] else "off"}', flush=True)
  if args.profile_steps:
    result['profile'] = common.profile_op_types(
        lambda: train_multiple_steps(iterator, one).numpy(), args.profile_steps)
  print(json.dumps(result), flush=True)


if __name__ == '__main__':
  main()
