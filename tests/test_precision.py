"""--mixed_precision=bfloat16 runs float32 on a CPU without native bf16, or where bf16
was measured no faster than float32, unless forced."""

import pathlib

import pytest

from tf_simclr import config as config_lib
from tf_simclr import precision

AVX2_ONLY = frozenset('fpu sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma f16c'.split())
AVX512_BF16 = AVX2_ONLY | {'avx512f', 'avx512bw', 'avx512_bf16'}
AMX = AVX2_ONLY | {'avx512f', 'amx_tile', 'amx_bf16'}
# avx512f without the bf16 extension is not native bf16.
AVX512_ONLY = AVX2_ONLY | {'avx512f', 'avx512bw', 'avx512vl'}


@pytest.mark.parametrize('cpu_flags, expected', [
    (AVX2_ONLY, 'float32'), (AVX512_ONLY, 'float32'),
    (AVX512_BF16, 'bfloat16'), (AMX, 'bfloat16')])
def test_bfloat16_only_where_the_cpu_has_it(cpu_flags, expected):
  dtype, note = precision.effective_mixed_precision('bfloat16', cpu_flags=cpu_flags,
                                                    accelerator=False, bfloat16_speedup=1.9)
  assert dtype == expected
  if expected == 'float32':
    assert '\n' not in note and 'no native bf16' in note and '--force_bfloat16' in note
  else:
    assert note is None


@pytest.mark.parametrize('speedup, expected', [
    (0.62, 'float32'), (1.05, 'float32'), (precision.MIN_BFLOAT16_SPEEDUP, 'bfloat16'),
    (1.9, 'bfloat16')])
def test_native_bfloat16_is_used_only_where_measured_faster(speedup, expected):
  """avx512_bf16 without AMX measured 0.6x float32 on an Intel Xeon: float32 there."""
  for cpu_flags in (AVX512_BF16, AMX):
    dtype, note = precision.effective_mixed_precision(
        'bfloat16', cpu_flags=cpu_flags, accelerator=False, bfloat16_speedup=speedup)
    assert dtype == expected
    if expected == 'float32':
      assert '\n' not in note and f'measured {speedup:.2f}x' in note
      assert '--force_bfloat16' in note
    else:
      assert note is None
  assert precision.effective_mixed_precision(
      'bfloat16', True, cpu_flags=AVX512_BF16, accelerator=False,
      bfloat16_speedup=0.5) == ('bfloat16', None)


def test_bfloat16_speedup_is_measured_once_and_cached(tmp_path: pathlib.Path):
  """A real measurement on this CPU, then the cached value (not a new measurement)."""
  import json  # pylint: disable=g-import-not-at-top
  from tf_simclr.models import kernel_choice  # pylint: disable=g-import-not-at-top
  cache_path = str(tmp_path / 'cache' / 'kernels.json')
  speedup = kernel_choice.measured_bfloat16_speedup(cache_path, rounds=1)
  # A ratio of two real timings: 0.044 on an AVX2 CPU (bf16 emulated), 0.56 on an
  # AVX-512 Xeon without AMX (2026-12-02).
  assert 0.001 < speedup < 20
  with open(cache_path) as cache_file:
    cache = json.load(cache_file)
  key = f'{kernel_choice.cpu_identity()}/bfloat16_speedup'
  assert cache[key]['float32'] / cache[key]['bfloat16'] == pytest.approx(speedup)
  cache[key] = {'float32': 3.0, 'bfloat16': 1.0}
  with open(cache_path, 'w') as cache_file:
    json.dump(cache, cache_file)
  assert kernel_choice.measured_bfloat16_speedup(cache_path) == 3.0


def test_forced_accelerator_and_float32_requests_are_kept():
  assert precision.effective_mixed_precision(
      'bfloat16', True, cpu_flags=AVX2_ONLY, accelerator=False) == ('bfloat16', None)
  assert precision.effective_mixed_precision(
      'bfloat16', cpu_flags=AVX2_ONLY, accelerator=True) == ('bfloat16', None)
  assert precision.effective_mixed_precision(
      'float32', cpu_flags=AVX512_BF16, accelerator=False) == ('float32', None)


def test_cpu_flags_are_read_from_cpuinfo(tmp_path: pathlib.Path):
  cpuinfo = tmp_path / 'cpuinfo'
  cpuinfo.write_text('processor\t: 0\nmodel name\t: AMD EPYC\n'
                     'flags\t\t: fpu avx2 avx512f avx512_bf16\n\nprocessor\t: 1\n')
  assert precision.read_cpu_flags(str(cpuinfo)) == {'fpu', 'avx2', 'avx512f', 'avx512_bf16'}
  assert precision.read_cpu_flags(str(tmp_path / 'missing')) is None
  real = precision.read_cpu_flags()
  if pathlib.Path('/proc/cpuinfo').exists():
    assert real and ('sse2' in real or 'fp' in real)  # x86 or ARM flags.


def test_the_real_model_follows_this_cpu(capfd):
  """The model that training builds: bf16 layers only where the CPU has native bf16
  measured faster than float32."""
  from tf_simclr import models  # pylint: disable=g-import-not-at-top
  config = config_lib.Config(
      model=config_lib.ModelConfig(resnet_depth=18, proj_out_dim=8),
      data=config_lib.DataConfig(image_size=8),
      train=config_lib.TrainConfig(mixed_precision='bfloat16', model_dir='/unused',
                                   train_steps=1))
  from tf_simclr.models import kernel_choice  # pylint: disable=g-import-not-at-top
  native = precision.cpu_has_native_bfloat16(precision.read_cpu_flags() or ())
  kept = precision.accelerator_present() or (
      native and kernel_choice.measured_bfloat16_speedup() >= precision.MIN_BFLOAT16_SPEEDUP)
  model = models.build_model_for(config, 10)
  assert model.encoder.compute_dtype == ('bfloat16' if kept else 'float32')
  assert ('running float32' in capfd.readouterr().err) == (not kept)
  forced = models.build_model_for(
      config_lib.replace(config, train={'force_bfloat16': True}), 10)
  assert forced.encoder.compute_dtype == 'bfloat16'


@pytest.mark.parametrize('limit, expected', [
    ('AVX2', 'float32'), ('avx512_core', 'float32'), ('AVX512_CORE_BF16', 'bfloat16'),
    ('AVX512_CORE_AMX', 'bfloat16'), ('', 'bfloat16')])
def test_a_onednn_cap_below_bfloat16_runs_float32(limit, expected):
  """ONEDNN_MAX_CPU_ISA=AVX2 on an AMX CPU: TF still sends bf16 ops to oneDNN, which has
  no bf16 kernels under the cap (a bf16 matmul crashed the process): float32."""
  dtype, note = precision.effective_mixed_precision(
      'bfloat16', cpu_flags=AMX, accelerator=False, bfloat16_speedup=1.9, limit=limit)
  assert dtype == expected
  if expected == 'float32':
    assert '\n' not in note and limit.upper() in note and 'ONEDNN_MAX_CPU_ISA' in note
  else:
    assert note is None


def test_isa_limit_reads_the_environment(monkeypatch):
  for name in precision.ISA_LIMIT_ENVS:
    monkeypatch.delenv(name, raising=False)
  assert precision.isa_limit() is None
  monkeypatch.setenv('DNNL_MAX_CPU_ISA', 'avx2')
  assert precision.isa_limit() == 'AVX2'
  assert not precision.cpu_has_native_bfloat16(AMX, precision.isa_limit())
  assert precision.cpu_has_native_bfloat16(AMX)


def test_forcing_bfloat16_under_a_cap_without_it_is_a_clear_error():
  """Forced bf16 under ONEDNN_MAX_CPU_ISA=AVX2 on a bf16 CPU would segfault TensorFlow:
  one line naming the flag and the variable instead. On a CPU without bf16 the force
  stands (TF does not hand bf16 ops to oneDNN there)."""
  with pytest.raises(ValueError, match='--force_bfloat16.*ONEDNN_MAX_CPU_ISA') as error:
    precision.effective_mixed_precision('bfloat16', True, cpu_flags=AMX, accelerator=False,
                                        limit='AVX2')
  assert '\n' not in str(error.value)
  assert precision.effective_mixed_precision(
      'bfloat16', True, cpu_flags=AVX2_ONLY, accelerator=False, limit='AVX2') == (
          'bfloat16', None)
  assert precision.effective_mixed_precision(
      'bfloat16', True, cpu_flags=AMX, accelerator=False, limit='') == ('bfloat16', None)
  assert precision.effective_mixed_precision(
      'bfloat16', True, cpu_flags=AMX, accelerator=True, limit='AVX2') == ('bfloat16', None)
