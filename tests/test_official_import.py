"""Importing google-research/simclr tf2 checkpoints and SavedModels (tf_simclr.official_import).

The official models are written by the official code itself (../shared/official-simclr-tf2,
unmodified, run in a subprocess by tests/official_model_writer.py) with random weights
and random BN moving statistics; its SavedModel's outputs on fixed inputs are the
reference. Skipped when that folder is absent.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tf_simclr import config as config_lib
from tf_simclr import official_import
from tf_simclr.models import build_model

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
OFFICIAL_DIR = REPO_ROOT.parent / 'shared' / 'official-simclr-tf2'
WRITER = REPO_ROOT / 'tests' / 'official_model_writer.py'
ENDPOINTS = ('initial_conv', 'initial_max_pool', 'block_group1', 'block_group2',
             'block_group3', 'block_group4', 'final_avg_pool', 'proj_head_output',
             'logits_sup')
RTOL = 1e-4

pytestmark = pytest.mark.skipif(not (OFFICIAL_DIR / 'run.py').is_file(),
                                reason=f'official SimCLR tf2 code not found at {OFFICIAL_DIR}')


def _env() -> dict[str, str]:
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONPATH=str(REPO_ROOT))
  env.pop('TF_CONFIG', None)
  return env


def write_official(out_dir: pathlib.Path, *official_flags: str, image_size: int = 16,
                   num_classes: int = 10, saved_model: bool = True) -> pathlib.Path:
  """Runs the official code (subprocess) to write a checkpoint, SavedModel, reference."""
  command = [sys.executable, str(WRITER), f'--official_dir={OFFICIAL_DIR}',
             f'--out_dir={out_dir}', f'--num_classes={num_classes}',
             f'--image_size={image_size}']
  if not saved_model:
    command.append('--no_saved_model')
  result = subprocess.run([*command, '--', *official_flags], env=dict(
      _env(), TF_USE_LEGACY_KERAS='1'), capture_output=True, text=True, timeout=1800)
  assert result.returncode == 0, result.stderr[-3000:]
  return out_dir


def imported_outputs(path: str) -> tuple[official_import.OfficialArchitecture,
                                         dict[str, np.ndarray]]:
  """Our model with the official weights at `path`, run on the reference inputs."""
  source = official_import.find_source(path)
  assert source is not None
  architecture = official_import.read_architecture(source)
  config = official_import.config_for_architecture(config_lib.Config(), architecture)
  model = build_model(config, architecture.num_classes)
  official_import.load_weights(model, source)
  reference = np.load(os.path.join(_run_dir(path), 'reference.npz'))
  outputs = model(tf.constant(reference['inputs']), training=False)
  return architecture, {name: np.asarray(outputs[name]) for name in ENDPOINTS}


def _run_dir(path: str) -> str:
  path = path.rstrip('/')
  while not os.path.exists(os.path.join(path, 'reference.npz')):
    path = os.path.dirname(path)
  return path


def assert_matches_official(run_dir: pathlib.Path, outputs: dict[str, np.ndarray]) -> None:
  reference = np.load(run_dir / 'reference.npz')
  for name in ENDPOINTS:
    expected = reference[name]
    assert outputs[name].shape == expected.shape, name
    error = np.max(np.abs(outputs[name] - expected)) / np.max(np.abs(expected))
    assert error < RTOL, f'{name}: relative error {error:.3g}'


@pytest.fixture(scope='module')
def official_r18(tmp_path_factory) -> pathlib.Path:
  """ResNet-18, CIFAR stem (16 px), 3-layer projection head, 10 classes.

  Written in 33 s wall (26 s CPU) on the shared 2-core machine at load ~10; the whole
  default part of this file took 51 s wall, 32 s CPU there (2026-11-30).
  """
  return write_official(tmp_path_factory.mktemp('official_r18'), '--resnet_depth=18',
                        '--proj_out_dim=32')


def test_sources_resolve_to_the_variables(official_r18):
  checkpoint = official_import.OfficialSource(str(official_r18 / 'ckpt-1'),
                                              str(official_r18 / 'ckpt-1'), 'checkpoint')
  variables = str(official_r18 / 'saved_model' / '1' / 'variables' / 'variables')
  for path, expected in [(official_r18 / 'ckpt-1', checkpoint.prefix),
                         (official_r18 / 'ckpt-1.index', checkpoint.prefix),
                         (official_r18, checkpoint.prefix),
                         (official_r18 / 'saved_model', variables),
                         (official_r18 / 'saved_model' / '1', variables)]:
    source = official_import.find_source(str(path))
    assert source is not None and source.prefix == expected, (path, source)
  with pytest.raises(FileNotFoundError, match='--checkpoint=.* does not exist'):
    official_import.find_source(str(official_r18 / 'ckpt-7'))


@pytest.mark.parametrize('form', ['checkpoint', 'saved_model'])
def test_r18_cifar_import_matches_official(official_r18, form):
  path = official_r18 / ('ckpt-1' if form == 'checkpoint' else 'saved_model')
  architecture, outputs = imported_outputs(str(path))
  assert (architecture.resnet_depth, architecture.width_multiplier, architecture.cifar_stem,
          architecture.sk_ratio, architecture.se_ratio, architecture.num_proj_layers,
          architecture.proj_out_dim, architecture.num_classes) == (18, 1, True, 0, 0, 3, 32, 10)
  assert architecture.describe() == (
      'ResNet-18 1x, sk_ratio 0, se_ratio 0, CIFAR stem, projection head 3 layers -> 32, '
      'supervised head 10 classes')
  assert_matches_official(official_r18, outputs)


def test_flag_contradicting_the_checkpoint_is_named(official_r18):
  source = official_import.find_source(str(official_r18 / 'ckpt-1'))
  architecture = official_import.read_architecture(source)
  config = config_lib.replace(config_lib.Config(), model={'resnet_depth': 50})
  # Not set by the user: the checkpoint decides.
  assert official_import.config_for_architecture(config, architecture).model.resnet_depth == 18
  with pytest.raises(ValueError, match=r'--resnet_depth=50 contradicts .* has resnet_depth 18'):
    official_import.config_for_architecture(config, architecture, explicit={'resnet_depth'})
  config = config_lib.replace(config_lib.Config(), model={'sk_ratio': 0.0625})
  with pytest.raises(ValueError, match=r'--sk_ratio=0.0625 contradicts .* sk_ratio 0'):
    official_import.config_for_architecture(config, architecture, explicit={'sk_ratio'})


def test_model_of_another_architecture_is_refused(official_r18):
  source = official_import.find_source(str(official_r18))
  config = config_lib.replace(config_lib.Config(), model={'resnet_depth': 34, 'cifar_stem': True,
                                                          'proj_out_dim': 32})
  model = build_model(config, 10)
  before = [variable.numpy() for variable in model.encoder.weights[:3]]
  with pytest.raises(ValueError, match=r'does not fit the model .*block_group1 has 2 official '
                     r'blocks and 3 of ours'):
    official_import.load_weights(model, source)
  for old, variable in zip(before, model.encoder.weights[:3]):
    np.testing.assert_array_equal(old, variable.numpy())  # Checked before any copy.


def _hub_export_main(*argv: str) -> tuple[int, str]:
  result = subprocess.run([sys.executable, '-m', 'hub_export', *argv], cwd=REPO_ROOT,
                          env=_env(), capture_output=True, text=True, timeout=600)
  return result.returncode, result.stderr


def test_bad_checkpoints_are_one_line_errors(official_r18, tmp_path):
  # Truncated data file: readable index, data cut short.
  truncated = tmp_path / 'truncated'
  shutil.copytree(official_r18, truncated, ignore=shutil.ignore_patterns('saved_model'))
  data_file = next(truncated.glob('ckpt-1.data-*'))
  data_file.write_bytes(data_file.read_bytes()[:data_file.stat().st_size // 2])
  with pytest.raises(ValueError, match='truncated'):
    imported_outputs(str(truncated / 'ckpt-1'))
  # Garbage index.
  garbage = tmp_path / 'garbage'
  garbage.mkdir()
  (garbage / 'ckpt-1.index').write_bytes(b'not a checkpoint' * 10)
  with pytest.raises(ValueError, match='cannot be read as a checkpoint'):
    official_import.find_source(str(garbage / 'ckpt-1'))
  # A TF1 (name-based) checkpoint of the original code.
  tf1_dir = tmp_path / 'tf1'
  with tf.Graph().as_default():
    tf.compat.v1.get_variable('base_model/conv2d/kernel', [3, 3, 3, 8])
    saver = tf.compat.v1.train.Saver()
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      saver.save(session, str(tf1_dir / 'model.ckpt'), global_step=100)
  with pytest.raises(ValueError, match='is a TF1 checkpoint .* not supported'):
    official_import.find_source(str(tf1_dir))
  # Neither official nor ours.
  other = tf.train.Checkpoint(weights=tf.Variable(tf.ones([3])))
  other_prefix = other.save(str(tmp_path / 'other' / 'ckpt'))
  with pytest.raises(ValueError, match='neither an official SimCLR tf2 model'):
    official_import.find_source(other_prefix)


@pytest.mark.slow  # One CLI process (~1 min under load).
def test_hub_export_cli_refuses_a_truncated_checkpoint(official_r18, tmp_path):
  truncated = tmp_path / 'truncated'
  shutil.copytree(official_r18, truncated, ignore=shutil.ignore_patterns('saved_model'))
  data_file = next(truncated.glob('ckpt-1.data-*'))
  data_file.write_bytes(data_file.read_bytes()[:data_file.stat().st_size // 2])
  export_dir = tmp_path / 'export'
  code, stderr = _hub_export_main(f'--checkpoint={truncated / "ckpt-1"}',
                                  f'--export_dir={export_dir}')
  lines = [line for line in stderr.splitlines() if line.startswith('error:')]
  assert code == 2 and len(lines) == 1 and 'truncated' in lines[0], stderr[-2000:]
  assert not export_dir.exists() and not list(tmp_path.glob('.export*'))


# --- Slow: ResNet-50 variants (each written by the official code in ~2-4 min idle). ---

# name: (official flags, expected (sk_ratio, se_ratio, classes)).
SLOW_CONFIGS = {
    'r50_1x': (('--resnet_depth=50',), (0.0, 0.0, 10)),
    'r50_1x_sk_1000_classes': (('--resnet_depth=50', '--sk_ratio=0.0625'), (0.0625, 0.0, 1000)),
    'r50_1x_se': (('--resnet_depth=50', '--se_ratio=0.25'), (0.0, 0.25, 10)),
}


@pytest.fixture(scope='module')
def official_r50(tmp_path_factory):
  """{config name: directory}, each written on first use (48 px, ImageNet stem)."""
  written = {}

  def get(name: str) -> pathlib.Path:
    if name not in written:
      official_flags, (_, _, num_classes) = SLOW_CONFIGS[name]
      written[name] = write_official(tmp_path_factory.mktemp(name), *official_flags,
                                     image_size=48, num_classes=num_classes)
    return written[name]

  return get


@pytest.mark.slow  # 8-12 min each on the shared 2-core machine at load ~20 (2026-11-30).
@pytest.mark.parametrize('name', list(SLOW_CONFIGS))
def test_r50_variants_match_official(official_r50, name):
  run_dir = official_r50(name)
  for path in (run_dir / 'ckpt-1', run_dir / 'saved_model'):
    architecture, outputs = imported_outputs(str(path))
    assert architecture.resnet_depth == 50 and not architecture.cifar_stem
    assert (architecture.sk_ratio, architecture.se_ratio,
            architecture.num_classes) == SLOW_CONFIGS[name][1]
    assert_matches_official(run_dir, outputs)


def _run_py(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, str(REPO_ROOT / 'run.py'), *args], cwd=REPO_ROOT,
                        env=_env(), capture_output=True, text=True, timeout=1200)


@pytest.mark.slow  # 17 min at load ~20 (2026-11-30): four CLI runs, one tf_keras consumer.
def test_finetune_eval_and_hub_export_of_an_official_model(official_r18, cifar10_dir,
                                                            tmp_path):
  data = ['--dataset=image_folder', f'--data_dir={cifar10_dir}', '--image_size=16',
          '--train_split=train[:64]', '--eval_split=test[:32]', '--train_batch_size=16',
          '--eval_batch_size=16']
  # Fine-tune from the SavedModel, with the official fine-tuning flags.
  model_dir = tmp_path / 'finetune'
  result = _run_py(*data, '--train_mode=finetune', f'--checkpoint={official_r18}/saved_model',
                   '--zero_init_logits_layer', '--fine_tune_after_block=2',
                   '--ft_proj_selector=1', '--train_steps=2', '--checkpoint_steps=2',
                   '--warmup_epochs=0',
                   '--export_hub_module=never', f'--model_dir={model_dir}')
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'official SimCLR tf2 saved model: ResNet-18 1x' in result.stdout
  assert 'supervised head zeroed (--zero_init_logits_layer)' in result.stdout
  assert (model_dir / 'ckpt-2.index').exists()
  written = json.loads((model_dir / 'flags.json').read_text())
  assert (written['resnet_depth'], written['cifar_stem'], written['proj_out_dim']) == (18, True, 32)
  # The frozen stem kept the official weights; block_group4 trained.
  source = official_import.find_source(str(official_r18 / 'ckpt-1'))
  architecture = official_import.read_architecture(source)
  config = official_import.config_for_architecture(config_lib.replace(
      config_lib.Config(), model={'ft_proj_selector': 1},
      train={'train_mode': 'finetune', 'fine_tune_after_block': 2}), architecture)
  official_model, finetuned = build_model(config, 10), build_model(config, 10)
  official_import.load_weights(official_model, source)
  tf.train.Checkpoint(model=finetuned).restore(str(model_dir / 'ckpt-2')).expect_partial()
  for layer_name, frozen in (('stem_conv2d', True), ('block_group2', True),
                             ('block_group4', False)):
    before = official_model.encoder.get_layer(layer_name).weights[0].numpy()
    after = finetuned.encoder.get_layer(layer_name).weights[0].numpy()
    assert np.array_equal(before, after) == frozen, layer_name

  # Evaluate the official model as it is (its own 10-class head).
  eval_dir = tmp_path / 'eval'
  result = _run_py(*data, '--mode=eval', f'--checkpoint={official_r18}/ckpt-1',
                   f'--model_dir={eval_dir}')
  assert result.returncode == 0, result.stderr[-3000:]
  scores = json.loads((eval_dir / 'result.json').read_text())
  assert scores['num_examples'] == 32 and 0 <= scores['eval/label_top_1_accuracy'] <= 1

  # A flag against the checkpoint: one line, exit 2, nothing written.
  bad_dir = tmp_path / 'bad'
  result = _run_py(*data, '--train_mode=finetune', f'--checkpoint={official_r18}',
                   '--resnet_depth=50', '--train_steps=1', f'--model_dir={bad_dir}')
  errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
  assert result.returncode == 2 and len(errors) == 1, result.stderr[-2000:]
  assert '--resnet_depth=50 contradicts' in errors[0] and 'resnet_depth 18' in errors[0]
  assert not bad_dir.exists()

  # Our hub export of it, consumed by hub.KerasLayer (tf_keras) and fine-tuned there.
  export_dir = tmp_path / 'export'
  result = subprocess.run([sys.executable, '-m', 'hub_export', f'--checkpoint={official_r18}',
                           f'--export_dir={export_dir}'], cwd=REPO_ROOT, env=_env(),
                          capture_output=True, text=True, timeout=1200)
  assert result.returncode == 0, result.stderr[-3000:]
  reference = np.load(official_r18 / 'reference.npz')
  inputs = tmp_path / 'inputs.npz'
  np.savez(inputs, images=reference['inputs'], labels=np.arange(len(reference['inputs'])) % 2)
  output = tmp_path / 'consumer.npz'
  result = subprocess.run([sys.executable, str(REPO_ROOT / 'tests' / 'hub_consumers' /
                                               'hub_keras_consumer.py'),
                           f'--export_dir={export_dir}', f'--inputs={inputs}',
                           f'--output={output}', '--finetune_steps=2'],
                          cwd=REPO_ROOT, env=_env(), capture_output=True, text=True,
                          timeout=1200)
  assert result.returncode == 0, result.stderr[-3000:]
  consumed = np.load(output)
  expected = reference['final_avg_pool']
  error = np.max(np.abs(consumed['feature_inference'] - expected)) / np.max(np.abs(expected))
  assert error < RTOL, error
  assert consumed['finetune/trainable_changed'].all()
