"""Batch norm with batch statistics in C++ for float32 training on CPUs, built on first use.

TensorFlow's fused batch norm on a CPU runs oneDNN's kernel (or Eigen's), whose forward
pass in training takes 3-5x the time of a pass over memory on the AVX2-only EPYC
(2026-12-03; 64 x 32 x 32 x 256 floats: 28.6 ms against 8.6 ms for
`native_batch_norm.cc`; docs/speed.md). `native_batch_norm.cc` computes the forward pass
in two passes over x (per-channel sums in one, `y = (x - mean) * a + offset` in the other) and the backward pass in two passes over (x, dy),
with float partial sums of at most 64 rows accumulated in double.

The source is compiled here on first use with the host's C++ compiler (`$CXX` or `g++`),
TensorFlow's own flags (`tf.sysconfig`) and `-O3 -march=native`, into a cache folder
keyed by the source, the TensorFlow version and the CPU (`$TF_SIMCLR_NATIVE_CACHE`, else
`~/.cache/tf_simclr/native`; a local folder: `dlopen` needs one), about 13 s once per
machine. Where it cannot be built or loaded (no compiler, another OS) or
`TF_SIMCLR_NATIVE_KERNELS=0` is set, `usable()` is False and the layer keeps TF's fused
kernel: same results, to float32 rounding.

The ops run on CPUs only and have no XLA kernel: `fast_batch_norm` calls them only when
`usable()` (enabled, no GPU/TPU, float32); `kernel_choice.choose_for_run` turns them off
under --jit_compile and --cpu_kernels=stock, and the exporter traces without them, so no
SavedModel contains them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
from typing import Any, Iterator, Optional

import tensorflow as tf

from tf_simclr import precision

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'native_batch_norm.cc')
DISABLE_ENV = 'TF_SIMCLR_NATIVE_KERNELS'  # '0': never build or use them.
CACHE_ENV = 'TF_SIMCLR_NATIVE_CACHE'
BUILD_SECONDS_LIMIT = 300

_lock = threading.RLock()
_enabled = True
_module: Optional[Any] = None
_failure: Optional[str] = None  # Why the ops are unavailable (None: not tried or loaded).
_note = ''                      # One line on how the ops were obtained.


def set_enabled(enabled: bool) -> None:
  """Turns the native path on (default) or off; read when a layer is traced."""
  global _enabled
  _enabled = bool(enabled)


def enabled() -> bool:
  return _enabled


@contextlib.contextmanager
def disabled() -> Iterator[None]:
  """Traces without the native ops inside (e.g. for a SavedModel), restored on exit."""
  global _enabled
  previous, _enabled = _enabled, False
  try:
    yield
  finally:
    _enabled = previous


@tf.autograph.experimental.do_not_convert
def usable(dtype: tf.DType = tf.float32) -> bool:
  """Whether a training-mode BN of `dtype` computes with the native ops here and now."""
  if (not _enabled or dtype != tf.float32 or os.environ.get(DISABLE_ENV) == '0' or
      precision.accelerator_present()):
    return False
  return load() is not None


def status() -> str:
  """One line: how the native ops were obtained, or why they are not used."""
  if os.environ.get(DISABLE_ENV) == '0':
    return f'native batch norm off ({DISABLE_ENV}=0)'
  if _failure:
    return f'native batch norm unavailable ({_failure}); TF\'s fused kernel instead'
  return _note or 'native batch norm not loaded'


def _build_key(compiler: str) -> str:
  digest = hashlib.sha256()
  with open(SOURCE, 'rb') as source:
    digest.update(source.read())
  for part in (tf.__version__, ' '.join(tf.sysconfig.get_compile_flags()),
               ' '.join(tf.sysconfig.get_link_flags()), compiler,
               ' '.join(sorted(precision.read_cpu_flags() or ())) or platform.machine()):
    digest.update(part.encode())
  return digest.hexdigest()[:16]


def cache_dir() -> str:
  return os.environ.get(CACHE_ENV) or os.path.join(
      os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache'),
      'tf_simclr', 'native')


def _compile(compiler: str, target: str) -> None:
  """Compiles SOURCE into `target` (atomically: a temp file, then a rename)."""
  folder = os.path.dirname(target)
  os.makedirs(folder, exist_ok=True)
  handle, temp_path = tempfile.mkstemp(suffix='.so', dir=folder)
  os.close(handle)
  command = [compiler, '-std=c++17', '-O3', '-march=native', '-shared', '-fPIC', '-w',
             SOURCE, '-o', temp_path, *tf.sysconfig.get_compile_flags(),
             *tf.sysconfig.get_link_flags()]
  try:
    result = subprocess.run(command, capture_output=True, text=True,
                            timeout=BUILD_SECONDS_LIMIT, check=False)
    if result.returncode:
      lines = [line for line in result.stderr.splitlines() if 'error' in line]
      raise RuntimeError(f'{compiler} failed: {(lines or result.stderr.splitlines() or ["?"])[0]}')
    os.replace(temp_path, target)
  finally:
    if os.path.exists(temp_path):
      os.remove(temp_path)


@tf.autograph.experimental.do_not_convert
def load() -> Optional[Any]:
  """The ops' module, compiled on first use; None where that fails (see `status()`)."""
  global _module, _failure, _note
  if _module is not None or _failure is not None:
    return _module
  with _lock:
    if _module is not None or _failure is not None:
      return _module
    compiler = shutil.which(os.environ.get('CXX', 'g++'))
    if compiler is None:
      _failure = f'no C++ compiler: {os.environ.get("CXX", "g++")} not on PATH'
      return None
    try:
      target = os.path.join(cache_dir(), f'native_batch_norm_{_build_key(compiler)}.so')
      start = time.perf_counter()
      built = not os.path.exists(target)
      if built:
        _compile(compiler, target)
      module = tf.load_op_library(target)
      _register_gradient()
    except (OSError, RuntimeError, subprocess.SubprocessError, tf.errors.OpError) as error:
      _failure = str(error).splitlines()[0] if str(error) else type(error).__name__
      return None
    how = f'built in {time.perf_counter() - start:.0f} s' if built else 'cached'
    _note = f'native batch norm: {how} ({target})'
    _module = module
    return _module


def _register_gradient() -> None:
  try:
    tf.RegisterGradient('NativeBatchNormForward')(_forward_gradient)
  except KeyError:  # Registered already (the module reloaded in this process).
    pass


def _forward_gradient(op: tf.Operation, dy: tf.Tensor, *unused_statistics_gradients: Any
                      ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """dx, dscale, doffset. As TF's fused BN, the mean and variance outputs (used for the
  moving statistics) are not differentiated through."""
  x, scale, _ = op.inputs
  _, mean, variance = op.outputs
  return _module.native_batch_norm_backward(  # type: ignore[union-attr]
      dy, x, scale, mean, variance, epsilon=op.get_attr('epsilon'))


@tf.autograph.experimental.do_not_convert
def batch_norm_training(x: tf.Tensor, scale: tf.Tensor, offset: tf.Tensor,
                        epsilon: float) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """Batch norm with the batch's statistics over every axis but the last.

  Args:
    x: [..., C] float32.
    scale, offset: [C] float32 (gamma, beta).
    epsilon: added to the variance.

  Returns:
    (y = (x - mean) / sqrt(variance + epsilon) * scale + offset, same shape as x;
     mean [C]; the biased variance [C]). Differentiable in x, scale and offset.

  Raises:
    RuntimeError: the ops are unavailable (check `usable()` first).
  """
  module = load()
  if module is None:
    raise RuntimeError(status())
  return tuple(module.native_batch_norm_forward(x, scale, offset, epsilon=epsilon))
