"""Consumers of one export, each run as its own process by tests/test_hub_export.py."""

from typing import Any, Callable

import numpy as np


def bad_inputs(images: np.ndarray) -> dict[str, np.ndarray]:
  """Inputs the export must refuse with its own message, made from good `images`."""
  return {'one_channel': images[..., :1],
          'four_channels': np.concatenate([images, images[..., :1]], axis=-1),
          'pixels_0_255': images * np.float32(255),
          'mean_std': (images - np.float32(0.45)) / np.float32(0.225)}


def error_of(function: Callable[[np.ndarray], Any], images: np.ndarray) -> str:
  """'<type>: <message>' of what `function(images)` raises, or 'no error'."""
  try:
    function(images)
  except Exception as error:  # pylint: disable=broad-except
    return f'{type(error).__name__}: {error}'
  return 'no error'
