"""Tests of tf_simclr.models.resnet: shapes, padding, SK/SE numerics, counts, freezing."""

import json
import math
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_simclr.models import resnet
from tf_simclr.models.resnet import build_resnet, count_encoder_params, count_params

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _conv2d_reference(x, kernel, stride, pad_begin, pad_end, bias=None):
  """NumPy float64 NHWC conv with explicit zero padding."""
  x = np.pad(np.asarray(x, np.float64),
             [(0, 0), (pad_begin, pad_end), (pad_begin, pad_end), (0, 0)])
  kernel = np.asarray(kernel, np.float64)
  windows = np.lib.stride_tricks.sliding_window_view(x, kernel.shape[:2], axis=(1, 2))
  windows = windows[:, ::stride, ::stride]  # [B, H', W', C, kh, kw]
  out = np.einsum('bhwcij,ijco->bhwo', windows, kernel)
  return out if bias is None else out + np.asarray(bias, np.float64)


def _bn_inference_reference(x, layer):
  """NumPy float64 BN with moving statistics (epsilon from the layer)."""
  gamma = layer.gamma.numpy() if layer.scale else 1.0
  beta = layer.beta.numpy() if layer.center else 0.0
  return ((x - layer.moving_mean.numpy()) / np.sqrt(layer.moving_variance.numpy() + 1e-5)
          * gamma + beta)


def _randomize_bn(layer, rng):
  layer.gamma.assign(rng.uniform(0.5, 1.5, layer.gamma.shape).astype(np.float32))
  if layer.center:
    layer.beta.assign(rng.normal(size=layer.beta.shape).astype(np.float32))
  layer.moving_mean.assign(rng.normal(size=layer.moving_mean.shape).astype(np.float32))
  layer.moving_variance.assign(rng.uniform(0.5, 2, layer.moving_variance.shape).astype(np.float32))


def _expected_shapes(depth, height, width, cifar_stem, width_multiplier=1):
  """Endpoint shapes from the architecture definition (ceil division per stride 2)."""
  channels = 64 * width_multiplier
  expansion = 4 if depth >= 50 else 1

  def down(size, times):
    for _ in range(times):
      size = math.ceil(size / 2)
    return size

  stem = 0 if cifar_stem else 1
  pool = 0 if cifar_stem else 2
  shapes = {
      'initial_conv': (2, down(height, stem), down(width, stem), channels),
      'initial_max_pool': (2, down(height, pool), down(width, pool), channels),
  }
  for group in range(4):
    shapes[f'block_group{group + 1}'] = (2, down(height, pool + group), down(width, pool + group),
                                         channels * 2**group * expansion)
  shapes['final_avg_pool'] = (2, channels * 8 * expansion)
  return shapes


@pytest.mark.parametrize('depth,height,width,cifar_stem', [
    (18, 64, 64, False),
    (18, 32, 32, True),
    (18, 37, 50, False),  # odd, non-square: padding and shortcuts must agree
    (50, 64, 64, False),
    (50, 32, 32, True),
])
def test_endpoint_shapes(depth, height, width, cifar_stem):
  model = build_resnet(depth, cifar_stem=cifar_stem)
  outputs = model(tf.random.normal([2, height, width, 3]), training=True)
  assert set(outputs) == set(resnet.ENDPOINT_NAMES)
  shapes = {name: tuple(tensor.shape) for name, tensor in outputs.items()}
  assert shapes == _expected_shapes(depth, height, width, cifar_stem)
  assert outputs['final_avg_pool'].shape[-1] == resnet.output_channels(depth)


def test_final_avg_pool_is_spatial_mean():
  model = build_resnet(18, cifar_stem=True)
  outputs = model(tf.random.normal([2, 16, 16, 3]), training=False)
  np.testing.assert_allclose(outputs['final_avg_pool'],
                             np.mean(outputs['block_group4'], axis=(1, 2)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('size,kernel_size,stride', [(6, 3, 2), (7, 3, 2), (8, 7, 2), (5, 3, 1),
                                                     (6, 1, 2)])
def test_fixed_padding_conv_matches_reference(size, kernel_size, stride):
  layer = resnet.FixedPaddingConv2D(4, kernel_size, stride)
  x = np.random.default_rng(0).normal(size=(2, size, size, 3)).astype(np.float32)
  got = layer(x).numpy()
  assert not layer.weights[0].path.endswith('bias') and len(layer.weights) == 1
  pad_total = kernel_size - 1
  if stride == 1:  # 'same' at stride 1 is symmetric for odd kernels.
    expected = _conv2d_reference(x, layer.kernel.numpy(), 1, pad_total // 2, pad_total // 2)
  else:  # The official fixed padding: (k - 1) // 2 before, the rest after.
    expected = _conv2d_reference(x, layer.kernel.numpy(), stride, pad_total // 2,
                                 pad_total - pad_total // 2)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  assert layer.compute_output_shape((2, size, size, 3)) == got.shape


def test_selective_kernel_matches_official_formula():
  rng = np.random.default_rng(1)
  layer = resnet.SelectiveKernelConv2D(4, 2, 0.0625, batch_norm_decay=0.9, global_bn=False)
  x = rng.normal(size=(2, 6, 6, 3)).astype(np.float32)
  layer(x, training=False)
  _randomize_bn(layer.bn, rng)
  _randomize_bn(layer.squeeze_bn, rng)
  got = layer(x, training=False).numpy()
  assert layer.squeeze_conv.filters == resnet.SK_MIN_DIM  # max(int(4 * 0.0625), 32)

  # Official SK_Conv2D: stack(split(.)) streams, softmax over the stream axis.
  net = _conv2d_reference(x, layer.conv.kernel.numpy(), 2, 1, 1)
  net = np.maximum(_bn_inference_reference(net, layer.bn), 0)
  streams = np.stack(np.split(net, 2, axis=-1))  # [2, B, H, W, 4]
  pooled = streams.sum(axis=0).mean(axis=(1, 2), keepdims=True)
  squeezed = _conv2d_reference(pooled, layer.squeeze_conv.kernel.numpy(), 1, 0, 0)
  squeezed = np.maximum(_bn_inference_reference(squeezed, layer.squeeze_bn), 0)
  mixing = _conv2d_reference(squeezed, layer.mixing_conv.kernel.numpy(), 1, 0, 0)
  mixing = np.stack(np.split(mixing, 2, axis=-1))
  mixing = np.exp(mixing) / np.exp(mixing).sum(axis=0, keepdims=True)
  expected = (streams * mixing).sum(axis=0)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_squeeze_excitation_matches_official_formula():
  rng = np.random.default_rng(2)
  layer = resnet.SqueezeExcitation(8, 0.25)
  x = rng.normal(size=(2, 3, 3, 32)).astype(np.float32)
  got = layer(x).numpy()
  assert layer.reduce_conv.filters == 2 and layer.expand_conv.filters == 32
  squeezed = x.astype(np.float64).mean(axis=(1, 2), keepdims=True)
  hidden = np.maximum(_conv2d_reference(squeezed, layer.reduce_conv.kernel.numpy(), 1, 0, 0,
                                        layer.reduce_conv.bias.numpy()), 0)
  excitation = _conv2d_reference(hidden, layer.expand_conv.kernel.numpy(), 1, 0, 0,
                                 layer.expand_conv.bias.numpy())
  np.testing.assert_allclose(got, x / (1 + np.exp(-excitation)), rtol=1e-5, atol=1e-6)


def test_sk_and_se_build_and_run():
  model = build_resnet(50, sk_ratio=0.0625, se_ratio=0.25)
  outputs = model(tf.random.normal([2, 32, 32, 3]), training=True)
  assert tuple(outputs['final_avg_pool'].shape) == (2, 2048)
  assert np.all(np.isfinite(outputs['final_avg_pool']))
  paths = [v.path for v in model.variables]
  assert any('/sk_conv2d_1/mixing_conv2d/' in p for p in paths)
  assert any('/se/se_expand/bias' in p for p in paths)
  # ResNet-D: three 3x3 stem convs, average-pool shortcuts.
  assert sum(p.startswith('resnet/stem_conv2d_') for p in paths) == 3
  assert any('shortcut_average_pooling' == layer.name
             for layer in model.get_layer('block_group2').blocks[0].shortcut_layers)


def test_se_parameter_count_matches_formula():
  """SE adds, per block, reduce (C*r + r) and expand (r*C_out + C_out) parameters."""
  se_ratio = 0.25
  expected_extra = 0
  for group, num_blocks in enumerate(resnet.RESNET_SPECS[18][1]):
    filters = 64 * 2**group
    reduced = max(1, int(filters * se_ratio))
    expected_extra += num_blocks * (filters * reduced + reduced + reduced * filters + filters)
  extra = (count_encoder_params(18, se_ratio=se_ratio) - count_encoder_params(18))
  assert extra == expected_extra


# Independent reference: torchvision's ResNet totals minus its fc layer (2048 or 512 * 1000
# + 1000). The official SimCLR code also projects the shortcut of the first block of
# block_group1 for basic blocks (1x1 conv 64x64 + BN gamma/beta = 4224 parameters).
TORCHVISION_TOTALS = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032, 101: 44_549_160,
                      152: 60_192_808}


@pytest.mark.parametrize('depth', [18, 34, 50, 101, 152])
def test_param_count_matches_torchvision(depth):
  fc = (2048 if depth >= 50 else 512) * 1000 + 1000
  group1_projection = 64 * 64 + 2 * 64 if depth < 50 else 0
  assert count_encoder_params(depth) == TORCHVISION_TOTALS[depth] - fc + group1_projection


# Published encoder sizes (millions): SimCLRv2 README (R50-1x 24M, +SK 35M, R50-2x 94M,
# +SK 140M, R152-3x+SK 795M) and the SimCLR paper Table 6 (R50-4x 375M).
PUBLISHED_MILLIONS = [(50, 1, 0.0, 24), (50, 1, 0.0625, 35), (50, 2, 0.0, 94),
                      (50, 2, 0.0625, 140), (50, 4, 0.0, 375), (152, 3, 0.0625, 795)]


@pytest.mark.parametrize('depth,width,sk_ratio,millions', PUBLISHED_MILLIONS)
def test_param_count_matches_published(depth, width, sk_ratio, millions):
  count = count_encoder_params(depth, width, sk_ratio=sk_ratio)
  assert round(count / 1e6) == millions, count


def test_count_without_allocation_equals_built_model():
  for args in [dict(depth=18, sk_ratio=0.0625, se_ratio=0.25), dict(depth=50, sk_ratio=0.0625)]:
    built = build_resnet(**args)
    assert count_encoder_params(**args) == count_params(built)
    assert (count_encoder_params(**args, trainable_only=False) ==
            count_params(built, trainable_only=False))


@pytest.mark.slow
def test_r50_4x_built_for_real_has_375m_params():
  model = build_resnet(50, 4)
  assert round(count_params(model) / 1e6) == 375


def test_last_bn_gamma_of_each_block_is_zero():
  for depth, last_bn in [(18, 'batch_normalization_1'), (50, 'batch_normalization_2')]:
    model = build_resnet(depth, cifar_stem=True)
    zero_gammas, one_gammas = [], []
    for variable in model.variables:
      if variable.path.endswith('/gamma'):
        (zero_gammas if not np.any(variable.numpy()) else one_gammas).append(variable.path)
        if np.any(variable.numpy()):
          np.testing.assert_array_equal(variable.numpy(), 1.0)
    assert len(zero_gammas) == sum(resnet.RESNET_SPECS[depth][1])
    assert all(path.endswith(f'/{last_bn}/gamma') for path in zero_gammas)
    # So at init an identity-shortcut block passes its (non-negative) input through.
    block = model.get_layer('block_group1').blocks[1]
    x = tf.nn.relu(tf.random.normal([2, 4, 4, block.filters * block.expansion]))
    np.testing.assert_allclose(block(x, training=False), x, atol=1e-6)


@pytest.mark.parametrize('global_bn', [True, False])
def test_bn_settings(global_bn):
  model = build_resnet(18, cifar_stem=True, global_bn=global_bn, batch_norm_decay=0.97)
  bns = [layer for layer in model._flatten_layers()  # pylint: disable=protected-access
         if isinstance(layer, keras.layers.BatchNormalization)]
  # stem 1 + per block 2 BNs + 4 projection shortcut BNs.
  assert len(bns) == 1 + 2 * 8 + 4
  for bn in bns:
    assert bn.synchronized is global_bn
    assert bn.epsilon == 1e-5 and bn.momentum == 0.97 and 'batch_normalization' in bn.name
    assert all('batch_normalization' in v.path for v in bn.weights)
  for variable in model.variables:
    if 'batch_normalization' not in variable.path:
      assert variable.path.endswith('/kernel')  # no conv biases without SE


def _group_of(path):
  return path.split('/')[1].replace('stem_conv2d', 'stem').replace('stem_batch_normalization',
                                                                   'stem')


@pytest.mark.parametrize('fine_tune_after_block', [-1, 0, 2, 4])
def test_fine_tune_after_block_freezes(fine_tune_after_block):
  model = build_resnet(18, cifar_stem=True, global_bn=False,
                       fine_tune_after_block=fine_tune_after_block)
  frozen = {'stem'} if fine_tune_after_block >= 0 else set()
  frozen |= {f'block_group{i}' for i in range(1, fine_tune_after_block + 1)}
  trainable_groups = {_group_of(v.path) for v in model.trainable_variables}
  assert trainable_groups == {'stem', 'block_group1', 'block_group2', 'block_group3',
                              'block_group4'} - frozen
  assert {_group_of(v.path) for v in model.non_trainable_variables if 'moving_' not in v.path
         } == frozen

  images = tf.random.normal([4, 8, 8, 3])
  moving_before = {v.path: v.numpy() for v in model.variables if 'moving_mean' in v.path}
  with tf.GradientTape(persistent=True) as tape:
    tape.watch(images)
    outputs = model(images, training=True)
    loss = tf.reduce_sum(outputs['final_avg_pool'] ** 2)
  # Stop-gradient after the frozen part: nothing reaches the input.
  image_gradient = tape.gradient(loss, images)
  assert (image_gradient is None) == (fine_tune_after_block >= 0)
  gradients = tape.gradient(loss, model.trainable_variables)
  assert all(g is not None for g in gradients)
  # Frozen BN runs in inference mode: its moving statistics do not move.
  for variable in model.variables:
    if 'moving_mean' in variable.path:
      changed = not np.allclose(variable.numpy(), moving_before[variable.path])
      assert changed == (_group_of(variable.path) not in frozen), variable.path


def test_bad_depth_is_one_clear_error():
  with pytest.raises(ValueError, match='--resnet_depth=42'):
    build_resnet(42)


@pytest.mark.slow  # 13 s CPU, mostly the TF import of the subprocess; 25-55 s wall here.
def test_synchronized_bn_matches_single_device_under_mirrored_strategy():
  """2 logical CPUs, MirroredStrategy: sync BN moving stats equal a full-batch run.

  With global_bn=False the same script gives max_abs_diff 0.22 (replicas differ by 0.39).
  """
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL='2')
  result = subprocess.run([sys.executable, str(REPO_ROOT / 'tests' / 'sync_bn_check.py'), 'true'],
                          env=env, capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  stats = json.loads(result.stdout.strip().splitlines()[-1])['True']
  assert stats['num_stats'] == 2 * (1 + 2 * 8 + 4)
  assert stats['max_abs_diff'] < 1e-5
  assert stats['replica_spread'] == 0.0


@pytest.mark.parametrize('fine_tune_after_block', [0, 1, 2, 3, 4])
def test_pretrain_checkpoint_restores_into_frozen_encoder(tmp_path, fine_tune_after_block):
  """`--train_mode=finetune --fine_tune_after_block=k --checkpoint=<pretrain run>`.

  The frozen encoder must track its variables exactly as the pretraining encoder does
  (a stop-gradient node in the functional graph used to shift them: 'incompatible
  tensor with shape (512,) ... block_group3' for k=2).
  """
  pretrained = build_resnet(18, cifar_stem=True, global_bn=False)
  for variable in pretrained.variables:
    variable.assign(tf.random.normal(variable.shape, seed=7))
  path = tf.train.Checkpoint(encoder=pretrained).write(str(tmp_path / 'ckpt'))
  frozen = build_resnet(18, cifar_stem=True, global_bn=False,
                        fine_tune_after_block=fine_tune_after_block)
  tf.train.Checkpoint(encoder=frozen).read(path).assert_existing_objects_matched()
  assert [v.path for v in frozen.variables] == [v.path for v in pretrained.variables]
  for restored, saved in zip(frozen.variables, pretrained.variables):
    np.testing.assert_array_equal(restored.numpy(), saved.numpy(), err_msg=saved.path)
