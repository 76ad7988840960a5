"""kNN monitor (tf_simclr/knn.py) and quick linear probe (tf_simclr/linear_probe.py).

The kNN classifier is checked against a NumPy float64 reference written from the
formula (weighted vote exp(cos / T) over the k most similar bank features); feature
extraction under MirroredStrategy over 2 logical CPUs against direct calls of the
encoder (a subprocess: logical devices must be set before any TF op); the training
loop's monitor (steps, knn.json, TensorBoard) and --knn_at_eval on a tiny image folder.
"""

import glob
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from tests import train_fixtures
from tf_simclr import config as config_lib
from tf_simclr import evaluate as evaluate_lib
from tf_simclr import knn
from tf_simclr import linear_probe
from tf_simclr import models
from tf_simclr import train as train_lib

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def reference_knn_predict(query, bank, bank_labels, num_classes, k, temperature):
  """Float64 NumPy weighted kNN: class scores [Q, C] straight from the definition."""
  query = np.asarray(query, np.float64)
  bank = np.asarray(bank, np.float64)
  query = query / np.linalg.norm(query, axis=1, keepdims=True)
  bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
  scores = np.zeros((len(query), num_classes))
  for row, vector in enumerate(query):
    similarity = bank @ vector
    nearest = np.argsort(-similarity, kind='stable')[:k]
    for index in nearest:
      scores[row, bank_labels[index]] += np.exp(similarity[index] / temperature)
  return scores


@pytest.mark.parametrize('k,temperature,chunk', [(20, 0.1, 7), (5, 0.5, 1024), (500, 0.07, 16)])
def test_knn_scores_and_accuracy_match_numpy_reference(k, temperature, chunk):
  rng = np.random.default_rng(k)
  num_classes, dimension = 6, 12
  centers = rng.normal(size=(num_classes, dimension))
  bank_labels = rng.integers(0, num_classes, 300)
  bank = centers[bank_labels] + 1.5 * rng.normal(size=(300, dimension))
  query_labels = rng.integers(0, num_classes, 57)
  query = centers[query_labels] + 1.5 * rng.normal(size=(57, dimension))
  expected = reference_knn_predict(query, bank, bank_labels, num_classes,
                                   min(k, 300), temperature)
  scores = knn.knn_class_scores(query.astype(np.float32), bank.astype(np.float32),
                                bank_labels, num_classes, k=k, temperature=temperature,
                                chunk_size=chunk).numpy()
  np.testing.assert_allclose(scores, expected, rtol=2e-4)
  accuracy = knn.knn_accuracy(query, query_labels, bank, bank_labels, num_classes,
                              k=k, temperature=temperature)
  expected_top_1 = np.mean(np.argmax(expected, axis=1) == query_labels)
  expected_top_5 = np.mean([label in np.argsort(-row)[:5]
                            for row, label in zip(expected, query_labels)])
  assert accuracy['top_1_accuracy'] == pytest.approx(expected_top_1)
  assert accuracy['top_5_accuracy'] == pytest.approx(expected_top_5)
  assert 0.3 < expected_top_1 < 1.0  # Informative data: neither chance nor trivial.


def test_knn_ignores_feature_scale_and_far_neighbours():
  # Two bank points: the nearer one (by angle) must win with k=1 whatever the norms.
  bank = np.array([[10.0, 0.0], [0.0, 0.1]], np.float32)
  query = np.array([[0.1, 1.0], [1.0, 0.2]], np.float32)
  result = knn.knn_accuracy(query, [1, 0], bank, [0, 1], 2, k=1)
  assert result['top_1_accuracy'] == 1.0


def test_is_due_steps():
  config = config_lib.Config(knn=config_lib.KnnConfig(knn_every_steps=10))
  monitor = knn.KnnMonitor(config, tf.distribute.get_strategy(), 2,
                           bank_input_fn=lambda _: None, query_input_fn=lambda _: None)
  assert monitor.is_due(0, 10, 100) and monitor.is_due(8, 12, 100)
  assert not monitor.is_due(10, 15, 100) and not monitor.is_due(0, 9, 100)
  assert monitor.is_due(96, 97, 97)  # The last step always gets one.
  off = knn.KnnMonitor(config_lib.Config(), tf.distribute.get_strategy(), 2,
                       bank_input_fn=lambda _: None, query_input_fn=lambda _: None)
  assert not off.is_due(0, 10, 10)


def test_linear_probe_separates_blobs_and_not_noise():
  rng = np.random.default_rng(0)
  num_classes, dimension = 4, 16
  centers = 3.0 * rng.normal(size=(num_classes, dimension))
  train_labels = rng.integers(0, num_classes, 400)
  test_labels = rng.integers(0, num_classes, 200)
  train = centers[train_labels] + rng.normal(size=(400, dimension))
  test = centers[test_labels] + rng.normal(size=(200, dimension))
  result = linear_probe.linear_probe_accuracy(train, train_labels, test, test_labels,
                                              num_classes, steps=200)
  # Nearest-centre (the Bayes rule for these blobs) as the independent reference.
  nearest = np.argmin(((test[:, None] - centers[None]) ** 2).sum(-1), axis=1)
  assert result['test_top_1_accuracy'] >= np.mean(nearest == test_labels) - 0.03
  noise = linear_probe.linear_probe_accuracy(
      rng.normal(size=(400, dimension)), train_labels, rng.normal(size=(200, dimension)),
      test_labels, num_classes, steps=200)
  assert noise['test_top_1_accuracy'] < 0.45


_MIRRORED_SCRIPT = r'''
import json, sys
import numpy as np
import tensorflow as tf
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices('CPU')[0], [tf.config.LogicalDeviceConfiguration()] * 2)
from tests import train_fixtures
from tf_simclr import knn, models
strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
config = train_fixtures.tiny_config('/tmp/unused')
with strategy.scope():
  model = models.build_model_for(config, 10)
input_fn, images, labels = train_fixtures.eval_input_fn(21, 8, 16)
features, found_labels = knn.extract_features(
    knn.encoder_feature_fn(model), strategy, input_fn, global_batch_size=8)
direct = model.encoder(tf.constant(images), training=False)['final_avg_pool'].numpy()
print(json.dumps({'replicas': strategy.num_replicas_in_sync,
                  'shape': list(features.shape),
                  'max_abs_diff': float(np.abs(features - direct).max()),
                  'scale': float(np.abs(direct).max()),
                  'labels_equal': bool((found_labels == labels.argmax(1)).all())}))
'''


@pytest.mark.slow  # Subprocess (TF import, model build): 51 s wall on the shared 2 cores.
def test_extract_features_under_mirrored_strategy_equals_direct_calls():
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  result = subprocess.run([sys.executable, '-c', _MIRRORED_SCRIPT], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report['replicas'] == 2
  assert report['shape'] == [21, 512]
  assert report['labels_equal']
  assert report['max_abs_diff'] <= 1e-5 * max(1.0, report['scale'])


def _write_folder(root: pathlib.Path, per_class: int, image_size: int = 16) -> None:
  """Two visually distinct classes (reddish / bluish noise) in train and test splits."""
  rng = np.random.default_rng(0)
  for split in ('train', 'test'):
    for class_index, name in enumerate(('red', 'blue')):
      folder = root / split / name
      folder.mkdir(parents=True)
      for index in range(per_class):
        base = np.array([200, 60, 60] if class_index == 0 else [60, 60, 200])
        pixels = np.clip(base + rng.normal(0, 20, (image_size, image_size, 3)), 0, 255)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f'{index}.png')


def test_monitor_reads_both_splits_unaugmented_and_caps_the_bank(tmp_path):
  data_dir = tmp_path / 'data'
  _write_folder(data_dir, per_class=6)
  config = config_lib.Config(
      data=config_lib.DataConfig(dataset='image_folder', data_dir=str(data_dir),
                                 train_split='train', eval_split='test', image_size=16),
      train=config_lib.TrainConfig(eval_batch_size=5, model_dir=str(tmp_path / 'run')),
      knn=config_lib.KnnConfig(knn_k=3, knn_train_examples=0))
  monitor = knn.KnnMonitor(config, tf.distribute.get_strategy(), 2)

  def mean_colour(images):  # [b, 16, 16, 3] -> [b, 3]
    return tf.reduce_mean(images, axis=[1, 2])

  expected = {}
  for split in ('train', 'test'):
    rows = []
    for class_index, name in enumerate(('blue', 'red')):  # Sorted class folders.
      for path in sorted((data_dir / split / name).glob('*.png')):
        rows.append((np.asarray(Image.open(path), np.float64).mean((0, 1)) / 255, class_index))
    expected[split] = rows
  for split, input_fn in (('train', monitor.bank_input_fn), ('test', monitor.query_input_fn)):
    features, labels = knn.extract_features(mean_colour, monitor.strategy, input_fn,
                                            global_batch_size=5)
    assert features.shape == (12, 3)
    got = sorted(zip(map(tuple, np.round(features, 4)), labels))
    want = sorted((tuple(np.round(row, 4)), label) for row, label in expected[split])
    assert [label for _, label in got] == [label for _, label in want]
    np.testing.assert_allclose([row for row, _ in got], [row for row, _ in want], atol=2e-4)
  capped, _ = knn.extract_features(mean_colour, monitor.strategy, monitor.bank_input_fn,
                                   max_examples=7, global_batch_size=5)
  assert capped.shape == (7, 3)
  result = monitor.evaluate_features(mean_colour)
  reference = reference_knn_predict(
      [row for row, _ in expected['test']], [row for row, _ in expected['train']],
      [label for _, label in expected['train']], 2, 3, 0.1)
  assert result['knn/top_1_accuracy'] == pytest.approx(np.mean(
      np.argmax(reference, 1) == [label for _, label in expected['test']]))
  assert (result['knn/bank_size'], result['knn/num_queries']) == (12, 12)


@pytest.mark.slow  # ~35 s alone, 108 s on the shared 2 cores: trains and evaluates ResNet-18.
def test_monitor_in_training_loop_and_at_eval(tmp_path):
  data_dir = tmp_path / 'data'
  _write_folder(data_dir, per_class=6)
  model_dir = str(tmp_path / 'run')
  config = train_fixtures.tiny_config(model_dir, train_steps=4, checkpoint_steps=4,
                                      steps_per_loop=1, lineareval_while_pretraining=False)
  config = config_lib.replace(
      config, data={'dataset': 'image_folder', 'data_dir': str(data_dir),
                    'train_split': 'train', 'eval_split': 'test'},
      knn={'knn_every_steps': 3, 'knn_k': 5, 'knn_train_examples': 10, 'knn_at_eval': True})
  strategy = tf.distribute.get_strategy()
  batches = train_fixtures.global_batches(2, 8, 16)
  result = train_lib.train(config, strategy, input_fn=train_fixtures.make_input_fn(batches),
                           data_sizes=train_fixtures.Sizes(12, 12, 2), verbose=False)
  history = knn.read_history(model_dir)
  assert [entry['global_step'] for entry in history] == [0, 3, 4]
  assert all(entry['knn/bank_size'] == 10 and entry['knn/num_queries'] == 12
             for entry in history)
  # Red vs blue is easy even for random features.
  assert history[0]['knn/top_1_accuracy'] >= 0.9
  assert result['knn/top_1_accuracy'] == history[-1]['knn/top_1_accuracy']
  tags = set()
  for path in glob.glob(os.path.join(model_dir, 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      tags.update(value.tag for value in event.summary.value)
  assert 'knn/top_1_accuracy' in tags

  eval_result = evaluate_lib.evaluate(config, strategy, verbose=False)
  assert eval_result['eval/knn_top_1_accuracy'] == pytest.approx(
      history[-1]['knn/top_1_accuracy'])
  assert eval_result['knn_bank_size'] == 10
  with open(os.path.join(model_dir, 'result.json'), encoding='utf-8') as result_file:
    assert 'eval/knn_top_1_accuracy' in json.load(result_file)


def test_knn_flags_are_checked():
  with pytest.raises(ValueError, match='--knn_k=0'):
    config_lib.validate(config_lib.Config(train=config_lib.TrainConfig(model_dir='/tmp/x'),
                                          knn=config_lib.KnnConfig(knn_k=0)))


@pytest.mark.slow  # Saves and loads a SavedModel of ResNet-18.
def test_hub_feature_fn_equals_the_encoder(tmp_path):
  from tf_simclr import export as export_lib  # pylint: disable=g-import-not-at-top
  config = train_fixtures.tiny_config(str(tmp_path / 'run'))
  model = models.build_model_for(config, 10)
  export_dir = export_lib.export_encoder(model, str(tmp_path / 'hub'), image_size=16,
                                         overwrite=True)
  images = tf.constant(np.random.default_rng(0).uniform(size=(3, 16, 16, 3)), tf.float32)
  direct = knn.encoder_feature_fn(model)(images).numpy()
  exported = knn.hub_feature_fn(export_dir)(images).numpy()
  assert exported.shape == (3, 512)
  np.testing.assert_allclose(exported, direct, rtol=1e-4, atol=1e-5)
