"""Remote model_dir / export_dir: everything through tf.io.gfile, checked on ram://.

TF's in-process ram:// file system stands in for gs:// (DESIGN.md). A path handled
with `os`/`open` instead of tf.io.gfile fails there, or creates a local `./ram:/...`
folder, which these tests look for in the working directory.
"""

import csv
import dataclasses
import io
import json
import logging
import os
import subprocess
import sys
import uuid
from typing import Any

import numpy as np
import pytest
import tensorflow as tf

from tests import reliability_helpers as helpers
from tf_simclr import checkpoints
from tf_simclr import embed
from tf_simclr import export as export_lib
from tf_simclr import run_dir
from tf_simclr.config import DataConfig
from tf_simclr.data import datasets


@pytest.fixture
def ram_dir(tmp_path, monkeypatch):
  """A fresh ram:// folder; the working directory is an empty tmp_path."""
  monkeypatch.chdir(tmp_path)
  root = f'ram://test-{uuid.uuid4().hex[:8]}'
  yield root
  if tf.io.gfile.exists(root):
    tf.io.gfile.rmtree(root)
  assert not os.listdir(tmp_path), 'a ram:// path went to the local disk'


def test_checkpoint_files_on_a_remote_file_system(ram_dir):
  model_dir = ram_dir + '/run'
  step = tf.Variable(0, dtype=tf.int64)
  checkpoint = tf.train.Checkpoint(weights=tf.Variable(tf.ones([3])), global_step=step)
  manager = tf.train.CheckpointManager(checkpoint, model_dir, max_to_keep=3)
  for number in (1, 2):
    step.assign(number)
    manager.save(checkpoint_number=number)
  assert checkpoints.latest_complete_checkpoint(model_dir) == model_dir + '/ckpt-2'
  assert checkpoints.resolve_checkpoint(model_dir + '/ckpt-1') == model_dir + '/ckpt-1'
  assert checkpoints.checkpoint_step(model_dir + '/ckpt-1') == 1
  assert checkpoints.checkpoint_has_object(model_dir + '/ckpt-2', ('weights',))
  # A save killed midway: its temp folder, an orphan shard, a state-file temporary.
  tf.io.gfile.makedirs(model_dir + '/ckpt-3_temp')
  for name in ('ckpt-3_temp/part-00000-of-00001', 'ckpt-4.data-00000-of-00001',
               'checkpoint.tmp1a2b3c'):
    with tf.io.gfile.GFile(f'{model_dir}/{name}', 'w') as partial:
      partial.write('x')
  tf.io.gfile.remove(model_dir + '/ckpt-2.data-00000-of-00001')  # ckpt-2 incomplete now
  assert checkpoints.latest_complete_checkpoint(model_dir) == model_dir + '/ckpt-1'
  removed = checkpoints.remove_partial_saves(model_dir)
  assert sorted(os.path.basename(path) for path in removed) == [
      'checkpoint.tmp1a2b3c', 'ckpt-3_temp', 'ckpt-4.data-00000-of-00001']
  # result.json / flags.json: atomic, no temporary left, not on the local disk.
  run_dir.write_json_atomic(model_dir + '/result.json', {'accuracy': np.float32(0.5)})
  run_dir.write_json_atomic(model_dir + '/result.json', {'accuracy': np.float32(0.75)})
  with tf.io.gfile.GFile(model_dir + '/result.json') as result_file:
    assert json.load(result_file) == {'accuracy': 0.75}
  assert sorted(tf.io.gfile.listdir(model_dir)) == [
      'checkpoint', 'ckpt-1.data-00000-of-00001', 'ckpt-1.index', 'ckpt-2.index',
      'result.json']


def test_export_on_a_remote_file_system(ram_dir):
  """ram:// renames a folder's entry without its files: the export is copied instead."""
  from tests.test_hub_export import _small_model  # pylint: disable=g-import-not-at-top
  model = _small_model()
  export_dir = ram_dir + '/exports/small'
  export_lib.export_encoder(model, export_dir, image_size=8)
  export_lib.export_encoder(model, export_dir, image_size=16, overwrite=True)
  assert export_lib.is_saved_model_export(export_dir)
  assert tf.io.gfile.listdir(ram_dir + '/exports') == ['small']  # no temporaries left
  loaded = tf.saved_model.load(export_dir)
  assert int(loaded.image_size) == 16
  images = np.random.default_rng(0).uniform(size=(2, 8, 8, 3)).astype(np.float32)
  expected = model(images, training=False)['final_avg_pool'].numpy()
  np.testing.assert_allclose(loaded(images).numpy(), expected, rtol=1e-5, atol=1e-6)


def _write_remote_image(path: str, pixels: np.ndarray) -> bytes:
  data = tf.io.encode_png(pixels).numpy()
  tf.io.gfile.makedirs(os.path.dirname(path))
  with tf.io.gfile.GFile(path, 'wb') as image_file:
    image_file.write(data)
  return data


def _eval_examples(config, split: str, channels: int = 0) -> list[tuple[Any, int]]:
  """(image bytes rounded to uint8, label) of every example the eval pipeline yields;
  with `channels`, the uint8 image array instead of its bytes."""
  input_fn = datasets.build_input_fn(config, split=split, is_training=False,
                                     train_mode='finetune', global_batch_size=4)
  examples = []
  for batch in input_fn(None):
    for image, label, mask in zip(batch['image'].numpy(), batch['label'].numpy(),
                                  batch['mask'].numpy()):
      if mask:
        pixels = np.round(image * 255).astype(np.uint8)
        examples.append((pixels if channels else pixels.tobytes(),
                         int(np.argmax(label)) if label.size else -1))
  return examples


def test_image_folder_and_embed_on_a_remote_file_system(ram_dir, caplog):
  """--data_dir and embed's --images / --out on ram://, as for gs:// (~5 s idle).

  The reference is what the test wrote: each PNG's pixels and its class folder.
  """
  from tests.test_hub_export import _small_model  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  data_dir = ram_dir + '/data'
  written = {'train': [], 'test': []}  # (pixels bytes, label)
  for split, per_class in (('train', 4), ('test', 2)):
    for label, class_name in enumerate(('ant', 'bee', 'cat')):
      for index in range(per_class):
        pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        data = _write_remote_image(f'{data_dir}/{split}/{class_name}/{index}.png', pixels)
        written[split].append((pixels.tobytes(), label))
  with tf.io.gfile.GFile(f'{data_dir}/train/ant/cut.png', 'wb') as cut_file:
    cut_file.write(data[:len(data) // 2])  # A truncated PNG: named and skipped.
  with tf.io.gfile.GFile(f'{data_dir}/train/bee/notes.txt', 'w') as notes_file:
    notes_file.write('not an image')
  config = DataConfig(dataset='image_folder', data_dir=data_dir + '/', train_split='train',
                      eval_split='test', image_size=8)
  with caplog.at_level(logging.WARNING):
    info = datasets.get_dataset_info(config)
  assert (info.num_train_examples, info.num_eval_examples) == (12, 6)
  assert info.class_names == ('ant', 'bee', 'cat') and info.num_skipped_files == 2
  assert f'skipped {data_dir}/train/ant/cut.png: truncated or corrupt' in caplog.text
  for split in ('train', 'test'):
    assert sorted(_eval_examples(config, split)) == sorted(written[split])
  # Slices: shuffled before slicing (every class in a half), together the whole split.
  first, second = (_eval_examples(config, split) for split in ('train[:50%]', 'train[50%:]'))
  assert len(first) == 6 and {label for _, label in first} == {0, 1, 2}
  assert sorted(first + second) == sorted(written['train'])
  # Unlabelled, read recursively.
  unlabelled = dataclasses.replace(config, image_folder_labels='none')
  assert datasets.get_dataset_info(unlabelled).num_classes == 0
  assert sorted(image for image, _ in _eval_examples(unlabelled, 'test')) == sorted(
      image for image, _ in written['test'])
  # python -m tf_simclr.embed with the export, the images and the output on ram://.
  model = _small_model()
  export_dir = ram_dir + '/export'
  export_lib.export_encoder(model, export_dir, image_size=8)
  out = ram_dir + '/out'
  assert embed.main([f'--export_dir={export_dir}', f'--images={data_dir}/train',
                     f'--out={out}', '--batch_size=5']) == 0
  with tf.io.gfile.GFile(out + '/embeddings.npy', 'rb') as npy_file:
    embeddings = np.load(io.BytesIO(npy_file.read()))
  with tf.io.gfile.GFile(out + '/files.csv') as files_file:
    rows = list(csv.reader(files_file))[1:]
  with tf.io.gfile.GFile(out + '/skipped.csv') as skipped_file:
    skipped = list(csv.reader(skipped_file))[1:]
  assert sorted(path.rsplit('/', 1)[1] for path, _ in skipped) == ['cut.png', 'notes.txt']
  assert [row[2] for row in rows] == ['ant'] * 4 + ['bee'] * 4 + ['cat'] * 4
  images = np.stack([np.frombuffer(pixels, np.uint8).reshape(8, 8, 3)
                     for pixels, _ in written['train']]).astype(np.float32) / 255
  expected = model(images, training=False)['final_avg_pool'].numpy()
  np.testing.assert_allclose(embeddings, expected, rtol=1e-5, atol=1e-6)


def _idx_bytes(array: np.ndarray) -> bytes:
  """The idx format of uint8 arrays: 0, 0, 0x08, ndim, big-endian sizes, data."""
  header = bytes([0, 0, 8, array.ndim]) + b''.join(
      int(size).to_bytes(4, 'big') for size in array.shape)
  return header + array.astype(np.uint8).tobytes()


def test_fashion_mnist_idx_files_on_a_remote_file_system(ram_dir):
  """--dataset=fashion_mnist_local --data_dir=ram://...: .gz and plain idx files."""
  import gzip  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(1)
  written = {}
  tf.io.gfile.makedirs(ram_dir + '/fm')
  for split, prefix, count, compress in (('train', 'train', 6, True), ('test', 't10k', 4, False)):
    images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, count, dtype=np.uint8)
    written[split] = sorted((image.tobytes(), int(label)) for image, label in zip(images, labels))
    for name, array in ((f'{prefix}-images-idx3-ubyte', images),
                        (f'{prefix}-labels-idx1-ubyte', labels)):
      data = _idx_bytes(array)
      with tf.io.gfile.GFile(f'{ram_dir}/fm/{name}' + ('.gz' if compress else ''), 'wb') as f:
        f.write(gzip.compress(data) if compress else data)
  config = DataConfig(dataset='fashion_mnist_local', data_dir=ram_dir + '/fm',
                      train_split='train', eval_split='test', image_size=28)
  info = datasets.get_dataset_info(config)
  assert (info.num_train_examples, info.num_eval_examples) == (6, 4)
  for split in ('train', 'test'):
    read = sorted((image[..., 0].tobytes(), label) for image, label in
                  _eval_examples(config, split, channels=3))
    assert read == written[split]


@pytest.mark.slow
def test_run_resume_eval_and_hub_export_on_ram(tmp_path):
  """Real run.py training runs with model_dir and export_dir on ram:// (one process).

  ~90 s on 2 idle cores (TF start, 2 short trainings of ResNet-18 at 16 px with an
  export per checkpoint, eval, 2 exports through `python -m hub_export`).
  """
  data = helpers.write_image_folder(tmp_path / 'data', per_class=8)
  work_dir = tmp_path / 'cwd'
  work_dir.mkdir()
  result = subprocess.run(
      [sys.executable, str(helpers.REPO_ROOT / 'tests' / 'remote_storage_check.py'),
       str(data), str(work_dir)], cwd=helpers.REPO_ROOT, env=helpers.environment(),
      capture_output=True, text=True, timeout=900)
  lines = [line for line in result.stdout.splitlines() if line.startswith('REPORT ')]
  assert lines, result.stdout[-3000:] + result.stderr[-3000:]
  report = json.loads(lines[-1][len('REPORT '):])
  assert result.returncode == 0, (report, result.stderr[-3000:])
  first, second = report['first'], report['second']
  assert first['code'] == 0, first
  assert {'flags.json', 'result.json', 'result_2.json', 'ckpt-2.index',
          'saved_model/2/saved_model.pb'} <= set(report['after_first'])
  # The second command resumed at step 2 instead of starting again.
  assert second['code'] == 0, second
  assert 'Resuming from ram://bucket/runs/r18/ckpt-2.' in second['stdout'], second
  assert 'step 1/3' not in second['stdout'] and 'step 3/3' in second['stdout']
  assert 'note: resuming with changed --train_steps=3 (was 2).' in second['stderr']
  assert report['result']['global_step'] == 3 and report['flags_train_steps'] == 3
  assert 'saved_model/3/saved_model.pb' in report['after_second']
  assert not any(name.startswith('saved_model/2/') for name in report['after_second'])
  # hub_export of a real training checkpoint with a supervised head (2 classes).
  assert report['export_code'] == 0
  assert report['logits_shape'] == [2, 2]
  assert report['export_max_difference'] < 1e-5
  assert report['overwrite_codes'] == [2, 2] and report['overwrite_kept_everything']
  assert report['overwrite_export_code'] == 0 and report['is_export']
  assert report['local_files'] == []
