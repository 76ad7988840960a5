"""Tiny configs and fixed in-memory data for the training-loop tests.

The data are pre-augmented: the same global batches in the same order whatever the
number of replicas, so single-device and multi-replica runs can be compared exactly.
Replica r of R gets rows r*b..(r+1)*b-1 of each global batch (b = B / R) of both
views, stacked view 1 then view 2 as the data module does.

Also the runner of the multi-replica comparisons' subprocesses (logical CPU devices
and MultiWorkerMirroredStrategy must be set up before any TF op, so each run is a
fresh process): `train_fixed_batches` for the scripts, `run_together` and
`worker_jobs` for the tests.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import socket
import subprocess
import sys
from typing import Any, Callable

import numpy as np
import pytest
import tensorflow as tf

from tf_simclr import config as config_lib

NUM_CLASSES = 10


@dataclasses.dataclass(frozen=True)
class Sizes:
  num_train_examples: int
  num_eval_examples: int
  num_classes: int = NUM_CLASSES


def tiny_config(model_dir: str, **train_fields: Any) -> config_lib.Config:
  """ResNet-18, 16 px, global batch 8, LARS, global BN."""
  train = dict(train_batch_size=8, train_steps=3, eval_batch_size=8,
               checkpoint_steps=3, model_dir=model_dir, seed=1)
  train.update(train_fields)
  return config_lib.Config(
      model=config_lib.ModelConfig(resnet_depth=18, proj_out_dim=16, global_bn=True),
      data=config_lib.DataConfig(dataset='synthetic', image_size=16),
      optim=config_lib.OptimConfig(optimizer='lars', learning_rate=0.5, warmup_epochs=0.0,
                                   weight_decay=1e-4),
      train=config_lib.TrainConfig(**train),
      export=config_lib.ExportConfig(export_hub_module='never'))


def global_batches(num_batches: int, global_batch_size: int, image_size: int,
                   seed: int = 0) -> list[dict[str, np.ndarray]]:
  """Fixed global batches: 'view1', 'view2' [B, H, W, 3] in [0, 1], 'label' [B, C]."""
  rng = np.random.default_rng(seed)
  batches = []
  for _ in range(num_batches):
    shape = (global_batch_size, image_size, image_size, 3)
    labels = rng.integers(0, NUM_CLASSES, size=global_batch_size)
    batches.append({
        'view1': rng.uniform(size=shape).astype(np.float32),
        'view2': rng.uniform(size=shape).astype(np.float32),
        'label': np.eye(NUM_CLASSES, dtype=np.float32)[labels],
    })
  return batches


def make_input_fn(batches: list[dict[str, np.ndarray]], pretrain: bool = True
                  ) -> Callable[[tf.distribute.InputContext], tf.data.Dataset]:
  """An input_fn over fixed global batches, repeated, sliced per replica."""

  def input_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
    replicas_here = context.num_replicas_in_sync // context.num_input_pipelines
    global_size = batches[0]['label'].shape[0]
    local = global_size // context.num_replicas_in_sync
    pipeline_rows = local * replicas_here
    start = context.input_pipeline_id * pipeline_rows
    images, labels = [], []
    for batch in batches:
      for replica in range(replicas_here):  # Consecutive elements go to local replicas.
        rows = slice(start + replica * local, start + (replica + 1) * local)
        view1, view2 = batch['view1'][rows], batch['view2'][rows]
        # [2b, H, W, 3]: view 1 rows, then view 2 rows (pretrain); view 1 alone otherwise.
        images.append(np.concatenate([view1, view2]) if pretrain else view1)
        labels.append(batch['label'][rows])
    dataset = tf.data.Dataset.from_tensor_slices({
        'image': np.stack(images), 'label': np.stack(labels),
        'mask': np.ones((len(labels), local), np.float32)})
    return dataset.repeat()

  return input_fn


def eval_input_fn(num_examples: int, global_batch_size: int, image_size: int,
                  seed: int = 5) -> tuple[Callable[..., tf.data.Dataset], np.ndarray, np.ndarray]:
  """A finite eval input_fn padding the last batch with mask 0; also returns the data."""
  rng = np.random.default_rng(seed)
  images = rng.uniform(size=(num_examples, image_size, image_size, 3)).astype(np.float32)
  labels = np.eye(NUM_CLASSES, dtype=np.float32)[rng.integers(0, NUM_CLASSES, num_examples)]

  def input_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
    local = context.get_per_replica_batch_size(global_batch_size)
    padded = -(-num_examples // global_batch_size) * global_batch_size
    pad = padded - num_examples
    all_images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], np.float32)])
    all_labels = np.concatenate([labels, np.zeros((pad, NUM_CLASSES), np.float32)])
    mask = np.concatenate([np.ones(num_examples), np.zeros(pad)]).astype(np.float32)
    dataset = tf.data.Dataset.from_tensor_slices(
        {'image': all_images, 'label': all_labels, 'mask': mask})
    dataset = dataset.batch(local).shard(context.num_input_pipelines,
                                         context.input_pipeline_id)
    return dataset

  return input_fn, images, labels


def weights_of(model: Any) -> dict[str, np.ndarray]:
  """{variable path: value} of all model weights."""
  return {variable.path: np.asarray(variable.numpy()) for variable in model.weights}


# ---------------------------------------------------------------------------
# The multi-replica comparisons (tests/test_distributed_train.py, tests/test_jit.py).

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
NUM_STEPS = 3
GLOBAL_BATCH = 8
IMAGE_SIZE = 16
Jobs = dict[str, tuple[list[str], dict[str, str]]]


def train_fixed_batches(strategy: tf.distribute.Strategy, model_dir: str,
                        **train_fields: Any) -> dict[str, np.ndarray]:
  """Trains `tiny_config` NUM_STEPS steps on fixed global batches under `strategy`;
  returns the final checkpoint's model and optimizer tensors."""
  from tf_simclr import train as train_lib  # pylint: disable=g-import-not-at-top
  config = tiny_config(model_dir, train_steps=NUM_STEPS, checkpoint_steps=NUM_STEPS,
                       train_batch_size=GLOBAL_BATCH, **train_fields)
  batches = global_batches(NUM_STEPS, GLOBAL_BATCH, IMAGE_SIZE)
  result = train_lib.train(config, strategy, input_fn=make_input_fn(batches),
                           data_sizes=Sizes(GLOBAL_BATCH * NUM_STEPS, 8), verbose=False)
  assert result['global_step'] == NUM_STEPS, result
  return checkpoint_weights(os.path.join(model_dir, f'ckpt-{NUM_STEPS}'))


def checkpoint_weights(checkpoint_path: str) -> dict[str, np.ndarray]:
  """Model and optimizer tensors of a checkpoint (input state and counters left out)."""
  reader = tf.train.load_checkpoint(checkpoint_path)
  return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()
          if not key.startswith(('input_iterators', 'save_counter', '_CHECKPOINTABLE'))}


def free_ports(count: int) -> list[int]:
  sockets = [socket.socket() for _ in range(count)]
  try:
    for sock in sockets:
      sock.bind(('127.0.0.1', 0))
    return [sock.getsockname()[1] for sock in sockets]
  finally:
    for sock in sockets:
      sock.close()


def worker_jobs(args: list[str], count: int = 2) -> Jobs:
  """`count` MultiWorkerMirroredStrategy workers on 127.0.0.1, each run with `args`."""
  cluster = {'worker': [f'127.0.0.1:{port}' for port in free_ports(count)]}
  return {f'worker{index}': (args, {
      'TF_CONFIG': json.dumps({'cluster': cluster, 'task': {'type': 'worker', 'index': index}})
  }) for index in range(count)}


def run_together(script: str, jobs: Jobs, out_dir: pathlib.Path, timeout: float) -> None:
  """Starts `python script ARGS` of every job at once (logs in out_dir/<name>.log),
  waits at most `timeout` s for each, kills leftovers; fails with the log tail of a
  job that did not exit 0."""
  processes = {}
  try:
    for name, (args, env_updates) in jobs.items():
      env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', **env_updates)
      if 'TF_CONFIG' not in env_updates:
        env.pop('TF_CONFIG', None)
      log = open(out_dir / f'{name}.log', 'w')
      processes[name] = (subprocess.Popen([sys.executable, script, *args], cwd=REPO_ROOT,
                                          env=env, stdout=log, stderr=subprocess.STDOUT), log)
    for name, (process, _) in processes.items():
      try:
        code = process.wait(timeout=timeout)
      except subprocess.TimeoutExpired:
        code = 'timeout'
      if code != 0:
        pytest.fail(f'{name} exited with {code}:\n'
                    + (out_dir / f'{name}.log').read_text()[-3000:])
  finally:
    for process, log in processes.values():
      if process.poll() is None:
        process.kill()
        process.wait()
      log.close()


def related_views_training(mixed_precision: str, train_steps: int,
                           **train_fields: Any) -> tuple[config_lib.Config, Any, Any, Any]:
  """(config, train_loop, iterator, optimizer): tf_simclr.train's real loop (through
  bench/common) for a tiny ResNet-18 pretraining on one fixed batch of 8 whose two views
  are related (view 2 = mirrored view 1 plus a little noise), so the contrastive loss
  falls. Same initial weights for every call; `train_steps` sets the cosine schedule."""
  import tempfile  # pylint: disable=g-import-not-at-top
  from bench import common  # pylint: disable=g-import-not-at-top
  config = config_lib.Config(
      model=config_lib.ModelConfig(resnet_depth=18, proj_out_dim=32),
      data=config_lib.DataConfig(image_size=8),
      optim=config_lib.OptimConfig(learning_rate=0.3, warmup_epochs=0),
      train=config_lib.TrainConfig(train_batch_size=8, train_steps=train_steps,
                                   lineareval_while_pretraining=False,
                                   mixed_precision=mixed_precision,
                                   model_dir=tempfile.mkdtemp(), **train_fields))
  tf.keras.utils.set_random_seed(0)  # Same initial weights in every run.
  strategy = tf.distribute.get_strategy()
  train_loop, _, optimizer = common.build_train_loop(config, strategy, num_classes=10)
  batch = common.random_batch(config, 8, num_classes=10, seed=1)
  # [2b, H, W, 3], view 1 rows first.
  view1 = batch['image'][:8]
  noise = tf.random.stateless_uniform(view1.shape, seed=[2, 3], maxval=0.1)
  batch['image'] = tf.concat([view1, 0.9 * view1[:, :, ::-1] + noise], 0)
  iterator = iter(tf.data.Dataset.from_tensors(batch).repeat())
  return config, train_loop, iterator, optimizer
