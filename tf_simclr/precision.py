"""Whether --mixed_precision=bfloat16 pays on this machine's CPU.

bfloat16 speeds a training step up only where the hardware computes in it faster than
in float32. On x86 CPUs that needs the `avx512_bf16` (AVX512-BF16 dot products) or
`amx_bf16` (AMX tiles) instructions; elsewhere TensorFlow/oneDNN emulates bf16 through
float32 conversions and the step gets slower, not faster (measured on an AVX2-only
machine, docs/speed.md). Having the instructions is not enough either: an Intel Xeon
with avx512_bf16 but no AMX ran bf16 convolutions and matmuls at 0.6x float32 (2026-12-02), in TF
and PyTorch alike. So a CPU-only run asking for bfloat16 runs float32, with one line
saying why, on a CPU without those flags or where a bf16 convolution was measured (once
per machine, cached; `kernel_choice.measured_bfloat16_speedup`) less than
MIN_BFLOAT16_SPEEDUP times as fast as float32, unless `--force_bfloat16` insists (for
tests of the bf16 numerics). GPU/TPU runs are left alone.
"""

from __future__ import annotations

import os
import sys
from typing import Iterable, Optional

NATIVE_BFLOAT16_CPU_FLAGS = ('avx512_bf16', 'amx_bf16')
# bf16 must beat float32 by this much on the measured convolution: at parity float32
# is the better choice (same speed, more precision, no casts around BN and the loss).
MIN_BFLOAT16_SPEEDUP = 1.1
# Environment variables that cap the instruction set of oneDNN's kernels (TensorFlow's
# and PyTorch's); the first one set wins.
ISA_LIMIT_ENVS = ('ONEDNN_MAX_CPU_ISA', 'DNNL_MAX_CPU_ISA')
# oneDNN caps (its names, upper case) below native bf16: no bf16 kernels under them.
ISA_LIMITS_WITHOUT_BFLOAT16 = ('SSE41', 'AVX', 'AVX2', 'AVX2_VNNI', 'AVX512_CORE',
                               'AVX512_CORE_VNNI')


def read_cpu_flags(path: str = '/proc/cpuinfo') -> Optional[frozenset[str]]:
  """The `flags` of the first processor in /proc/cpuinfo; None when unreadable (not
  Linux, or no flags line: then nothing is known about the CPU)."""
  try:
    with open(path, encoding='utf-8', errors='replace') as cpuinfo:
      for line in cpuinfo:
        if line.startswith(('flags', 'Features')) and ':' in line:
          return frozenset(line.split(':', 1)[1].split())
  except OSError:
    return None
  return None


def isa_limit() -> Optional[str]:
  """oneDNN's instruction-set cap from the environment (upper case), or None."""
  for name in ISA_LIMIT_ENVS:
    value = os.environ.get(name, '').strip()
    if value:
      return value.upper()
  return None


def isa_limit_blocks_bfloat16(limit: Optional[str]) -> bool:
  """Whether the oneDNN cap `limit` (an `isa_limit()` value; None: no cap) leaves no
  bf16 kernels."""
  return (limit or '').upper() in ISA_LIMITS_WITHOUT_BFLOAT16


def cpu_has_native_bfloat16(cpu_flags: Iterable[str], limit: Optional[str] = None) -> bool:
  """Whether these CPU flags include native bf16 arithmetic (avx512_bf16 or amx_bf16)
  and the oneDNN cap `limit` (an `isa_limit()` value; None: no cap) leaves it usable."""
  flags = set(cpu_flags)
  return (any(flag in flags for flag in NATIVE_BFLOAT16_CPU_FLAGS) and
          not isa_limit_blocks_bfloat16(limit))


def accelerator_present() -> bool:
  """A GPU or TPU is visible, or a TPUStrategy is in scope."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return bool(tf.config.list_physical_devices('GPU') or
              tf.config.list_physical_devices('TPU') or
              isinstance(tf.distribute.get_strategy(), tf.distribute.TPUStrategy))


def effective_mixed_precision(requested: str, force_bfloat16: bool = False, *,
                              cpu_flags: Optional[Iterable[str]] = None,
                              accelerator: Optional[bool] = None,
                              bfloat16_speedup: Optional[float] = None,
                              limit: Optional[str] = None
                              ) -> tuple[str, Optional[str]]:
  """The compute dtype to run, and a one-line note when it differs from `requested`.

  Args:
    requested: --mixed_precision ('float32' or 'bfloat16').
    force_bfloat16: --force_bfloat16: keep bfloat16 whatever the CPU.
    cpu_flags: the CPU's flags; None reads /proc/cpuinfo (unreadable: keep the request).
    accelerator: whether a GPU/TPU runs the model; None looks it up.
    bfloat16_speedup: float32 time / bfloat16 time of a convolution on this CPU; None
      measures it (or reads it cached) where the CPU has native bf16.
    limit: oneDNN's instruction-set cap; None reads the environment (`isa_limit`),
      '' means none.

  Returns:
    ('float32' or 'bfloat16', note or None).

  Raises:
    ValueError: --force_bfloat16 on a CPU with bf16 whose oneDNN is capped below it
      (TensorFlow would crash on the first bf16 op).
  """
  if requested != 'bfloat16':
    return requested, None
  if accelerator is None:
    accelerator = accelerator_present()
  if accelerator:
    return requested, None
  if cpu_flags is None:
    cpu_flags = read_cpu_flags()
    if cpu_flags is None:
      return requested, None
  limit = isa_limit() if limit is None else limit.upper()
  if force_bfloat16:
    if cpu_has_native_bfloat16(cpu_flags) and isa_limit_blocks_bfloat16(limit):
      raise ValueError(
          f'--force_bfloat16: oneDNN is capped to {limit} ({" or ".join(ISA_LIMIT_ENVS)}), '
          'which has no bf16 kernels, and TensorFlow would crash on its first bf16 op on '
          'this CPU; unset the cap or drop --force_bfloat16.')
    return requested, None
  if not cpu_has_native_bfloat16(cpu_flags):
    return 'float32', ('--mixed_precision=bfloat16: this CPU has no native bf16 '
                       f'({" or ".join(NATIVE_BFLOAT16_CPU_FLAGS)} not in /proc/cpuinfo), '
                       'where bf16 is slower than float32; running float32 (add '
                       '--force_bfloat16 to run bfloat16 anyway).')
  if not cpu_has_native_bfloat16(cpu_flags, limit):
    return 'float32', ('--mixed_precision=bfloat16: oneDNN is capped to '
                       f'{limit} ({" or ".join(ISA_LIMIT_ENVS)}), which has no bf16 '
                       'kernels; running float32 (unset the cap to use bf16).')
  if bfloat16_speedup is None:
    from tf_simclr.models import kernel_choice  # pylint: disable=g-import-not-at-top
    bfloat16_speedup = kernel_choice.measured_bfloat16_speedup()
  if bfloat16_speedup >= MIN_BFLOAT16_SPEEDUP:
    return requested, None
  return 'float32', ('--mixed_precision=bfloat16: on this CPU a bf16 convolution '
                     f'measured {bfloat16_speedup:.2f}x the speed of float32 (needs '
                     f'{MIN_BFLOAT16_SPEEDUP}x to pay); running float32 (add '
                     '--force_bfloat16 to run bfloat16 anyway).')


def resolve_mixed_precision(requested: str, force_bfloat16: bool = False) -> str:
  """`effective_mixed_precision` for this machine; prints its note (one line) on stderr."""
  dtype, note = effective_mixed_precision(requested, force_bfloat16)
  if note:
    print(f'note: {note}', file=sys.stderr, flush=True)
  return dtype
