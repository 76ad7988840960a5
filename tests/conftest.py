"""Shared test set-up: quiet TF logs, a path to the real CIFAR-10 folder."""

import os
import pathlib

import pytest

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import tf_simclr  # noqa: E402,F401  Before TensorFlow: the same oneDNN kernels as run.py.

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
CIFAR10_DIR = REPO_ROOT.parent / 'shared' / 'data' / 'cifar10'


@pytest.fixture
def cifar10_dir() -> pathlib.Path:
  """The real CIFAR-10 image folder in ../shared/data; skips when absent."""
  if not (CIFAR10_DIR / 'train').is_dir():
    pytest.skip(f'real CIFAR-10 folder not found at {CIFAR10_DIR}')
  return CIFAR10_DIR
