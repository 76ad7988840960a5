"""The user's own images: unlabelled image folders (layouts, what needs labels).

Real images: symlinks to files of the CIFAR-10 folder (`cifar10_dir`) in tmp_path.
Decoded pixels are checked against PIL, an independent decoder.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from tf_simclr import config as config_lib
from tf_simclr import unlabelled
from tf_simclr.config import DataConfig
from tf_simclr.data import datasets

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def cifar_files(cifar10_dir: pathlib.Path, count: int, classes=('cat', 'ship')) -> list:
  """`count` real CIFAR-10 test images, alternating between `classes`."""
  return [cifar10_dir / 'test' / classes[i % len(classes)] / f'{i // len(classes):04d}.jpg'
          for i in range(count)]


def link(files, folder: pathlib.Path) -> list:
  folder.mkdir(parents=True, exist_ok=True)
  links = []
  for index, source in enumerate(files):
    target = folder / f'img{index:03d}{source.suffix}'
    target.symlink_to(source)
    links.append(target)
  return links


def _pil_keys(paths) -> set:
  return {np.asarray(Image.open(path).convert('RGB'), np.uint8).tobytes() for path in paths}


def _pipeline_keys(config: DataConfig, split: str) -> list:
  """Decoded uint8 images of one eval pass (no crop at 32 px), padding left out."""
  input_fn = datasets.build_input_fn(config, split=split, is_training=False,
                                     train_mode='finetune', global_batch_size=8)
  keys = []
  for batch in input_fn(None):
    for image, mask in zip(batch['image'].numpy(), batch['mask'].numpy()):
      if mask:
        keys.append(np.round(image * 255).astype(np.uint8).tobytes())
  return keys


def test_unlabelled_layouts_read_every_image_recursively(cifar10_dir, tmp_path):
  files = cifar_files(cifar10_dir, 24)
  flat = link(files[:12], tmp_path / 'flat' / 'train')                       # ROOT/train/*.jpg
  nested = (link(files[:5], tmp_path / 'nested' / 'train' / '2024' / '05')    # deeper folders
            + link(files[5:12], tmp_path / 'nested' / 'train' / '2025' / '01' / 'x'))
  single = link(files[:12], tmp_path / 'single' / 'train' / 'all')           # one folder
  mixed = link(files[:4], tmp_path / 'mixed' / 'train') + link(              # loose + folders
      files[4:12], tmp_path / 'mixed' / 'train' / 'a')
  (tmp_path / 'flat' / 'train' / 'notes.txt').write_text('not an image')
  for name, paths in (('flat', flat), ('nested', nested), ('single', single),
                      ('mixed', mixed)):
    config = DataConfig(dataset='image_folder', data_dir=str(tmp_path / name),
                        train_split='train', eval_split='train', image_size=32)
    info = datasets.get_dataset_info(config)
    assert not info.labelled and info.num_classes == 0, name
    assert info.num_train_examples == 12, name
    assert info.labels_note.startswith('auto: '), info.labels_note
    keys = _pipeline_keys(config, 'train')
    assert len(keys) == 12 and set(keys) == _pil_keys(paths), name
  assert datasets.get_dataset_info(DataConfig(
      dataset='image_folder', data_dir=str(tmp_path / 'flat'), eval_split='train')
  ).num_skipped_files == 1
  # Pretraining batches: two views, labels of width 0.
  input_fn = datasets.build_input_fn(
      DataConfig(dataset='image_folder', data_dir=str(tmp_path / 'nested'), image_size=16,
                 eval_split='train'),
      split='train', is_training=True, train_mode='pretrain', global_batch_size=4, seed=1)
  batch = next(iter(input_fn(None)))
  assert batch['image'].shape == (8, 16, 16, 3) and batch['label'].shape == (4, 0)


def test_layout_choice_auto_folders_none(cifar10_dir, tmp_path):
  files = cifar_files(cifar10_dir, 12)
  link(files[0::2], tmp_path / 'classes' / 'train' / 'cat')
  link(files[1::2], tmp_path / 'classes' / 'train' / 'ship')
  link(files[:6], tmp_path / 'flat' / 'train')
  labelled = datasets.get_dataset_info(DataConfig(
      dataset='image_folder', data_dir=str(tmp_path / 'classes'), eval_split='train'))
  assert labelled.labelled and labelled.class_names == ('cat', 'ship')
  assert labelled.labels_note == 'auto: 2 class folders'
  forced_none = datasets.get_dataset_info(DataConfig(
      dataset='image_folder', data_dir=str(tmp_path / 'classes'), eval_split='train',
      image_folder_labels='none'))
  assert not forced_none.labelled and forced_none.num_train_examples == 12
  with pytest.raises(FileNotFoundError) as error:  # Asked for classes, there are none.
    datasets.get_dataset_info(DataConfig(
        dataset='image_folder', data_dir=str(tmp_path / 'flat'), eval_split='train',
        image_folder_labels='folders'))
  assert 'no ROOT/<split>/<class>/ folders' in str(error.value)
  assert '\n' not in str(error.value)


def _config(**train):
  return config_lib.Config(train=config_lib.TrainConfig(model_dir='/tmp/x', **train))


def test_label_needing_features_off_by_default_refused_when_asked():
  config, note = unlabelled.config_for_unlabelled(_config(), set(), where='ROOT')
  assert not config.train.lineareval_while_pretraining
  assert note.startswith('note: ROOT has no labels') and '\n' not in note
  assert '--lineareval_while_pretraining' in note
  off = _config(lineareval_while_pretraining=False)
  assert unlabelled.config_for_unlabelled(off, set()) == (off, '')
  cases = [
      (_config(), {'lineareval_while_pretraining'}, '--lineareval_while_pretraining needs'),
      (_config(train_mode='finetune'), set(), '--train_mode=finetune needs labels'),
      (config_lib.replace(_config(), knn={'knn_every_steps': 5}), {'knn_every_steps'},
       '--knn_every_steps=5 needs labels'),
      (config_lib.replace(_config(), knn={'knn_at_eval': True}), {'knn_at_eval'},
       '--knn_at_eval needs labels'),
  ]
  for config, explicit, text in cases:
    with pytest.raises(ValueError) as error:
      unlabelled.config_for_unlabelled(config, explicit, where='ROOT')
    assert str(error.value).startswith(text) and '\n' not in str(error.value)


def _run(*args, timeout=600):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  env.pop('TF_CONFIG', None)
  return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def _run_command(data_dir, model_dir, *extra):
  return ['run.py', '--dataset=image_folder', f'--data_dir={data_dir}',
          '--train_split=train', '--eval_split=train[:16]', '--image_size=16',
          '--resnet_depth=18', '--proj_out_dim=16', '--train_batch_size=8',
          '--eval_batch_size=8', '--train_steps=2', '--checkpoint_steps=2',
          '--warmup_epochs=0', '--use_blur=False', '--export_hub_module=never',
          f'--model_dir={model_dir}', *extra]


@pytest.mark.slow
def test_cli_refuses_label_flags_on_an_unlabelled_folder(cifar10_dir, tmp_path):
  link(cifar_files(cifar10_dir, 16), tmp_path / 'photos' / 'train')
  refused = _run(*_run_command(tmp_path / 'photos', tmp_path / 'refused',
                               '--lineareval_while_pretraining=true'))
  assert refused.returncode == 2, refused.stderr[-2000:]
  lines = refused.stderr.strip().splitlines()
  assert lines[-1].startswith('error: --lineareval_while_pretraining needs labels, but '
                              f'--data_dir={tmp_path / "photos"} (auto: image files directly')
  assert not (tmp_path / 'refused').exists()


@pytest.mark.slow  # ~40 s idle (two training steps and an eval in a subprocess)
def test_cli_pretrains_on_an_unlabelled_folder(cifar10_dir, tmp_path):
  link(cifar_files(cifar10_dir, 48), tmp_path / 'photos' / 'train' / 'holiday')
  done = _run(*_run_command(tmp_path / 'photos', tmp_path / 'run',
                            '--mode=train_then_eval'))
  assert done.returncode == 0, done.stderr[-3000:]
  notes = [line for line in done.stderr.splitlines() if line.startswith('note: ')]
  assert any('has no labels' in line and 'auto: one folder (holiday)' in line for line in notes)
  flags = json.loads((tmp_path / 'run' / 'flags.json').read_text())
  assert flags['lineareval_while_pretraining'] is False
  result = json.loads((tmp_path / 'run' / 'result.json').read_text())
  assert result['global_step'] == 2 and 'eval/contrast_acc' in result
  assert 'eval/label_top_1_accuracy' not in result
