"""Tests of tf_simclr.models.simclr: outputs per mode, gradient flow, config wiring."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_simclr.config import DEFAULT_LARS_EXCLUDES, Config, replace
from tf_simclr.models import SimCLRModel, build_model
from tf_simclr.models.resnet import ENDPOINT_NAMES

NUM_CLASSES = 4
SMALL = dict(resnet_depth=18, cifar_stem=True, global_bn=False, proj_out_dim=8,
             num_classes=NUM_CLASSES)


def _is_encoder(variable):
  return variable.path.startswith('resnet/')


def _supervised_gradients(model, images):
  with tf.GradientTape() as tape:
    outputs = model(images, training=True)
    loss = tf.reduce_sum(outputs['logits_sup'] ** 2)
  return outputs, dict(zip([v.path for v in model.trainable_variables],
                           tape.gradient(loss, model.trainable_variables)))


def test_pretrain_outputs_and_stop_gradient():
  model = SimCLRModel(**SMALL, train_mode='pretrain', lineareval_while_pretraining=True)
  images = tf.random.normal([2 * 3, 8, 8, 3])  # two views of 3 images, stacked on batch
  outputs, gradients = _supervised_gradients(model, images)
  assert set(outputs) == set(ENDPOINT_NAMES) | {'proj_head_output', 'ft_hidden', 'logits_sup'}
  assert tuple(outputs['proj_head_output'].shape) == (6, 8)
  assert tuple(outputs['ft_hidden'].shape) == (6, 512)
  assert tuple(outputs['logits_sup'].shape) == (6, NUM_CLASSES)
  # The supervised loss reaches only the supervised head.
  for path, gradient in gradients.items():
    assert (gradient is not None) == ('head_supervised' in path), path
  # The contrastive projection does train the encoder and projection head.
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(model(images, training=True)['proj_head_output'] ** 2)
  contrastive = tape.gradient(loss, model.trainable_variables)
  for variable, gradient in zip(model.trainable_variables, contrastive):
    assert (gradient is not None) == ('head_supervised' not in variable.path), variable.path


def test_pretrain_without_lineareval_has_no_supervised_head():
  model = SimCLRModel(**SMALL, train_mode='pretrain', lineareval_while_pretraining=False)
  outputs = model(tf.random.normal([4, 8, 8, 3]), training=False)
  assert 'logits_sup' not in outputs and model.supervised_head is None
  assert not any('head_supervised' in v.path for v in model.variables)


@pytest.mark.parametrize('selector', [0, 1, -1])
def test_finetune_reads_selected_hidden_with_gradient(selector):
  model = SimCLRModel(**SMALL, train_mode='finetune', ft_proj_selector=selector)
  images = tf.random.normal([3, 8, 8, 3])
  outputs, gradients = _supervised_gradients(model, images)
  _, hiddens = model.projection_head(outputs['final_avg_pool'], training=True)
  np.testing.assert_allclose(outputs['ft_hidden'], hiddens[selector], rtol=1e-5, atol=1e-5)
  expected_width = 8 if selector == -1 else 512
  assert tuple(outputs['ft_hidden'].shape) == (3, expected_width)
  np.testing.assert_allclose(
      outputs['logits_sup'],
      outputs['ft_hidden'].numpy() @ model.supervised_head.dense.kernel.numpy()
      + model.supervised_head.dense.bias.numpy(), rtol=1e-4, atol=1e-5)
  # Gradient flows into the encoder and into projection layers before the selected one.
  assert all(gradients[v.path] is not None for v in model.trainable_variables if _is_encoder(v))
  head_layers_used = {0: 0, 1: 1, -1: 3}[selector]
  for j in range(3):
    gradient = gradients[f'simclr_model/projection_head/nonlinear_{j}_dense/kernel']
    assert (gradient is not None) == (j < head_layers_used)


def test_finetune_after_block_4_trains_only_heads():
  model = SimCLRModel(**SMALL, train_mode='finetune', fine_tune_after_block=4)
  assert not any(_is_encoder(v) for v in model.trainable_variables)
  _, gradients = _supervised_gradients(model, tf.random.normal([3, 8, 8, 3]))
  assert {p for p, g in gradients.items() if g is not None} == {
      'simclr_model/head_supervised/dense/kernel', 'simclr_model/head_supervised/dense/bias'}


def test_zero_init_logits_layer():
  model = SimCLRModel(**SMALL, train_mode='finetune', zero_init_logits_layer=True)
  outputs = model(tf.random.normal([2, 8, 8, 3]), training=False)
  assert not np.any(outputs['logits_sup'].numpy())


def test_invalid_settings_are_one_clear_error():
  with pytest.raises(ValueError, match='--fine_tune_after_block'):
    SimCLRModel(**SMALL, train_mode='pretrain', fine_tune_after_block=2)
  with pytest.raises(ValueError, match='num_classes'):
    SimCLRModel(**{**SMALL, 'num_classes': None}, train_mode='finetune')
  with pytest.raises(ValueError, match='--ft_proj_selector=4'):
    SimCLRModel(**SMALL, train_mode='finetune', ft_proj_selector=4)
  with pytest.raises(ValueError, match='--train_mode'):
    SimCLRModel(**SMALL, train_mode='linear')


@pytest.mark.parametrize('mode', ['none', 'linear'])
def test_proj_head_modes_the_official_code_crashes_on(mode):
  model = SimCLRModel(**SMALL, proj_head_mode=mode, ft_proj_selector=-1)
  outputs = model(tf.random.normal([4, 8, 8, 3]), training=True)
  width = 512 if mode == 'none' else 8
  assert tuple(outputs['proj_head_output'].shape) == (4, width)
  assert tuple(outputs['logits_sup'].shape) == (4, NUM_CLASSES)


def test_weight_decay_exclusions_by_path():
  """Excluded by DEFAULT_LARS_EXCLUDES exactly: BN variables, biases, supervised head."""
  model = SimCLRModel(**SMALL, se_ratio=0.25)
  excluded = {v.path for v in model.trainable_variables
              if any(name in v.path for name in DEFAULT_LARS_EXCLUDES)}
  expected = set()
  for layer in model._flatten_layers():  # pylint: disable=protected-access
    if isinstance(layer, keras.layers.BatchNormalization):
      expected |= {v.path for v in layer.trainable_weights}
    elif isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)) and layer.use_bias:
      expected.add(layer.bias.path)
  expected |= {v.path for v in model.supervised_head.trainable_weights}
  assert excluded == expected
  assert any(path.endswith('se_reduce/bias') for path in excluded)


def test_mixed_bfloat16_outputs_float32():
  keras.mixed_precision.set_global_policy('mixed_bfloat16')
  try:
    model = SimCLRModel(**SMALL)
    outputs = model(tf.random.normal([4, 8, 8, 3]), training=True)
  finally:
    keras.mixed_precision.set_global_policy('float32')
  assert outputs['block_group4'].dtype == tf.bfloat16
  assert outputs['proj_head_output'].dtype == tf.float32
  assert outputs['logits_sup'].dtype == tf.float32
  assert all(v.dtype == 'float32' for v in model.variables)


@pytest.mark.parametrize('image_size,cifar_stem,initial_conv_size', [
    (32, None, 32), (40, None, 20), (40, True, 40), (16, False, 8)])
def test_build_model_from_config(image_size, cifar_stem, initial_conv_size):
  config = replace(Config(), model={'resnet_depth': 18, 'proj_out_dim': 16,
                                    'cifar_stem': cifar_stem, 'global_bn': False,
                                    'batch_norm_decay': 0.95, 'num_proj_layers': 2,
                                    'ft_proj_selector': 1},
                   data={'image_size': image_size},
                   train={'train_mode': 'finetune', 'zero_init_logits_layer': True,
                          'fine_tune_after_block': 3})
  model = build_model(config, num_classes=10)
  outputs = model(tf.random.normal([2, image_size, image_size, 3]), training=False)
  assert outputs['initial_conv'].shape[1] == initial_conv_size
  assert tuple(outputs['proj_head_output'].shape) == (2, 16)
  assert not np.any(outputs['logits_sup'].numpy())
  assert len(model.projection_head.dense_layers) == 2
  assert model.projection_head.bn_layers[0].momentum == 0.95
  trainable_encoder = {v.path.split('/')[1] for v in model.trainable_variables if _is_encoder(v)}
  assert trainable_encoder == {'block_group4'}
  assert model.get_config()['ft_proj_selector'] == 1


def test_checkpoint_round_trip(tmp_path):
  """All variables (nested blocks, heads, BN statistics) are tracked by tf.train.Checkpoint."""
  source = SimCLRModel(**SMALL, sk_ratio=0.0625, se_ratio=0.25)
  images = tf.random.normal([4, 8, 8, 3])
  source(images, training=True)  # moves BN statistics away from their initial values
  path = tf.train.Checkpoint(model=source).write(str(tmp_path / 'ckpt'))
  target = SimCLRModel(**SMALL, sk_ratio=0.0625, se_ratio=0.25)
  tf.train.Checkpoint(model=target).read(path).assert_consumed()
  saved = [name for name, _ in tf.train.list_variables(path) if name.startswith('model/')]
  assert len(saved) == len(source.variables)  # Keras lists of layers are easy to miss
  for expected, got in zip(source.variables, target.variables):
    np.testing.assert_array_equal(expected.numpy(), got.numpy())
  np.testing.assert_allclose(target(images, training=False)['logits_sup'],
                             source(images, training=False)['logits_sup'], rtol=1e-6)
