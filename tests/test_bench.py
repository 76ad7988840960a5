"""The benchmarks run, print the documented JSON, and count FLOPs correctly."""

import json
import os
import pathlib
import subprocess
import sys

import pytest
import tensorflow as tf

from bench import common
from tf_simclr import losses
from tf_simclr.models import build_resnet

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
KEYS = ('images_per_sec', 'model_flops_per_image', 'matmul_flops_per_sec_fp32',
        'matmul_flops_per_sec_bf16', 'mfu', 'peak_rss_mb')


def _resnet18_cifar_forward_flops(size: int) -> int:
  """2 * multiply-adds of ResNet-18 with the CIFAR stem, from the paper's layer table."""
  flops = 2 * size * size * 3 * 3 * 3 * 64  # Stem: 3x3 conv, stride 1, 64 channels.
  in_channels = 64
  for stage, channels in enumerate((64, 128, 256, 512)):
    if stage:
      size //= 2
    for block in range(2):
      first_in = in_channels if block == 0 else channels
      flops += 2 * size * size * 9 * first_in * channels  # conv 1 (strided in block 0).
      flops += 2 * size * size * 9 * channels * channels  # conv 2.
      if block == 0:  # The official code projects in every group's first block.
        flops += 2 * size * size * first_in * channels    # 1x1 projection shortcut.
    in_channels = channels
  return flops


def test_forward_flops_of_resnet18_match_layer_table():
  encoder = build_resnet(18, cifar_stem=True)
  counted = common.forward_flops(lambda x: encoder(x, training=False)['final_avg_pool'],
                                 tf.zeros([1, 32, 32, 3]))
  assert counted == _resnet18_cifar_forward_flops(32)
  # DESIGN.md: about 6.7 GFLOP per image per step (two views, forward + backward).
  assert abs(6 * counted / 1e9 - 6.7) < 0.05


def test_nt_xent_flops_are_four_b_by_b_products():
  batch, dim = 16, 8
  counted = common.forward_flops(
      lambda h: losses.nt_xent_loss(h, temperature=0.1)[0], tf.zeros([2 * batch, dim]))
  assert counted == 4 * 2 * batch * batch * dim


def test_matmul_rate_and_peak_rss_are_plausible():
  rate = common.matmul_flops_per_sec(128, repeats=2, min_seconds=0.01)
  assert 1e8 < rate < 1e14
  assert common.reset_peak_rss()
  assert 50 < common.peak_rss_mb() < 1e6


def test_op_profile_counts_each_op_execution_of_a_traced_function(capsys):
  """3 matmuls and 2 ReLUs per call, 2 calls: the profile must count exactly those."""
  weights = tf.random.normal([64, 64])

  @tf.function
  def three_matmuls(x):
    for _ in range(3):
      x = tf.nn.relu(tf.matmul(x, weights)) if _ < 2 else tf.matmul(x, weights)
    return x

  x = tf.random.normal([64, 64])
  three_matmuls(x).numpy()  # Trace outside the profile.
  profile = common.profile_op_types(lambda: three_matmuls(x).numpy(), 2)
  matmuls = {name: op for name, op in profile['op_types'].items() if name.endswith('MatMul')}
  assert sum(op['calls_per_step'] for op in matmuls.values()) == 3, profile['op_types']
  assert sum(op['calls_per_step'] for name, op in profile['op_types'].items()
             if name.endswith('Relu')) == 2, profile['op_types']
  assert all(op['seconds_per_step'] > 0 for op in matmuls.values())
  assert 0 < profile['op_seconds_per_step'] and 0 < profile['wall_seconds_per_step']
  assert 'MatMul' in capsys.readouterr().out


def _run(script, *args):
  result = subprocess.run(
      [sys.executable, str(REPO_ROOT / 'bench' / script), *args], capture_output=True,
      text=True, timeout=600, check=False, cwd=REPO_ROOT,
      env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'})
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def test_train_step_bench_prints_json_last():
  result = _run('train_step.py', '--resnet_depth=18', '--image_size=16',
                '--train_batch_size=4', '--bench_steps=1', '--bench_warmup_steps=1',
                '--bench_matmul_sizes=128', '--bench_num_classes=10',
                '--bench_compare_patches')
  for key in KEYS + ('speedup_vs_without_patches',):
    assert result[key] > 0, key
  assert result['config']['cifar_stem'] and result['config']['fused_batch_norm']
  assert result['tracing_count'] == 1  # Warm-up and timed steps share one trace.
  # Encoder at 16 px + projection head (3 dense 512x512 -> 512x128) + supervised head.
  heads = 2 * (512 * 512 * 2 + 512 * 128 + 512 * 10)
  assert result['forward_flops_per_view'] == _resnet18_cifar_forward_flops(16) + heads
  assert result['model_flops_per_image'] == 6 * result['forward_flops_per_view']
  expected_mfu = (result['images_per_sec'] * result['model_flops_per_image'] /
                  result['matmul_flops_per_sec_fp32'])
  assert result['mfu'] == pytest.approx(expected_mfu)


def test_train_step_bench_compares_bfloat16_with_float32_alternating():
  result = _run('train_step.py', '--resnet_depth=18', '--image_size=16',
                '--train_batch_size=4', '--bench_steps=2', '--bench_warmup_steps=1',
                '--bench_matmul_sizes=128', '--bench_num_classes=10',
                '--mixed_precision=bfloat16', '--force_bfloat16', '--bench_compare_float32')
  assert result['config']['compute_dtype'] == 'bfloat16'
  assert len(result['step_seconds_alternating_precision']) == 2
  assert len(result['step_seconds_float32']) == 2
  # The median of two steps is their mean, so the ratio of medians is that of sums.
  assert result['speedup_vs_float32'] == pytest.approx(
      sum(result['step_seconds_float32']) / sum(result['step_seconds_alternating_precision']))
  assert result['round_speedups_vs_float32'] == pytest.approx(
      [f / b for f, b in zip(result['step_seconds_float32'],
                             result['step_seconds_alternating_precision'])])


@pytest.mark.slow
def test_train_step_bench_rejects_bad_flag_in_one_line():
  result = subprocess.run(
      [sys.executable, str(REPO_ROOT / 'bench' / 'train_step.py'), '--resnet_depth=19'],
      capture_output=True, text=True, timeout=300, check=False, cwd=REPO_ROOT)
  assert result.returncode != 0
  assert '--resnet_depth=19' in result.stderr.strip().splitlines()[-1]


def test_official_peer_bench_rejects_folder_without_official_code_in_one_line(tmp_path):
  result = subprocess.run(
      [sys.executable, str(REPO_ROOT / 'bench' / 'peer_official_tf2.py'),
       f'--official_tf2_dir={tmp_path}'],
      capture_output=True, text=True, timeout=120, check=False, cwd=REPO_ROOT)
  assert result.returncode != 0
  last_line = result.stderr.strip().splitlines()[-1]
  assert f'--official_tf2_dir={tmp_path} has no run.py' in last_line
  assert 'Traceback' not in result.stderr


@pytest.mark.slow
def test_nt_xent_bench_prints_json_last():
  result = _run('nt_xent.py', '--batch_sizes=8,16', '--steps=1', '--reference_image_size=0')
  sizes = [entry['batch_size'] for entry in result['nt_xent']]
  assert sizes == [8, 16]
  for entry in result['nt_xent']:
    assert entry['seconds'] > 0 and entry['peak_rss_mb'] > 0
    assert entry['flops'] == 3 * 8 * entry['batch_size'] ** 2 * 128


@pytest.mark.slow
def test_input_pipeline_bench_times_the_real_train_step_on_cifar(cifar10_dir):
  from bench import input_pipeline  # pylint: disable=g-import-not-at-top
  config = input_pipeline.train_step_config(str(cifar10_dir), resnet_depth=18, image_size=8,
                                            batch_size=4)
  result = input_pipeline.compare_train_step_throughput(
      config, num_classes=10, steps_per_round=1, rounds=2, warmup_steps=1)
  assert result['steps'] == 2
  assert result['tracing_count'] == 1  # Both iterators run the one traced train loop.
  assert result['ratio'] == pytest.approx(
      result['pipeline_images_per_s'] / result['fixed_batch_images_per_s'])
  assert 0.1 < result['ratio'] < 10


def _write_losses(directory, values, tag='train/total_loss'):
  writer = tf.summary.create_file_writer(directory)
  with writer.as_default():
    for step, value in values:
      tf.summary.scalar(tag, value, step=step)
      tf.summary.scalar('learning_rate', 0.5, step=step)
  writer.close()


@pytest.mark.parametrize('root', ['tmp', 'ram'])
def test_precision_curve_reads_the_run_loss_from_tensorboard_events(tmp_path, root):
  from bench import precision_curve
  directory = str(tmp_path) if root == 'tmp' else 'ram://precision_curve_events'
  _write_losses(directory, [(10, 2.5), (5, 3.25), (15, 1.75)])
  assert precision_curve.read_loss_curve(directory) == [(5, 3.25), (10, 2.5), (15, 1.75)]


def test_precision_curve_compares_precision_against_seed_noise():
  from bench import precision_curve
  steps = (5, 10, 15)
  float32 = {0: [3.0, 2.0, 1.0], 1: [3.2, 2.1, 1.3]}        # Seed noise: .2 .1 .3.
  close = {0: [3.05, 2.0, 1.1], 1: [3.2, 2.15, 1.3]}         # .05 0 .1 / 0 .05 0.
  far = {0: [3.0, 2.5, 1.0], 1: [3.2, 2.1, 1.3]}             # .5 at step 10.
  curves = {'float32': {seed: list(zip(steps, values)) for seed, values in float32.items()},
            'bfloat16': {seed: list(zip(steps, values)) for seed, values in close.items()},
            'float16': {seed: list(zip(steps, values)) for seed, values in far.items()}}
  result = precision_curve.compare_curves(curves)
  assert result['noise'] == pytest.approx({'mean': 0.2, 'max': 0.3, 'pairs': 1})
  assert result['precisions']['bfloat16']['mean'] == pytest.approx(0.2 / 6)
  assert result['precisions']['bfloat16']['max'] == pytest.approx(0.1)
  assert result['precisions']['bfloat16']['within_noise']
  assert not result['precisions']['float16']['within_noise']
  assert result['precisions']['float32']['final_mean'] == pytest.approx((1.0 + 1.3) / 2)
  curves['bfloat16'][1] = curves['bfloat16'][1][:2]
  with pytest.raises(ValueError, match='bfloat16, seed 1: logged steps differ'):
    precision_curve.compare_curves(curves)


def test_cpu_kinds_isa_limit_reaches_its_processes_and_caps_onednn():
  """`bench/cpu_kinds.py --isa_limit=avx2`: each measured process gets the cap, and
  TensorFlow's oneDNN then runs AVX2 kernels (its verbose log names the ISA)."""
  from bench import cpu_kinds  # pylint: disable=import-outside-toplevel
  cap = cpu_kinds.ISA_LIMITS['avx2']
  seen = cpu_kinds._last_json(  # pylint: disable=protected-access
      [sys.executable, '-c', 'import json, os; print(json.dumps([os.environ.get(name) for '
       f'name in {sorted(cap)!r}]))'], 120, cap)
  assert seen == [cap[name] for name in sorted(cap)]
  code = ('import tensorflow as tf; '
          'tf.nn.conv2d(tf.ones([1, 8, 8, 16]), tf.ones([3, 3, 16, 16]), 1, "SAME")')
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=300, check=True,
                          env=dict(os.environ, ONEDNN_VERBOSE='1', TF_ENABLE_ONEDNN_OPTS='1',
                                   **cap))
  isa_lines = [line for line in result.stdout.splitlines() if ',isa:' in line]
  assert isa_lines and isa_lines[0].endswith('isa:Intel AVX2'), isa_lines


def test_cpu_kinds_rounds_ratio_is_per_round_then_median():
  """`bench/cpu_kinds.py --rounds`: each round's ratio pairs ours with the peers of that
  round (not the ratio of medians), and a side that did not run is left out."""
  from bench import cpu_kinds  # pylint: disable=import-outside-toplevel

  def side(images_per_sec):
    return {'images_per_sec': images_per_sec}

  rounds = [{'ours': side(10.0), 'official_tf2': side(8.0), 'pytorch': side(5.0)},
            {'ours': side(6.0), 'official_tf2': side(6.0), 'pytorch': None},
            {'ours': side(12.0), 'official_tf2': side(4.0), 'pytorch': side(10.0)}]
  summary = cpu_kinds.summarize_rounds(rounds)
  assert summary['images_per_sec'] == {'ours': 10.0, 'official_tf2': 6.0, 'pytorch': 7.5}
  assert summary['ratios'] == {'official_tf2': [1.25, 1.0, 3.0], 'pytorch': [2.0, 1.2]}
  assert summary['ratio_median'] == {'official_tf2': 1.25, 'pytorch': 1.6}
  assert summary['ratio_range'] == {'official_tf2': (1.0, 3.0), 'pytorch': (1.2, 2.0)}
  assert cpu_kinds.summarize_rounds([{'ours': None, 'official_tf2': side(1.0),
                                      'pytorch': None}])['ratio_median'] == {
                                          'official_tf2': None, 'pytorch': None}
