"""TensorFlow's device start-up without its `failed call to cuInit` line on CPU machines.

On a machine with no NVIDIA driver, the first device lookup of TensorFlow 2.21 logs

    E0000 ... cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: ...

at ERROR level: it says nothing but "there is no GPU". `TF_CPP_MIN_LOG_LEVEL=3` would
hide it, but also every later error (TensorFlow reads the level once), and
`CUDA_VISIBLE_DEVICES=''` does not stop the call. `initialize_devices` instead runs
that first lookup with the process's stderr going through a filter that drops only
lines containing `failed call to cuInit`, and only when no driver is installed (no
`/dev/nvidiactl` and no loadable `libcuda.so.1`); all other lines pass through as they
come. With `TF_CPP_MIN_LOG_LEVEL=0` (every log asked for) nothing is dropped.
`CUDA_VISIBLE_DEVICES` and `TF_CPP_MIN_LOG_LEVEL` are never changed.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading
from typing import Iterator

CUINIT_LINE = b'failed call to cuInit'


def nvidia_driver_present() -> bool:
  """Whether an NVIDIA driver is installed: `/dev/nvidiactl` or a loadable libcuda."""
  if os.path.exists('/dev/nvidiactl'):
    return True
  try:
    ctypes.CDLL('libcuda.so.1')
  except OSError:
    return False
  return True


@contextlib.contextmanager
def drop_stderr_lines(marker: bytes) -> Iterator[None]:
  """Within the block, lines written to file descriptor 2 (by Python or C++) that
  contain `marker` are dropped; the others go to the real stderr as they come."""
  sys.stderr.flush()
  real_stderr = os.dup(2)
  read_end, write_end = os.pipe()

  def forward() -> None:
    with os.fdopen(read_end, 'rb') as pipe:
      for line in pipe:
        if marker in line:
          continue
        try:
          while line:
            line = line[os.write(real_stderr, line):]
        except OSError:
          pass  # Keep draining the pipe so that writers never block.

  thread = threading.Thread(target=forward, name='stderr-filter', daemon=True)
  thread.start()
  os.dup2(write_end, 2)
  os.close(write_end)
  try:
    yield
  finally:
    sys.stderr.flush()
    os.dup2(real_stderr, 2)  # Closes the pipe's last write end: the thread sees EOF.
    thread.join(timeout=10)
    os.close(real_stderr)


def initialize_devices() -> None:
  """Lists TensorFlow's physical devices (which initialises them, CUDA included),
  dropping the `failed call to cuInit` line when no NVIDIA driver is installed.

  Call it before the first TensorFlow op (it does not start TF's runtime, so logical
  device configuration and multi-worker set-up still work after it).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if os.environ.get('TF_CPP_MIN_LOG_LEVEL') == '0' or nvidia_driver_present():
    tf.config.list_physical_devices()
    return
  with drop_stderr_lines(CUINIT_LINE):
    tf.config.list_physical_devices()
