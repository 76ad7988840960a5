"""hub_export: one export of a real SimCLRModel, checked by three consumers.

Each consumer (tf_keras `hub.KerasLayer`, Keras 3 `TFSMLayer`, `tf.saved_model.load`)
runs in its own process (tests/hub_consumers/*.py) and writes what the export returns;
the tests compare it with the live model in this process (inference and training
mode, same batch, 1e-5), including the gradient and the BN moving-average update.
"""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from hub_export import __main__ as hub_export_main
from tf_simclr import config as config_lib
from tf_simclr import export as export_lib
from tf_simclr.models import SimCLRModel, build_model

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
CONSUMERS = REPO_ROOT / 'tests' / 'hub_consumers'
TOLERANCE = 1e-5
# Training-mode BN over a batch of 4 amplifies float32 reduction-order differences
# (threads differ from run to run) to ~4e-5 in the 3-layer projection head.
TRAINING_TOLERANCE = 1e-4
WEIGHT_DECAY = 1e-4
NUM_CLASSES = 5
BATCH = 4
IMAGE_SIZE = 32


def _run(args, timeout=300, **kwargs) -> subprocess.CompletedProcess:
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONPATH=str(REPO_ROOT))
  return subprocess.run([sys.executable, *map(str, args)], cwd=REPO_ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout, **kwargs)


def _run_consumer(script: str, export_dir, inputs, output) -> dict:
  result = _run([CONSUMERS / script, '--export_dir', export_dir, '--inputs', inputs,
                 '--output', output])
  assert result.returncode == 0, result.stderr[-3000:]
  with np.load(output) as data:
    return dict(data)


def _randomize_batch_norm(model: keras.Model, seed: int) -> None:
  """Non-trivial BN parameters and moving statistics (gamma 0 would hide blocks)."""
  rng = np.random.default_rng(seed)
  for variable in model.variables:
    shape = tuple(variable.shape)
    if variable.path.endswith(('gamma', 'moving_variance')):
      variable.assign(rng.uniform(0.5, 1.5, shape).astype('float32'))
    elif variable.path.endswith(('beta', 'moving_mean')):
      variable.assign(rng.normal(0, 0.1, shape).astype('float32'))


def _tiny_model() -> SimCLRModel:
  return SimCLRModel(resnet_depth=18, cifar_stem=True, proj_out_dim=16, num_classes=NUM_CLASSES,
                     lineareval_while_pretraining=True)


def _numpy_dict(outputs) -> dict:
  return {name: np.asarray(value) for name, value in outputs.items()}


@pytest.fixture(scope='module')
def export(tmp_path_factory):
  """Exports a tiny SimCLRModel once; returns paths and the live model's references."""
  keras.utils.set_random_seed(0)
  root = tmp_path_factory.mktemp('hub_export')
  model = _tiny_model()
  _randomize_batch_norm(model, seed=1)
  rng = np.random.default_rng(2)
  images = rng.uniform(0, 1, (BATCH, IMAGE_SIZE, IMAGE_SIZE, 3)).astype('float32')
  other_size_images = rng.uniform(0, 1, (2, 40, 24, 3)).astype('float32')
  labels = np.arange(BATCH) % NUM_CLASSES
  projection = rng.normal(size=(BATCH, 512)).astype('float32')
  uint8_images = rng.integers(0, 256, (BATCH, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
  inputs = root / 'inputs.npz'
  np.savez(inputs, images=images, labels=labels, projection=projection,
           other_size_images=other_size_images, uint8_images=uint8_images)

  export_dir = str(root / 'export')
  started = time.time()
  assert export_lib.export_encoder(model, export_dir, image_size=IMAGE_SIZE,
                                   weight_decay=WEIGHT_DECAY) == export_dir
  export_seconds = time.time() - started

  # References from the live model run as a graph, as the export runs: eager and graph
  # float32 kernels round differently, and training-mode BN over 4 images amplifies it
  # (eager vs graph of the live model alone differ by 4e-4 at proj_head_output).
  # The export computes batch statistics of synchronized BN layers as plain BN does (on
  # one replica they are the same statistics; Keras' synchronized path forms
  # E[x^2] - E[x]^2, off by ~1e-4 in the batch-4 projection head), so the reference does.
  layers = model._flatten_layers(include_self=False, recursive=True)  # pylint: disable=protected-access
  for layer in layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      layer.synchronized = False
  run = tf.function(lambda images, training: model(images, training=training))
  encoder_variables = model.encoder.trainable_variables
  reference = {
      'inference': _numpy_dict(run(images, False)),
      'other_size': np.asarray(run(other_size_images, False)['final_avg_pool']),
      # uint8 pixels / 255, in NumPy: what the export must compute from uint8 input.
      'uint8': np.asarray(run((uint8_images / np.float64(255)).astype('float32'),
                              False)['final_avg_pool']),
      'regularization_losses': np.array([
          WEIGHT_DECAY * 0.5 * np.sum(np.asarray(v, np.float64)**2)
          for v in encoder_variables
          if 'batch_normalization' not in v.path and 'bias' not in v.path]),
      'num_variables': len(model.variables),
      'num_trainable_variables': len(encoder_variables),
  }

  @tf.function
  def gradients():
    with tf.GradientTape() as tape:
      features = model(images, training=True)['final_avg_pool']
      loss = tf.reduce_sum(features * projection)
    return tape.gradient(loss, encoder_variables)

  reference['gradients'] = [np.asarray(g) for g in gradients()]
  # The gradient call above was the model's first training call: BN moving averages
  # moved once, as the consumers' first training call moves theirs.
  reference['variables_after_training_call'] = [np.asarray(v) for v in model.variables]
  reference['training'] = _numpy_dict(run(images, True))
  return dict(root=root, export_dir=export_dir, inputs=inputs, reference=reference,
              export_seconds=export_seconds)


def _assert_close(actual, expected, what: str, tolerance: float = TOLERANCE) -> None:
  """Equal to `tolerance`, relative to the tensor's largest magnitude when that is > 1."""
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert actual.shape == expected.shape, f'{what}: shape {actual.shape} != {expected.shape}'
  scale = max(1.0, float(np.abs(expected).max())) if expected.size else 1.0
  np.testing.assert_allclose(actual, expected, rtol=tolerance, atol=tolerance * scale,
                             err_msg=what)


def _assert_endpoints(outputs: dict, prefix: str, expected: dict,
                      tolerance: float = TOLERANCE) -> None:
  names = sorted(key[len(prefix) + 1:] for key in outputs if key.startswith(prefix + '/'))
  assert names == sorted(expected), f'{prefix}: {names}'
  for name in names:
    _assert_close(outputs[f'{prefix}/{name}'], expected[name], f'{prefix}/{name}', tolerance)


# What each wrong input (tests/hub_consumers.bad_inputs, from the BATCH x 32 x 32 x 3
# float images in [0, 1)) must raise, from every consumer and callable.
BAD_INPUT_ERRORS = {
    'one_channel': r'InvalidArgumentError: .*The SimCLR encoder takes images of shape '
                   r'\[batch, height, width, 3\].*got shape\] \[4 32 32 1\].*values in \[0, 1\]',
    'four_channels': r'InvalidArgumentError: .*takes images of shape .*got shape\] \[4 32 32 4\]',
    'pixels_0_255': r'InvalidArgumentError: .*takes float32 RGB values in \[0, 1\]; got values '
                    r'from\] \[[0-9.e-]+\] \[to\] \[25\d[.\d]*\].*For 0-255 pixels divide by 255',
    'mean_std': r'InvalidArgumentError: .*got values from\] \[-[12][.\d]*\] \[to\] \[2[.\d]*\]'
                r'.*do not subtract a mean',
}


def _assert_bad_input_errors(out: dict, callables: tuple[str, ...]) -> None:
  """Every consumer callable raised the export's message for every wrong input."""
  for case, pattern in BAD_INPUT_ERRORS.items():
    for name in callables:
      message = str(out[f'bad/{case}/{name}'])
      assert re.search(pattern, message, re.DOTALL), f'{case} via {name}: {message[:2000]}'


def test_export_layout(export):
  export_dir = pathlib.Path(export['export_dir'])
  assert (export_dir / 'saved_model.pb').is_file()
  assert (export_dir / 'variables' / 'variables.index').is_file()
  # The native BN ops of CPU training are not saved: no consumer could load them.
  assert b'NativeBatchNorm' not in (export_dir / 'saved_model.pb').read_bytes()
  # Written next to export_dir and renamed: no temporary directory is left behind.
  assert sorted(p.name for p in export_dir.parent.iterdir()) == ['export', 'inputs.npz']
  expected = {'initial_conv', 'initial_max_pool', 'block_group1', 'block_group2',
              'block_group3', 'block_group4', 'final_avg_pool', 'ft_hidden',
              'proj_head_output', 'logits_sup'}
  assert set(export['reference']['inference']) == expected
  print(f'export took {export["export_seconds"]:.1f} s')


def test_hub_keras_layer_in_tf_keras(export):
  reference = export['reference']
  out = _run_consumer('hub_keras_consumer.py', export['export_dir'], export['inputs'],
                      export['root'] / 'hub_keras.npz')
  inference, training = reference['inference'], reference['training']
  _assert_close(out['feature_inference'], inference['final_avg_pool'], 'feature inference')
  assert out['feature_inference'].shape == (BATCH, 512)
  _assert_close(out['feature_training'], training['final_avg_pool'], 'feature training',
                TRAINING_TOLERANCE)
  _assert_endpoints(out, 'dict_inference', inference)
  _assert_endpoints(out, 'signature', inference)
  _assert_endpoints(out, 'dict_training', training, TRAINING_TOLERANCE)
  _assert_close(out['output_key/block_group4'], inference['block_group4'], 'output_key')
  after = reference['variables_after_training_call']
  assert len([k for k in out if k.startswith('variables_after_training_call/')]) == len(after)
  for index, value in enumerate(after):
    _assert_close(out[f'variables_after_training_call/{index}'], value, f'variable {index}',
                  TRAINING_TOLERANCE)
  _assert_close(out['regularization_losses'], reference['regularization_losses'],
                'regularization losses')
  # Fine-tuning a tf_keras classifier moved every encoder weight that gets a gradient
  # (all of them, the BN gammas being non-zero) and the BN moving statistics.
  assert out['finetune/trainable_changed'].size == reference['num_trainable_variables']
  assert out['finetune/trainable_changed'].all()
  # Exactly the encoder's BN moving statistics (mean and variance of its 21 BN layers)
  # moved: the feature vector does not run the heads.
  changed_names = out['finetune/non_trainable_names'][out['finetune/non_trainable_changed']]
  assert len(changed_names) == 2 * 21
  assert all('moving' in str(name) for name in changed_names), changed_names
  _assert_close(out['uint8/feature'], reference['uint8'], 'uint8 feature')
  _assert_bad_input_errors(out, ('feature', 'signature'))
  assert re.search(BAD_INPUT_ERRORS['pixels_0_255'], str(out['bad/pixels_0_255/fit']), re.S)


def test_keras3_tfsm_layer(export):
  reference = export['reference']
  out = _run_consumer('keras3_consumer.py', export['export_dir'], export['inputs'],
                      export['root'] / 'keras3.npz')
  _assert_endpoints(out, 'dict_inference', reference['inference'])
  _assert_endpoints(out, 'dict_training', reference['training'], TRAINING_TOLERANCE)
  # TFSMLayer takes trainability from each variable: the heads' are trainable too but
  # get no gradient from the feature vector; the encoder's all moved.
  assert out['finetune/trainable_changed'].sum() == reference['num_trainable_variables']
  assert out['finetune/non_trainable_changed'].sum() >= 2 * 21
  assert not np.allclose(out['finetune/serve_after'],
                         reference['inference']['final_avg_pool'], atol=1e-3)
  _assert_close(out['uint8/feature'], reference['uint8'], 'uint8 feature')
  _assert_bad_input_errors(out, ('serve',))
  assert re.search(BAD_INPUT_ERRORS['pixels_0_255'], str(out['bad/pixels_0_255/fit']), re.S)


@pytest.mark.slow
def test_plain_saved_model_load(export):
  reference = export['reference']
  out = _run_consumer('saved_model_consumer.py', export['export_dir'], export['inputs'],
                      export['root'] / 'saved_model.npz')
  inference = reference['inference']
  _assert_close(out['feature_inference'], inference['final_avg_pool'], 'feature')
  _assert_close(out['other_size/feature_inference'], reference['other_size'], '40x24 input')
  for prefix in ('dict_inference', 'serve', 'signature'):
    _assert_endpoints(out, prefix, inference)
  _assert_endpoints(out, 'train_call', reference['training'], TRAINING_TOLERANCE)
  assert int(out['image_size']) == IMAGE_SIZE
  assert int(out['num_variables']) == reference['num_variables']
  assert int(out['num_trainable_variables']) == reference['num_trainable_variables']
  _assert_close(out['regularization_losses'], reference['regularization_losses'], 'reg')
  gradients = reference['gradients']
  assert len([k for k in out if k.startswith('gradient/')]) == len(gradients)
  for index, gradient in enumerate(gradients):
    scale = max(1.0, float(np.abs(gradient).max()))
    np.testing.assert_allclose(out[f'gradient/{index}'], gradient, rtol=1e-4,
                               atol=1e-5 * scale, err_msg=f'gradient {index}')
  _assert_close(out['uint8/feature'], reference['uint8'], 'uint8 feature')
  _assert_close(out['uint8/serve'], reference['uint8'], 'uint8 serve')
  # The serving signature is one float32 function (TF Serving's contract): TF's own
  # dtype error, which names the expected dtype.
  assert 'expected to be a float tensor but is a uint8 tensor' in str(out['uint8/signature'])
  _assert_bad_input_errors(out, ('feature', 'dict', 'serve', 'train_call', 'signature'))
  # Other ranks and dtypes: TF's own error (no function takes them), as before.
  assert 'Could not find matching concrete function' in str(out['no_batch_axis/feature'])
  assert 'Could not find matching concrete function' in str(out['float64/feature'])
  assert str(out['input_contract']) == export_lib.INPUT_CONTRACT


@pytest.mark.slow  # ~25 s; the README example, run as written.
def test_example_downstream_runs(export):
  result = _run([REPO_ROOT / 'hub_export' / 'example_downstream.py', '--export_dir',
                 export['export_dir'], '--epochs=1'])
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'predicted classes' in result.stdout, result.stdout


# --- Export mechanics on a small functional model (no consumers needed). ---


class _Padding(keras.layers.Layer):
  """Adds a large unused non-trainable weight (to make saving take a while)."""

  def __init__(self, elements: int, **kwargs):
    super().__init__(**kwargs)
    self.padding = self.add_weight(shape=(elements,), initializer='zeros', trainable=False,
                                   name='padding')

  def call(self, inputs):
    return inputs


def _small_model(extra_weight_elements: int = 0) -> keras.Model:
  """A Keras model returning a dict with 'final_avg_pool' (what export_encoder needs)."""
  images = keras.Input((None, None, 3))
  net = keras.layers.Conv2D(4, 3, name='conv')(images)
  net = keras.layers.BatchNormalization(name='batch_normalization')(net)
  pooled = keras.layers.GlobalAveragePooling2D()(net)
  if extra_weight_elements:
    pooled = _Padding(extra_weight_elements, name='padding_layer')(pooled)
  return keras.Model(images, {'final_avg_pool': pooled, 'block_group4': net})


def test_existing_export_dir_needs_overwrite(tmp_path):
  model = _small_model()
  export_dir = str(tmp_path / 'export')
  export_lib.export_encoder(model, export_dir, image_size=8)
  with pytest.raises(FileExistsError, match='already exists; pass --overwrite'):
    export_lib.export_encoder(model, export_dir)
  export_lib.export_encoder(model, export_dir, image_size=16, overwrite=True)
  assert int(tf.saved_model.load(export_dir).image_size) == 16
  assert sorted(os.listdir(tmp_path)) == ['export']


def test_export_during_training_keeps_newest(tmp_path):
  model = _small_model()
  saved_model_root = tmp_path / 'saved_model'
  stale = saved_model_root / '.7.tmp-somehost-1-abc'  # an earlier killed export
  stale.mkdir(parents=True)
  for step in (5, 10, 15):
    path = export_lib.export_during_training(model, str(tmp_path), step, keep_hub_module_max=2)
    assert path == str(saved_model_root / str(step))
  assert sorted(os.listdir(saved_model_root)) == ['10', '15']
  assert export_lib.latest_export(str(tmp_path)) == str(saved_model_root / '15')
  export_lib.export_during_training(model, str(tmp_path), 20, keep_hub_module_max=0)
  assert sorted(os.listdir(saved_model_root)) == ['10', '15', '20']  # 0 keeps all


def test_killed_export_leaves_no_export_dir(tmp_path):
  """SIGKILL while the variables are being written: export_dir never appears."""
  export_dir = tmp_path / 'export'
  script = (
      'import sys; sys.path.insert(0, sys.argv[2]); sys.path.insert(0, sys.argv[3])\n'
      'from test_hub_export import _small_model\n'
      'from tf_simclr import export as export_lib\n'
      'export_lib.export_encoder(_small_model(extra_weight_elements=150_000_000), sys.argv[1])\n')
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  process = subprocess.Popen([sys.executable, '-c', script, str(export_dir), str(REPO_ROOT),
                              str(REPO_ROOT / 'tests')], env=env, cwd=REPO_ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  deadline = time.time() + 240
  killed_while_writing = False
  while time.time() < deadline and process.poll() is None:
    # Variables being written, in the temporary directory (or, were the export not
    # atomic, in export_dir itself).
    data_files = list(tmp_path.glob('*/variables/variables.data-*'))
    if data_files:
      process.send_signal(signal.SIGKILL)
      killed_while_writing = True
      break
    time.sleep(0.002)
  process.wait(timeout=60)
  assert killed_while_writing, (
      f'export finished before it could be killed: {process.stderr.read()[-2000:]}')
  assert not export_dir.exists()
  assert [p.name for p in tmp_path.iterdir() if p.name.startswith('.export.tmp-')]
  # A later export to the same place is not blocked by the leftover.
  export_lib.export_encoder(_small_model(), str(export_dir))
  assert (export_dir / 'saved_model.pb').is_file()


# --- The command line. ---


def _write_run(model_dir: pathlib.Path, seed: int = 0) -> SimCLRModel:
  """A run directory as training leaves it: flags.json and a checkpoint of the model."""
  config = config_lib.Config(
      model=config_lib.ModelConfig(resnet_depth=18, proj_out_dim=16),
      data=config_lib.DataConfig(dataset='cifar10', image_size=IMAGE_SIZE),
      optim=config_lib.OptimConfig(weight_decay=WEIGHT_DECAY),
      train=config_lib.TrainConfig(model_dir=str(model_dir), train_steps=1))
  model_dir.mkdir(parents=True, exist_ok=True)
  (model_dir / 'flags.json').write_text(json.dumps(config.flat_dict()))
  keras.utils.set_random_seed(seed)
  model = build_model(config, NUM_CLASSES)
  _randomize_batch_norm(model, seed)
  checkpoint = tf.train.Checkpoint(model=model, global_step=tf.Variable(3, dtype=tf.int64))
  tf.train.CheckpointManager(checkpoint, str(model_dir), max_to_keep=2).save(checkpoint_number=3)
  return model


@pytest.mark.slow
def test_cli_exports_restored_weights(tmp_path):
  model_dir, export_dir = tmp_path / 'run', tmp_path / 'export'
  model = _write_run(model_dir)
  result = _run(['-m', 'hub_export', f'--model_dir={model_dir}', f'--export_dir={export_dir}'])
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'ckpt-3' in result.stdout
  images = np.random.default_rng(3).uniform(0, 1, (2, IMAGE_SIZE, IMAGE_SIZE, 3)).astype('float32')
  loaded = tf.saved_model.load(str(export_dir))
  expected = _numpy_dict(model(images, training=False))
  actual = _numpy_dict(loaded.serve(images))
  assert sorted(actual) == sorted(expected)
  for name in expected:
    _assert_close(actual[name], expected[name], name)
  assert len(loaded.regularization_losses) > 0  # the run's --weight_decay
  assert int(loaded.image_size) == IMAGE_SIZE


def _tree(root):
  return sorted((str(path.relative_to(root)), path.read_bytes() if path.is_file() else None)
                for path in root.rglob('*'))


@pytest.mark.parametrize('case', ['no_model_dir', 'no_flags', 'no_checkpoint', 'bad_checkpoint',
                                  'export_exists', 'overwrite_model_dir', 'overwrite_parent',
                                  'overwrite_other_files', 'overwrite_file'])
def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys, case):
  model_dir, export_dir = tmp_path / 'run', tmp_path / 'export'
  config = config_lib.Config(train=config_lib.TrainConfig(model_dir=str(model_dir),
                                                          train_steps=1))
  if case != 'no_model_dir':
    model_dir.mkdir()
  if case not in ('no_model_dir', 'no_flags'):
    (model_dir / 'flags.json').write_text(json.dumps(config.flat_dict()))
  if case == 'export_exists':
    export_dir.mkdir()
  # --overwrite never deletes what is not an earlier export: the run itself, the
  # folder above it, an export folder with other files in it, a file.
  export_dir = {'overwrite_model_dir': model_dir, 'overwrite_parent': tmp_path}.get(
      case, export_dir)
  if case == 'overwrite_other_files':
    export_lib.export_encoder(_small_model(), str(export_dir))
    (export_dir / 'notes.txt').write_text('mine')
  if case == 'overwrite_file':
    export_dir.write_text('mine')
  args = [f'--model_dir={model_dir}', f'--export_dir={export_dir}']
  if case == 'bad_checkpoint':
    args.append(f'--checkpoint={model_dir}/ckpt-99')
  if case.startswith('overwrite_'):
    args.append('--overwrite')
  expected = {
      'no_model_dir': '--model_dir=',
      'no_flags': 'flags.json not found',
      'no_checkpoint': 'holds no checkpoint',
      'bad_checkpoint': '--checkpoint=',
      'export_exists': 'already exists; pass --overwrite',
      'overwrite_model_dir': 'is a folder holding flags.json, not a SavedModel export',
      'overwrite_parent': 'is a folder holding run, not a SavedModel export',
      'overwrite_other_files': 'not a SavedModel export',
      'overwrite_file': 'is a file, not a SavedModel export',
  }[case]
  before = _tree(tmp_path)
  assert hub_export_main.main(args) == 2
  error = capsys.readouterr().err.strip()
  assert error.startswith('error: ') and expected in error, error
  assert len(error.splitlines()) == 1
  assert _tree(tmp_path) == before


# --- A model trained under MirroredStrategy (synchronized BN), fine-tuned without one. ---


@pytest.mark.slow
def test_mirrored_strategy_export_fine_tunes_without_strategy(tmp_path):
  result = _run([CONSUMERS / 'mirrored_export.py', '--model_dir', tmp_path / 'run',
                 '--inputs', tmp_path / 'inputs.npz', '--reference', tmp_path / 'reference.npz'],
                timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  export_dir = export_lib.latest_export(str(tmp_path / 'run'))
  assert export_dir and export_dir.endswith('/2')
  out = _run_consumer('hub_keras_consumer.py', export_dir, tmp_path / 'inputs.npz',
                      tmp_path / 'hub_keras.npz')
  with np.load(tmp_path / 'reference.npz') as data:
    reference = dict(data)
  _assert_close(out['feature_inference'], reference['inference'], 'feature inference')
  _assert_close(out['feature_training'], reference['training'], 'feature training',
                TRAINING_TOLERANCE)
  assert out['finetune/trainable_changed'].all()
  assert out['finetune/non_trainable_changed'].sum() >= 2 * 21
