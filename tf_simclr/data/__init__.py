"""Augmentations (augment) and input pipelines (datasets)."""

from tf_simclr.data import augment
from tf_simclr.data import datasets
from tf_simclr.data.datasets import build_input_fn
from tf_simclr.data.datasets import DatasetInfo
from tf_simclr.data.datasets import get_dataset_info
from tf_simclr.data.datasets import num_eval_steps
