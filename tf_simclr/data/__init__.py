"""Augmentations (augment), input pipelines (datasets) and a run's input functions and
sizes (inputs)."""

from tf_simclr.data import augment
from tf_simclr.data import datasets
from tf_simclr.data.datasets import build_input_fn
from tf_simclr.data.datasets import DatasetInfo
from tf_simclr.data.datasets import get_dataset_info
from tf_simclr.data.datasets import num_eval_steps
from tf_simclr.data.inputs import dataset_info
from tf_simclr.data.inputs import eval_input_fn
from tf_simclr.data.inputs import train_input_fn
