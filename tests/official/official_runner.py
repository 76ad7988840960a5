"""Runs google-research/simclr tf2 functions in a subprocess and collects their outputs.

Used by tests/official/: `run_official(script, official_dir, out_path, *args)` starts
`python script official_dir out_path *args` with TF_USE_LEGACY_KERAS=1 (the official
code needs tf_keras) and the official folder on sys.path; the script writes an .npz.

Inside a script, `ServedRandomness` replaces TensorFlow's stateful random ops (not the
official code) with values served from a queue, so that an official function runs with
given draws: `tf.random.uniform` and the `random_ops.random_uniform` that tf.image's
random_* functions call return `minval + u * (maxval - minval)` for the next served
u (TensorFlow's own mapping of its raw draw), `tf.random.shuffle` returns the next
served permutation of its input, and `tf.image.sample_distorted_bounding_box` the next
served box. Each call is recorded (kind, minval, maxval, keyword arguments).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
from typing import Any

OFFICIAL_DIR = pathlib.Path(__file__).resolve().parents[3] / 'shared' / 'official-simclr-tf2'


def run_official(script: pathlib.Path, out_path: pathlib.Path, *args: str,
                 timeout: float = 900) -> None:
  """Runs `script` in a fresh Python with the official code importable; raises on failure."""
  env = dict(os.environ, TF_USE_LEGACY_KERAS='1', TF_CPP_MIN_LOG_LEVEL='2',
             CUDA_VISIBLE_DEVICES='')
  result = subprocess.run([sys.executable, str(script), str(OFFICIAL_DIR), str(out_path), *args],
                          env=env, capture_output=True, text=True, timeout=timeout)
  if result.returncode != 0:
    raise RuntimeError(f'{script.name} failed (exit {result.returncode}):\n{result.stderr[-4000:]}')


class ServedRandomness:
  """Serves given draws to TF's stateful random ops while active (see module docstring)."""

  def __init__(self, tf: Any):
    from tensorflow.python.ops import random_ops  # pylint: disable=import-outside-toplevel
    self._tf = tf
    self._random_ops = random_ops
    self.queue: list[Any] = []
    self.calls: list[tuple] = []
    self._saved: list[tuple[Any, str, Any]] = []

  def serve(self, *draws: Any) -> None:
    self.queue = list(draws)
    self.calls = []

  def _next(self, kind: str) -> Any:
    if not self.queue:
      raise RuntimeError(f'no served draw left for {kind}')
    return self.queue.pop(0)

  def uniform(self, shape, minval=0, maxval=None, dtype=None, seed=None, name=None):
    tf = self._tf
    del seed, name
    dtype = dtype or tf.float32
    minval = tf.convert_to_tensor(minval, dtype=dtype)
    maxval = tf.convert_to_tensor(1.0 if maxval is None else maxval, dtype=dtype)
    shape = [int(size) for size in tf.reshape(tf.convert_to_tensor(shape), [-1]).numpy()]
    raw = tf.reshape(tf.constant(self._next('uniform'), dtype), shape)
    self.calls.append(('uniform', float(minval.numpy()), float(maxval.numpy()), tuple(shape)))
    return raw * (maxval - minval) + minval  # TensorFlow's random_uniform mapping.

  def shuffle(self, value, seed=None, name=None):
    del seed, name
    self.calls.append(('shuffle',))
    return self._tf.gather(value, self._next('shuffle'))

  def box(self, image_size, bounding_boxes, seed=0, **kwargs):
    tf = self._tf
    del bounding_boxes, seed
    self.calls.append(('box', {key: value for key, value in kwargs.items() if key != 'name'}))
    offset_y, offset_x, height, width = [int(v) for v in self._next('box')]
    begin = tf.constant([offset_y, offset_x, 0], tf.int32)
    size = tf.constant([height, width, -1], tf.int32)
    del image_size
    return begin, size, tf.zeros([1, 1, 4])

  def __enter__(self) -> 'ServedRandomness':
    tf = self._tf
    for module, attribute, replacement in [(tf.random, 'uniform', self.uniform),
                                           (self._random_ops, 'random_uniform', self.uniform),
                                           (tf.random, 'shuffle', self.shuffle),
                                           (tf.image, 'sample_distorted_bounding_box', self.box)]:
      self._saved.append((module, attribute, getattr(module, attribute)))
      setattr(module, attribute, replacement)
    return self

  def __exit__(self, *exc_info: Any) -> None:
    for module, attribute, original in reversed(self._saved):
      setattr(module, attribute, original)
    self._saved = []

  def check_used_up(self) -> None:
    if self.queue:
      raise RuntimeError(f'{len(self.queue)} served draws were not used')
