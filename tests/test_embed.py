"""Model cards of exports and `python -m tf_simclr.embed` on real CIFAR-10 images.

References are independent of the code under test: PIL decodes the images, the loaded
SavedModel (not the embed pipeline) computes the features, the SavedModel's own
variables give the parameter counts, and TensorBoard's projector plugin reads the log.
"""

import csv
import json

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
from tensorboard.plugins.projector import projector_config_pb2
from tensorboard.plugins.projector import projector_plugin
from google.protobuf import text_format

from hub_export import __main__ as hub_export_main
from tests.test_own_images import cifar_files, link
from tf_simclr import config as config_lib
from tf_simclr import embed
from tf_simclr import export as export_lib
from tf_simclr import run_dir
from tf_simclr.export import model_card
from tf_simclr.models import build_model

SIZE = 32


@pytest.fixture(scope='module')
def run_and_export(tmp_path_factory):
  """A run directory (flags.json, a checkpoint, result.json) and its hub export."""
  root = tmp_path_factory.mktemp('card')
  model_dir, export_dir = root / 'run', root / 'export'
  model_dir.mkdir()
  config = config_lib.Config(
      model=config_lib.ModelConfig(resnet_depth=18, proj_out_dim=16),
      data=config_lib.DataConfig(dataset='image_folder', data_dir='/data/photos',
                                 train_split='train', image_size=SIZE),
      train=config_lib.TrainConfig(model_dir=str(model_dir), train_steps=3,
                                   lineareval_while_pretraining=False))
  (model_dir / 'flags.json').write_text(json.dumps(config.flat_dict()))
  model = build_model(config, None)
  tf.train.CheckpointManager(tf.train.Checkpoint(
      model=model, global_step=tf.Variable(3, dtype=tf.int64)), str(model_dir), 1).save(
      checkpoint_number=3)
  run_dir.write_json_atomic(str(model_dir / 'result.json'), json.dumps(
      {'eval/contrast_acc': 0.25, 'global_step': 3, 'num_examples': 40}))
  hub_export_main.export_run(str(model_dir), str(export_dir), license_name='CC-BY-4.0')
  return model_dir, export_dir


def test_every_export_carries_a_model_card(run_and_export):
  model_dir, export_dir = run_and_export
  card = model_card.read_card(str(export_dir))
  loaded = tf.saved_model.load(str(export_dir))
  assert card['parameters']['total'] == sum(int(np.size(v)) for v in loaded.variables)
  assert card['parameters']['encoder_trainable'] == sum(
      int(np.size(v)) for v in loaded.trainable_variables)
  assert card['architecture']['resnet_depth'] == 18 and card['architecture']['cifar_stem']
  assert card['input']['dtype'] == 'float32' and card['input']['range'] == [0.0, 1.0]
  assert card['input']['training_image_size'] == SIZE
  features = loaded(tf.zeros([1, SIZE, SIZE, 3]))
  assert card['outputs']['feature_vector']['shape'] == [None, features.shape[-1]] == [None, 512]
  assert card['training']['dataset'] == 'image_folder' and card['training']['train_steps'] == 3
  assert card['step'] == 3 and card['checkpoint'].endswith('ckpt-3')
  assert card['eval_results'] == {'eval/contrast_acc': 0.25, 'global_step': 3,
                                  'num_examples': 40}
  assert card['license'] == 'CC-BY-4.0'
  assert '--proj_out_dim=16' in card['training_command']
  assert '--resnet_depth=18' in card['training_command']
  readme = (export_dir / 'README.md').read_text()
  assert 'float32 [batch, height, width, 3], RGB, values in [0, 1]' in readme
  assert '| eval/contrast_acc | `0.25` |' in readme and 'Licence: CC-BY-4.0' in readme
  kaggle = json.loads((export_dir / model_card.KAGGLE_JSON).read_text())
  assert kaggle['framework'] == 'tensorFlow2' and kaggle['licenseName'] == 'CC-BY-4.0'


@pytest.mark.slow  # ~15 s idle: one more export.
def test_an_export_without_run_context_still_has_a_card(tmp_path):
  export_lib.export_encoder(build_model(config_lib.Config(
      model=config_lib.ModelConfig(resnet_depth=18), train=config_lib.TrainConfig(
          lineareval_while_pretraining=False)), None).encoder,
      str(tmp_path / 'bare'), image_size=None)
  bare = model_card.read_card(str(tmp_path / 'bare'))
  assert bare['training'] is None and bare['eval_results'] is None
  assert bare['parameters']['total'] == bare['parameters']['encoder_total']


def _reference(loaded, paths, endpoint):
  images = np.stack([np.asarray(Image.open(p).convert('RGB'), np.float32) / 255 for p in paths])
  return loaded.serve(tf.constant(images))[endpoint].numpy().reshape(len(paths), -1)


def _rows(path):
  with open(path, newline='') as csv_file:
    return list(csv.reader(csv_file))[1:]


@pytest.mark.slow
def test_embed_export_and_run_match_the_saved_model(run_and_export, cifar10_dir, tmp_path):
  model_dir, export_dir = run_and_export
  files = cifar_files(cifar10_dir, 48)
  cats = link(files[0::2], tmp_path / 'images' / 'cat')
  ships = link(files[1::2], tmp_path / 'images' / 'ship')
  (tmp_path / 'images' / 'ship' / 'broken.jpg').write_text('<html>not a JPEG</html>')
  (tmp_path / 'images' / 'cat' / 'notes.txt').write_text('notes')
  out = tmp_path / 'out'
  assert embed.main([f'--export_dir={export_dir}', f'--images={tmp_path / "images"}',
                     f'--out={out}', '--batch_size=20']) == 0
  embeddings = np.load(out / 'embeddings.npy')
  paths = [str(p) for p in cats + ships]
  assert embeddings.dtype == np.float32 and embeddings.shape == (48, 512)
  rows = _rows(out / 'files.csv')
  assert [row[1] for row in rows] == paths and [row[0] for row in rows] == [str(i) for i in range(48)]
  assert [row[2] for row in rows] == ['cat'] * 24 + ['ship'] * 24
  assert sorted(row[0].rsplit('/', 1)[1] for row in _rows(out / 'skipped.csv')) == [
      'broken.jpg', 'notes.txt']
  loaded = tf.saved_model.load(str(export_dir))
  np.testing.assert_allclose(embeddings, _reference(loaded, paths, 'final_avg_pool'),
                             rtol=1e-4, atol=1e-5)
  # The projector log, read by TensorBoard's projector plugin functions.
  config = text_format.Parse((out / 'projector' / 'projector_config.pbtxt').read_text(),
                             projector_config_pb2.ProjectorConfig())
  info = config.embeddings[0]
  tensor_path = str(out / 'projector' / info.tensor_path)
  with pytest.raises(UnicodeDecodeError):  # The plugin then reads it as binary float32.
    projector_plugin._read_tensor_tsv_file(tensor_path)  # pylint: disable=protected-access
  np.testing.assert_array_equal(projector_plugin._read_tensor_binary_file(  # pylint: disable=protected-access
      tensor_path, info.tensor_shape), embeddings)
  metadata = (out / 'projector' / info.metadata_path).read_text().splitlines()
  assert metadata[0] == 'path\tlabel' and metadata[1] == f'{paths[0]}\tcat'
  sprite = np.asarray(Image.open(out / 'projector' / info.sprite.image_path))
  assert list(info.sprite.single_image_dim) == [32, 32] and sprite.shape == (224, 224, 3)
  np.testing.assert_array_equal(sprite[32:64, 64:96],  # Image 9: row 1, column 2.
                                np.asarray(Image.open(paths[9]).convert('RGB')))
  # From the run's checkpoint, another endpoint, a glob: the same numbers.
  out_run = tmp_path / 'out_run'
  assert embed.main([f'--model_dir={model_dir}', f'--images={tmp_path}/images/ship/*.jpg',
                     f'--out={out_run}', '--endpoint=proj_head_output']) == 0
  np.testing.assert_allclose(np.load(out_run / 'embeddings.npy'),
                             _reference(loaded, paths[24:], 'proj_head_output'),
                             rtol=1e-4, atol=1e-5)


def test_embed_bad_input_is_one_line_exit_2(run_and_export, tmp_path, capsys):
  _, export_dir = run_and_export
  (tmp_path / 'empty').mkdir()
  (tmp_path / 'not_images').mkdir()
  for index in range(3):
    (tmp_path / 'not_images' / f'{index}.jpg').write_text('plain text')
  no_card = tmp_path / 'no_card'
  module = tf.Module()
  module.f = tf.function(lambda x: {'final_avg_pool': x}, input_signature=[
      tf.TensorSpec([None, None, None, 3], tf.float32)])
  tf.saved_model.save(module, str(no_card))
  images = tmp_path / 'not_images'
  cases = [
      ([f'--export_dir={export_dir}', f'--images={tmp_path / "empty"}'], 'no image files'),
      ([f'--export_dir={export_dir}', f'--images={images}'],
       'none of the 3 image files could be read'),
      ([f'--export_dir={no_card}', f'--images={images}'], 'has no model card'),
      ([f'--export_dir={export_dir}', f'--images={tmp_path}/nothing*.png'], 'no such folder'),
  ]
  for index, (args, text) in enumerate(cases):
    out = tmp_path / f'out{index}'
    assert embed.main(args + [f'--out={out}']) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: ') and text in lines[0], lines
    assert not out.exists()


def test_labels_flag_also_has_the_run_py_spelling():
  common = ['--export_dir=EXPORT', '--images=IMAGES', '--out=OUT']
  parse = embed._parse_args  # pylint: disable=protected-access
  assert parse(common).labels == 'auto'
  assert parse(common + ['--labels=none']).labels == 'none'
  assert parse(common + ['--image_folder_labels=folders']).labels == 'folders'


@pytest.mark.slow  # ~60 s idle: features of 128 images, fine-tuning on 32.
def test_keras3_example_runs_on_fashion_mnist(run_and_export):
  import pathlib
  import subprocess
  import sys
  data_dir = pathlib.Path('/usr/share/datasets/fashion-mnist')
  if not (data_dir / 't10k-images-idx3-ubyte.gz').exists():
    pytest.skip('Fashion-MNIST not installed (bash scripts/quickstart_data.sh)')
  _, export_dir = run_and_export
  repo = pathlib.Path(__file__).resolve().parents[1]
  result = subprocess.run(
      [sys.executable, str(repo / 'hub_export' / 'example_keras3.py'),
       f'--export_dir={export_dir}', '--train_examples=64', '--test_examples=64',
       '--linear_epochs=2', '--finetune_examples=32'],
      cwd=repo, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  accuracies = [float(line.split('test accuracy ')[1].split()[0])
                for line in result.stdout.splitlines() if 'test accuracy' in line]
  assert len(accuracies) == 3 and all(0.0 <= value <= 1.0 for value in accuracies)


def test_hub_export_finds_the_head_size_of_a_training_checkpoint(tmp_path):
  """In a training checkpoint the head's kernel is stored under the optimizer's path."""
  import keras
  config = config_lib.Config(model=config_lib.ModelConfig(resnet_depth=18))
  model = build_model(config, 7)
  optimizer = keras.optimizers.SGD(0.1)
  optimizer.build(model.trainable_variables)
  path = tf.train.Checkpoint(model=model, optimizer=optimizer).save(str(tmp_path / 'ckpt'))
  assert not any(key.startswith('model/supervised_head/') and 'kernel' in key
                 for key, _ in tf.train.list_variables(path))
  assert hub_export_main._num_classes(path) == 7  # pylint: disable=protected-access
