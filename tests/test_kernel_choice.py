"""--cpu_kernels: per layer shape, our kernels or stock TF/Keras, from timings on this CPU.

A two-conv model (two shapes) and its BN layers: timings in the cache file decide each
shape (the faster side wins), and the traced gradient then uses TensorFlow's
Conv2DBackpropInput / the Keras BN ops exactly where stock won. One real measurement
checks that timings are taken, cached under this CPU's key and reused.
"""

import json

import keras
import pytest
import tensorflow as tf

from tf_simclr import config as config_lib
from tf_simclr import precision
from tf_simclr.models import fast_batch_norm
from tf_simclr.models import fast_conv
from tf_simclr.models import kernel_choice
from tf_simclr.models import native_batch_norm
from tf_simclr.models import resnet

IMAGE_SIZE = 16
BATCH = 128  # 128 x 16 x 16 pixels: enough for `auto` to measure.


@pytest.fixture(autouse=True)
def _restore_choices():
  yield
  fast_conv.set_gradient_choices({}, True)
  fast_conv.set_padded_filter_gradient_choices({})
  fast_conv.set_patches_choices({})
  fast_batch_norm.set_fused_choices({}, True)
  fast_batch_norm.set_native_choices({}, True)


def _model() -> keras.Model:
  inputs = keras.Input([IMAGE_SIZE, IMAGE_SIZE, 3])
  hidden = resnet.FixedPaddingConv2D(8, 3, 1)(inputs)                  # 16x16x3 -> 8
  hidden = resnet.batch_norm(momentum=0.9, synchronized=False,
                            name='batch_normalization_1')(hidden)  # 16x16x8
  hidden = resnet.FixedPaddingConv2D(4, 3, 2)(hidden)                  # 16x16x8 -> 4
  hidden = resnet.batch_norm(momentum=0.9, synchronized=False,
                            name='batch_normalization_2')(hidden)  # 8x8x4
  return keras.Model(inputs, hidden)


def _gradient_op_types(model: keras.Model) -> list[str]:
  def gradient(images):
    with tf.GradientTape() as tape:
      tape.watch(images)
      loss = tf.reduce_sum(tf.square(model(images, training=True)))
    return tape.gradient(loss, [images] + model.trainable_variables)

  graph = tf.function(gradient).get_concrete_function(
      tf.TensorSpec([4, IMAGE_SIZE, IMAGE_SIZE, 3])).graph
  types = [op.type for op in graph.get_operations()]
  for function in graph._functions.values():  # pylint: disable=protected-access
    types += [node.op for node in function.definition.node_def]
  return types


def _fused_count(types: list[str]) -> int:
  """Fused BN forward ops: TF's kernel, or the native one (float32 on CPUs)."""
  return types.count('FusedBatchNormV3') + types.count('NativeBatchNormForward')


def _filter_gradient_paddings(model: keras.Model) -> list[str]:
  """The `padding` of every Conv2DBackpropFilter in the traced gradient of `model`."""
  def gradient(images):
    with tf.GradientTape() as tape:
      tape.watch(images)
      loss = tf.reduce_sum(tf.square(model(images, training=True)))
    return tape.gradient(loss, model.trainable_variables)

  graph = tf.function(gradient).get_concrete_function(
      tf.TensorSpec([4, IMAGE_SIZE, IMAGE_SIZE, 3])).graph
  nodes = [op.node_def for op in graph.get_operations()]
  for function in graph._functions.values():  # pylint: disable=protected-access
    nodes += list(function.definition.node_def)
  return sorted(node.attr['padding'].s.decode() for node in nodes
                if node.op == 'Conv2DBackpropFilter')


def test_cached_timings_decide_each_shape(tmp_path):
  model = _model()
  cache_path = str(tmp_path / 'kernels.json')
  prefix = kernel_choice._cache_prefix(tf.float32, BATCH)  # pylint: disable=protected-access
  # First conv and first BN: ours faster; second conv and BN: stock faster (than both
  # of our stride-2 kernel gradients).
  timings = {'conv 16x16x3x3x3x8x1': {'ours': 1.0, 'stock': 2.0},
             'conv 16x16x8x3x3x4x2': {'ours': 2.0, 'stock': 1.0, 'ours_padded': 3.0},
             'bn 16x16x8': {'ours': 1.0, 'stock': 2.0},
             'bn 8x8x4': {'ours': 2.0, 'stock': 1.0}}
  with open(cache_path, 'w') as cache_file:
    json.dump({prefix + name: value for name, value in timings.items()}, cache_file)
  choice = kernel_choice.choose_kernels(model, mode='auto', image_size=IMAGE_SIZE,
                                        batch=BATCH, cache_path=cache_path)
  assert choice.measured_seconds == 0 and choice.timings == timings
  assert choice.conv_choices == {(16, 16, 3, 3, 3, 8, 1): True, (16, 16, 8, 3, 3, 4, 2): False}
  assert choice.batch_norm_choices == {(16, 16, 8): True, (8, 8, 4): False}
  types = _gradient_op_types(model)
  assert types.count('Conv2DBackpropInput') == 1  # The stride-2 conv only.
  assert _fused_count(types) == 1    # The first BN only; Keras ops for the other.
  assert 'on 1/2 conv shapes, fused BN on 1/2 BN shapes' in choice.summary()
  short_run = kernel_choice.choose_kernels(model, mode='auto', image_size=IMAGE_SIZE,
                                           batch=BATCH, cache_path=cache_path, total_steps=10)
  assert short_run.conv_choices == choice.conv_choices  # Cached timings serve short runs.
  # Stock at stride 2: TF's gradient of pad + VALID (and its Conv2DBackpropInput).
  assert _filter_gradient_paddings(model) == ['SAME', 'VALID']

  # Ours with the pre-padded kernel gradient beats stock and ours with explicit padding:
  # the stride-2 conv takes our path with oneDNN's VALID kernel gradient.
  timings['conv 16x16x8x3x3x4x2'] = {'ours': 2.0, 'stock': 1.5, 'ours_padded': 1.0}
  with open(cache_path, 'w') as cache_file:
    json.dump({prefix + name: value for name, value in timings.items()}, cache_file)
  padded = kernel_choice.choose_kernels(model, mode='auto', image_size=IMAGE_SIZE,
                                        batch=BATCH, cache_path=cache_path)
  assert padded.conv_choices[(16, 16, 8, 3, 3, 4, 2)]
  assert padded.padded_filter_choices == {(16, 16, 8, 3, 3, 4, 2): True}
  assert 'pre-padded or matmul kernel gradient on 1' in padded.summary()
  assert _filter_gradient_paddings(model) == ['SAME', 'VALID']
  assert _gradient_op_types(model).count('Conv2DBackpropInput') == 0
  # A cache written before the pre-padded variant existed lacks its timing: a short
  # run does not use it (our kernels everywhere), a long one would time it.
  del timings['conv 16x16x8x3x3x4x2']['ours_padded']
  with open(cache_path, 'w') as cache_file:
    json.dump({prefix + name: value for name, value in timings.items()}, cache_file)
  old_cache = kernel_choice.choose_kernels(model, mode='auto', image_size=IMAGE_SIZE,
                                           batch=BATCH, cache_path=cache_path, total_steps=10)
  assert not old_cache.conv_choices and 'too short' in old_cache.reason

  for mode, backprop_inputs, fused in (('stock', 2, 0), ('ours', 0, 2)):
    kernel_choice.choose_kernels(model, mode=mode, image_size=IMAGE_SIZE, batch=BATCH,
                                 cache_path=cache_path)
    types = _gradient_op_types(model)
    assert (types.count('Conv2DBackpropInput'), _fused_count(types)) == (
        backprop_inputs, fused), mode
  assert _filter_gradient_paddings(model) == ['EXPLICIT', 'SAME']  # 'ours' everywhere.


def _small_map_model() -> keras.Model:
  """A stride-2 3x3 conv to a 4x4 output (a patches candidate), then a 1x1 on 4x4."""
  inputs = keras.Input([8, 8, 3])
  hidden = resnet.FixedPaddingConv2D(8, 3, 2)(inputs)   # 8x8x3 -> 4x4x8
  return keras.Model(inputs, resnet.FixedPaddingConv2D(4, 1, 1)(hidden))  # 4x4x8 -> 4


def test_patches_are_timed_on_small_outputs_and_win_only_when_fastest(tmp_path):
  model = _small_map_model()
  cache_path = str(tmp_path / 'kernels.json')
  batch = 512  # 512 x 8 x 8 pixels: enough to measure.
  measured = kernel_choice.choose_kernels(model, mode='auto', image_size=8, batch=batch,
                                          cache_path=cache_path, repeats=1, apply=False)
  assert all('patches' in value for value in measured.timings.values())
  assert set(measured.patches_choices) == {(8, 8, 3, 3, 3, 8, 2), (4, 4, 8, 1, 1, 4, 1)}
  prefix = kernel_choice._cache_prefix(tf.float32, batch)  # pylint: disable=protected-access
  # Patches fastest for the strided conv only; for the 1x1 one they beat stock but lose
  # to our path with the matmul kernel gradient.
  timings = {'conv 8x8x3x3x3x8x2': {'ours': 3.0, 'stock': 2.0, 'ours_padded': 2.5,
                                    'patches': 1.0},
             'conv 4x4x8x1x1x4x1': {'ours': 3.0, 'stock': 2.0, 'ours_padded': 1.0,
                                    'patches': 1.5}}
  with open(cache_path, 'w') as cache_file:
    json.dump({prefix + name: value for name, value in timings.items()}, cache_file)
  choice = kernel_choice.choose_kernels(model, mode='auto', image_size=8, batch=batch,
                                        cache_path=cache_path)
  assert choice.patches_choices == {(8, 8, 3, 3, 3, 8, 2): True, (4, 4, 8, 1, 1, 4, 1): False}
  assert 'a matmul of patches on 1' in choice.summary()

  def gradient_ops(images):
    with tf.GradientTape() as tape:
      tape.watch(images)
      loss = tf.reduce_sum(tf.square(model(images, training=True)))
    return tape.gradient(loss, [images] + model.trainable_variables)

  graph = tf.function(gradient_ops).get_concrete_function(tf.TensorSpec([4, 8, 8, 3])).graph
  types = [op.type for op in graph.get_operations()]
  for function in graph._functions.values():  # pylint: disable=protected-access
    types += [node.op for node in function.definition.node_def]
  # The 1x1 conv (ours, matmul kernel gradient): its forward conv and its input gradient
  # as a forward conv; the strided conv (patches): matmuls only.
  assert types.count('Conv2D') == 2 and types.count('MatMul') >= 4, types
  assert 'Conv2DBackpropFilter' not in types and 'Conv2DBackpropInput' not in types, types
  # A cache from before the patches candidate lacks its timings: not used by short runs.
  for value in timings.values():
    del value['patches']
  with open(cache_path, 'w') as cache_file:
    json.dump({prefix + name: value for name, value in timings.items()}, cache_file)
  old_cache = kernel_choice.choose_kernels(model, mode='auto', image_size=8, batch=batch,
                                           cache_path=cache_path, total_steps=10)
  assert not old_cache.patches_choices and 'too short' in old_cache.reason


def test_auto_measures_caches_and_reuses(tmp_path):
  model = _model()
  cache_path = str(tmp_path / 'cache' / 'kernels.json')
  first = kernel_choice.choose_kernels(model, mode='auto', image_size=IMAGE_SIZE,
                                       batch=BATCH, cache_path=cache_path, repeats=1)
  assert first.measured_seconds > 0 and len(first.timings) == 4
  assert all(value['ours'] > 0 and value['stock'] > 0 for value in first.timings.values())
  # Only the stride-2 3x3 conv has the pre-padded kernel gradient to time.
  assert [name for name, value in first.timings.items() if 'ours_padded' in value] == [
      'conv 16x16x8x3x3x4x2']
  for name, value in first.timings.items():  # The faster side was chosen.
    key = tuple(int(size) for size in name.split()[1].split('x'))
    chosen = first.conv_choices.get(key, first.batch_norm_choices.get(key))
    ours = min(value['ours'], value.get('ours_padded', value['ours']))
    assert chosen == (ours <= value['stock']), name
  assert first.padded_filter_choices == {(16, 16, 8, 3, 3, 4, 2): (
      first.timings['conv 16x16x8x3x3x4x2']['ours_padded'] <
      first.timings['conv 16x16x8x3x3x4x2']['ours'])}
  second = kernel_choice.choose_kernels(model, mode='auto', image_size=IMAGE_SIZE,
                                        batch=BATCH, cache_path=cache_path)
  assert second.measured_seconds == 0 and second.timings == first.timings
  # Another batch is another key: measured anew, not read from the cache.
  other = kernel_choice.choose_kernels(model, mode='auto', image_size=IMAGE_SIZE,
                                       batch=BATCH * 2, cache_path=cache_path, repeats=1,
                                       apply=False)
  assert other.measured_seconds > 0
  # Gradient caching times ours with its input-gradient kernels reused: another key.
  reused = kernel_choice.choose_kernels(model, mode='auto', image_size=IMAGE_SIZE,
                                        batch=BATCH, cache_path=cache_path, repeats=1,
                                        apply=False, reused_gradient_kernels=True)
  assert reused.measured_seconds > 0 and set(reused.timings) == set(first.timings)
  with open(cache_path) as cache_file:
    assert any('/reused/conv ' in key for key in json.load(cache_file))


def test_small_steps_and_short_runs_keep_ours_and_bad_mode_is_named(tmp_path):
  choice = kernel_choice.choose_kernels(_model(), mode='auto', image_size=IMAGE_SIZE,
                                        batch=8, cache_path='')
  assert (choice.conv_choices, choice.default) == ({}, True) and 'too small' in choice.reason
  cache_path = str(tmp_path / 'kernels.json')
  short = kernel_choice.choose_kernels(_model(), mode='auto', image_size=IMAGE_SIZE,
                                       batch=BATCH, cache_path=cache_path, total_steps=10)
  assert short.conv_choices == {} and 'too short' in short.reason
  assert not (tmp_path / 'kernels.json').exists()
  with pytest.raises(ValueError, match='--cpu_kernels'):
    config_lib.validate(config_lib.Config(train=config_lib.TrainConfig(
        cpu_kernels='fast', model_dir='/x', train_steps=1)))


def test_cpu_description_has_flags():
  description = kernel_choice.cpu_description()
  assert isinstance(description['flags'], list)


def test_isa_limit_is_recorded_and_keys_its_own_cached_timings(monkeypatch):
  """oneDNN capped to another instruction set runs other kernels: its timings must not
  be read from (or overwrite) the uncapped ones; the cap is in every bench's CPU record."""
  for name in precision.ISA_LIMIT_ENVS:
    monkeypatch.delenv(name, raising=False)
  uncapped = kernel_choice.cpu_identity()
  assert kernel_choice.cpu_description()['isa_limit'] is None
  monkeypatch.setenv('ONEDNN_MAX_CPU_ISA', 'avx2')
  assert kernel_choice.cpu_description()['isa_limit'] == 'AVX2'
  capped = kernel_choice.cpu_identity()
  assert capped != uncapped
  monkeypatch.delenv('ONEDNN_MAX_CPU_ISA')
  monkeypatch.setenv('DNNL_MAX_CPU_ISA', 'AVX2')  # oneDNN's older name, same cap.
  assert kernel_choice.cpu_identity() == capped
  monkeypatch.delenv('DNNL_MAX_CPU_ISA')
  assert kernel_choice.cpu_identity() == uncapped


@pytest.mark.parametrize('jit_compile, cpu_kernels, native', [
    (False, 'auto', True), (False, 'ours', True), (True, 'auto', False),
    (False, 'stock', False)])
def test_native_batch_norm_off_under_xla_and_stock(jit_compile, cpu_kernels, native):
  """The native BN ops have no XLA kernel, and `stock` is TF's kernels everywhere."""
  config = config_lib.Config(
      data=config_lib.DataConfig(image_size=IMAGE_SIZE),
      train=config_lib.TrainConfig(cpu_kernels=cpu_kernels, jit_compile=jit_compile,
                                   train_batch_size=4, model_dir='/x', train_steps=1))
  model = _model()
  try:
    kernel_choice.choose_for_run(config, model, 1, apply=False, total_steps=1)
    assert native_batch_norm.enabled() is native
    types = _gradient_op_types(model)
    if native_batch_norm.usable():
      assert ('NativeBatchNormForward' in types) is native
      assert ('NativeBatchNormBackward' in types) is native
  finally:
    native_batch_norm.set_enabled(True)


def test_cached_timings_choose_native_or_tf_fused_batch_norm(tmp_path):
  """Where the native BN is usable, each fused BN shape takes the faster of it and TF's
  fused kernel; Keras still wins where both are slower."""
  if not native_batch_norm.usable():
    pytest.skip(native_batch_norm.status())
  model = _model()
  cache_path = str(tmp_path / 'kernels.json')
  prefix = kernel_choice._cache_prefix(tf.float32, BATCH)  # pylint: disable=protected-access
  timings = {'conv 16x16x3x3x3x8x1': {'ours': 1.0, 'stock': 2.0},
             'conv 16x16x8x3x3x4x2': {'ours': 1.0, 'stock': 2.0, 'ours_padded': 3.0},
             'bn 16x16x8': {'ours': 1.0, 'stock': 3.0, 'tf_fused': 2.0},
             'bn 8x8x4': {'ours': 2.0, 'stock': 3.0, 'tf_fused': 1.0}}
  with open(cache_path, 'w') as cache_file:
    json.dump({prefix + name: value for name, value in timings.items()}, cache_file)
  choice = kernel_choice.choose_kernels(model, mode='auto', image_size=IMAGE_SIZE,
                                        batch=BATCH, cache_path=cache_path)
  assert choice.batch_norm_choices == {(16, 16, 8): True, (8, 8, 4): True}
  assert choice.native_batch_norm_choices == {(16, 16, 8): True, (8, 8, 4): False}
  assert 'fused BN on 2/2 BN shapes (the native kernel on 1)' in choice.summary()
  types = _gradient_op_types(model)
  assert (types.count('NativeBatchNormForward'), types.count('FusedBatchNormV3')) == (1, 1)
  # Fresh timings of one shape have all three sides.
  measured = kernel_choice.time_batch_norm([8, 8, 4], batch=16, repeats=1)
  assert set(measured) == {'ours', 'stock', 'tf_fused'}
