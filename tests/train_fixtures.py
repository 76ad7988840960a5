"""Tiny configs and fixed in-memory data for the training-loop tests.

The data are pre-augmented: the same global batches in the same order whatever the
number of replicas, so single-device and multi-replica runs can be compared exactly.
Replica r of R gets rows r*b..(r+1)*b-1 of each global batch (b = B / R) of both
views, stacked view 1 then view 2 as the data module does.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np
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
