"""A run's input functions, from its `Config`: the one place that turns a config into
the `build_input_fn` calls of training, evaluation, the kNN monitor and the scripts.

Each returns a function for `strategy.distribute_datasets_from_function` yielding
per-replica batches of {'image', 'label' (one-hot), 'mask'} (see `build_input_fn`).
"""

from __future__ import annotations

from typing import Callable, Optional

import tensorflow as tf

from tf_simclr import config as config_lib
from tf_simclr.data.datasets import build_input_fn
from tf_simclr.data.datasets import DatasetInfo
from tf_simclr.data.datasets import get_dataset_info

InputFn = Callable[[Optional[tf.distribute.InputContext]], tf.data.Dataset]


def train_input_fn(config: config_lib.Config) -> InputFn:
  """The training split, augmented and repeated (two views when pretraining)."""
  return build_input_fn(
      config.data, split=config.data.train_split, is_training=True,
      train_mode=config.train.train_mode,
      global_batch_size=config.train.train_batch_size, seed=config.train.seed)


def eval_input_fn(config: config_lib.Config, *, split: Optional[str] = None,
                  two_views: bool = False) -> InputFn:
  """One unaugmented pass (centre crop as at eval) over `split` (default: the eval
  split) in padded batches of `--eval_batch_size`; or, with `two_views`, augmented
  pairs of views for the contrastive eval metrics."""
  return build_input_fn(
      config.data, split=config.data.eval_split if split is None else split,
      is_training=two_views, train_mode='pretrain' if two_views else 'finetune',
      global_batch_size=config.train.eval_batch_size, seed=config.train.seed)


def dataset_info(config: config_lib.Config, with_eval: Optional[bool] = None) -> DatasetInfo:
  """`get_dataset_info(config.data)`: example counts and classes of the run's splits.

  By default the eval split is only looked at when something reads it: --mode=eval
  or train_then_eval, or the kNN monitor while pretraining (--mode=train alone
  leaves num_eval_examples 0).
  """
  if with_eval is None:
    with_eval = config.train.mode != 'train' or (
      config.knn.knn_every_steps > 0 and config.train.train_mode == 'pretrain')
  return get_dataset_info(config.data, with_eval=with_eval)
