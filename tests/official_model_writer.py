r"""Writes a google-research/simclr tf2 model as its own run.py would, with random weights.

    TF_USE_LEGACY_KERAS=1 python tests/official_model_writer.py \
        --official_dir=../shared/official-simclr-tf2 --out_dir=/tmp/official_r18 \
        --num_classes=10 --image_size=32 -- --resnet_depth=18 --width_multiplier=1

Run it in a subprocess (it imports the official code, unmodified, under tf_keras). The
flags after `--` are the official run.py flags (`--resnet_depth`, `--width_multiplier`,
`--sk_ratio`, `--se_ratio`, `--image_size`, `--proj_out_dim`, `--num_proj_layers`,
`--ft_proj_selector`, `--train_mode`, ...). It builds the official `model.Model`, takes
one training step with the official LARS optimizer (so its slots and `global_step`
exist), then overwrites every model variable, BN moving statistics included, with
random values, and writes into `--out_dir`:

- `ckpt-1.*` + `checkpoint`: `tf.train.Checkpoint(model=, global_step=, optimizer=)`
  saved by a `tf.train.CheckpointManager`, as the official run.py's
  `try_restore_from_checkpoint` / training loop do;
- `saved_model/1/`: the official `build_saved_model(model)` exported with
  `tf.saved_model.save`, as its `save()` does;
- `reference.npz`: `inputs` [batch, size, size, 3] and the official SavedModel
  module's outputs (trainable=False, inference-mode BN) on them: `initial_conv`,
  `initial_max_pool`, `block_group1..4`, `final_avg_pool`, `proj_head_output`,
  `logits_sup`;
- `variables.json`: the number of model variables and their total size.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def _parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
  if '--' in argv:
    split = argv.index('--')
    own, official = argv[:split], argv[split + 1:]
  else:
    own, official = argv, []
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--official_dir', required=True)
  parser.add_argument('--out_dir', required=True)
  parser.add_argument('--num_classes', type=int, default=10)
  parser.add_argument('--image_size', type=int, default=32)
  parser.add_argument('--batch_size', type=int, default=2)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--no_saved_model', action='store_true')
  return parser.parse_args(own), official


def main(argv: list[str]) -> None:
  args, official_argv = _parse_args(argv)
  os.environ['TF_USE_LEGACY_KERAS'] = '1'
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  sys.path.insert(0, os.path.abspath(args.official_dir))
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import run as official_run  # pylint: disable=g-import-not-at-top  (defines the flags)
  import model as official_model  # pylint: disable=g-import-not-at-top

  flags = official_run.FLAGS
  flags([sys.argv[0], f'--image_size={args.image_size}', '--use_blur=false',
         '--use_tpu=false', f'--model_dir={args.out_dir}', *official_argv])
  tf.random.set_seed(args.seed)
  rng = np.random.RandomState(args.seed)

  model = official_model.Model(args.num_classes)
  learning_rate = 0.1
  optimizer = official_model.build_optimizer(learning_rate)
  size = args.image_size
  train_images = tf.constant(rng.uniform(0, 1, [2, size, size, 3]), tf.float32)
  with tf.GradientTape() as tape:
    projection, logits = model(train_images, training=True)
    loss = tf.reduce_mean(tf.square(logits))
    if projection is not None:
      loss += tf.reduce_mean(tf.square(projection))
  gradients = tape.gradient(loss, model.trainable_variables)
  optimizer.apply_gradients(zip(gradients, model.trainable_variables))

  # Random, non-trivial values everywhere (zero-init gammas, unit moving variances and
  # zero biases would hide a swapped mapping).
  total_size = 0
  for variable in model.variables:
    name = variable.name
    shape = variable.shape.as_list()
    total_size += int(np.prod(shape)) if shape else 1
    if 'moving_mean' in name or 'beta' in name or 'bias' in name:
      value = rng.normal(0.0, 0.1, shape)
    elif 'moving_variance' in name:
      value = rng.uniform(0.5, 1.5, shape)
    elif 'gamma' in name:
      value = rng.uniform(0.3, 1.0, shape)
    else:  # Kernels: the initializer's scale, new draws.
      value = variable.numpy() * rng.uniform(0.8, 1.2, shape)
    variable.assign(value.astype(np.float32))

  checkpoint = tf.train.Checkpoint(model=model, global_step=optimizer.iterations,
                                   optimizer=optimizer)
  manager = tf.train.CheckpointManager(checkpoint, directory=args.out_dir, max_to_keep=5)
  step = int(optimizer.iterations.numpy())
  manager.save(step)

  module = official_run.build_saved_model(model)
  inputs = rng.uniform(0, 1, [args.batch_size, size, size, 3]).astype(np.float32)
  outputs = module(tf.constant(inputs), trainable=False)
  reference = {name: value.numpy() for name, value in outputs.items()}
  reference['inputs'] = inputs
  if not args.no_saved_model:
    tf.saved_model.save(module, os.path.join(args.out_dir, 'saved_model', str(step)))
  np.savez(os.path.join(args.out_dir, 'reference.npz'), **reference)
  with open(os.path.join(args.out_dir, 'variables.json'), 'w') as json_file:
    json.dump({'num_variables': len(model.variables), 'total_size': total_size,
               'step': step}, json_file)


if __name__ == '__main__':
  main(sys.argv[1:])
