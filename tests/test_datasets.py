"""Input pipelines: TFDS (through tfds.testing.mock_data), image folders, Fashion-MNIST.

Exactness checks compare against independent reads of the same data (TFDS as_dataset,
PIL, a NumPy idx parser).
"""

import collections
import gzip
import io
import logging
import os
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tf_simclr.config import DataConfig
from tf_simclr.data import datasets

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _context(num_pipelines: int, pipeline_id: int, num_replicas: int) -> tf.distribute.InputContext:
  return tf.distribute.InputContext(num_input_pipelines=num_pipelines,
                                    input_pipeline_id=pipeline_id,
                                    num_replicas_in_sync=num_replicas)


def _image_key(image: np.ndarray) -> bytes:
  return np.round(np.asarray(image) * 255).astype(np.uint8).tobytes()


def _collect_eval(input_fn, num_pipelines: int, num_replicas: int):
  """Real (mask 1) images per pipeline, and the number of batches of each pipeline."""
  keys, batches = [], []
  for pipeline_id in range(num_pipelines):
    count = 0
    for batch in input_fn(_context(num_pipelines, pipeline_id, num_replicas)):
      count += 1
      mask = batch['mask'].numpy()
      assert set(np.unique(mask)) <= {0.0, 1.0}
      # Padding rows are all zero, labels included.
      assert not np.any(batch['image'].numpy()[mask == 0])
      assert not np.any(batch['label'].numpy()[mask == 0])
      keys.extend(_image_key(image) for image in batch['image'].numpy()[mask == 1])
    batches.append(count)
  return keys, batches


# ---------------------------------------------------------------------------
# TFDS (real TFDS code path with mocked examples).


def test_tfds_cifar10_info_and_pretrain_batches():
  config = DataConfig(dataset='cifar10', train_split='train', eval_split='test', image_size=32)
  with tfds.testing.mock_data(num_examples=20):
    info = datasets.get_dataset_info(config)
    assert (info.num_train_examples, info.num_eval_examples, info.num_classes) == (20, 20, 10)
    assert len(info.class_names) == 10 and info.source == 'tfds'  # Mock: names are '0'..'9'.
    input_fn = datasets.build_input_fn(config, split='train', is_training=True,
                                       train_mode='pretrain', global_batch_size=8, seed=1)
    batch = next(iter(input_fn(_context(1, 0, 2))))  # 2 replicas: 4 examples per batch.
  assert batch['image'].shape == (8, 32, 32, 3) and batch['image'].dtype == tf.float32
  assert batch['label'].shape == (4, 10) and batch['label'].dtype == tf.float32
  np.testing.assert_array_equal(batch['label'].numpy().sum(axis=1), 1.0)
  np.testing.assert_array_equal(batch['mask'].numpy(), np.ones(4))
  image = batch['image'].numpy()
  assert image.min() >= 0.0 and image.max() <= 1.0


@pytest.mark.parametrize('num_pipelines, num_replicas, global_batch', [(2, 2, 4), (2, 4, 8)])
def test_tfds_eval_every_example_once_with_padding(num_pipelines, num_replicas, global_batch):
  num_examples = 13  # Not a multiple of any batch size here.
  config = DataConfig(dataset='cifar10', eval_split='test', image_size=32)
  with tfds.testing.mock_data(num_examples=num_examples):
    raw = tfds.load('cifar10', split='test', as_supervised=True)
    expected = collections.Counter(image.numpy().tobytes() for image, _ in raw)
    input_fn = datasets.build_input_fn(config, split='test', is_training=False,
                                       train_mode='pretrain', global_batch_size=global_batch)
    keys, batches = _collect_eval(input_fn, num_pipelines, num_replicas)
  assert collections.Counter(keys) == expected  # Every example exactly once.
  steps = datasets.num_eval_steps(num_examples, global_batch)
  # Each pipeline feeds num_replicas / num_pipelines replicas per step: equal batches.
  assert batches == [steps * num_replicas // num_pipelines] * num_pipelines


def test_tfds_eval_center_crop_above_32_pixels():
  config = DataConfig(dataset='cifar10', eval_split='test', image_size=40)
  with tfds.testing.mock_data(num_examples=3):
    input_fn = datasets.build_input_fn(config, split='test', is_training=False,
                                       train_mode='finetune', global_batch_size=4)
    batch = next(iter(input_fn(None)))
  assert batch['image'].shape == (4, 40, 40, 3)
  np.testing.assert_array_equal(batch['mask'].numpy(), [1, 1, 1, 0])


def test_unknown_dataset_is_one_clear_line():
  with pytest.raises(ValueError) as error:
    datasets.get_dataset_info(DataConfig(dataset='no_such_dataset_xyz'))
  message = str(error.value)
  assert '\n' not in message and '--dataset=no_such_dataset_xyz' in message
  assert 'image_folder' in message


def test_missing_tfds_data_is_one_clear_line(tmp_path):
  # imagenet2012 needs a manual download, so TFDS cannot fetch it anywhere.
  with pytest.raises(FileNotFoundError) as error:
    datasets.get_dataset_info(DataConfig(dataset='imagenet2012', data_dir=str(tmp_path)))
  message = str(error.value)
  assert '\n' not in message
  assert message.startswith('--dataset=imagenet2012: not found') and '--data_dir' in message


def test_undownloadable_tfds_data_fails_fast_and_cleans_up(tmp_path, monkeypatch):
  """No network (here: a proxy on a closed port): one line within seconds, and the
  folders TFDS started to create are removed (TFDS alone retried for ~200 s)."""
  import time  # pylint: disable=g-import-not-at-top
  for name in ('HTTP_PROXY', 'HTTPS_PROXY', 'http_proxy', 'https_proxy'):
    monkeypatch.setenv(name, 'http://127.0.0.1:9')
  monkeypatch.delenv('NO_PROXY', raising=False)
  monkeypatch.delenv('no_proxy', raising=False)
  data_dir = tmp_path / 'tfds'
  start = time.monotonic()
  with pytest.raises(FileNotFoundError) as error:
    datasets.get_dataset_info(DataConfig(dataset='cifar10', data_dir=str(data_dir)))
  assert time.monotonic() - start < 60
  message = str(error.value)
  assert '\n' not in message and message.startswith('--dataset=cifar10: not found')
  assert 'cannot reach https://' in message, message
  assert not data_dir.exists(), list(data_dir.rglob('*'))


# ---------------------------------------------------------------------------
# Split strings.


def test_parse_split_follows_tfds_slicing():
  sizes = {'train': 50, 'test': 7}
  parse = lambda split: datasets.parse_split(split, tuple(sizes), sizes.get, 'train_split', 'x')
  assert parse('train') == [('train', 0, 50)]
  assert parse('train[:10%]') == [('train', 0, 5)]
  assert parse('train[10:-10]+test') == [('train', 10, 40), ('test', 0, 7)]
  assert parse('test[50%:]') == [('test', 4, 7)]  # round(3.5) = 4, as TFDS.
  with pytest.raises(ValueError, match=r"^--train_split=validation: x has no split 'validation'"):
    parse('validation')
  with pytest.raises(ValueError, match='malformed'):
    parse('train[:10')


# ---------------------------------------------------------------------------
# Image folders.


def _write_image(path: pathlib.Path, array: np.ndarray) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array).save(path)


def _constant_color_folder(root: pathlib.Path, count: int) -> list[tuple[np.ndarray, int]]:
  """ROOT/train/<class>/ with one constant colour per image; returns [(rgb, label)].

  Colours and their lumas are all far apart, so an image or its grayscale version
  identifies the example.
  """
  examples = []
  for index in range(count):
    label = index % 3
    color = np.array([20 + 25 * index, 60, 40 + label * 60], np.uint8)
    suffix = '.png' if index % 2 else '.jpg'
    _write_image(root / 'train' / f'class_{label}' / f'{index:03d}{suffix}',
                 np.tile(color, (12, 16, 1)))
    examples.append((color, label))
  return examples


def _identify(view: np.ndarray, examples) -> int:
  """Index of the example whose colour, or whose luma gray, the constant view shows."""
  pixel = view[0, 0] * 255
  assert np.abs(view * 255 - pixel).max() < 1.0  # Still constant.
  errors = []
  for color, _ in examples:
    luma = color.astype(np.float64) @ np.array([0.2989, 0.5870, 0.1140])
    errors.append(min(np.abs(pixel - color).max(), np.abs(pixel - luma).max()))
  assert min(errors) < 3.0
  return int(np.argmin(errors))


def test_image_folder_views_pair_rows_of_the_same_example(tmp_path):
  examples = _constant_color_folder(tmp_path, 9)
  # No colour distortion (strength 0 also turns off grayscale, as the official code):
  # crops and flips keep each constant image.
  config = DataConfig(dataset='image_folder', data_dir=str(tmp_path), train_split='train',
                      image_size=8, color_jitter_strength=0.0)
  input_fn = datasets.build_input_fn(config, split='train', is_training=True,
                                     train_mode='pretrain', global_batch_size=4, seed=3)
  dataset = input_fn(_context(1, 0, 1))
  for batch in dataset.take(3):
    images = batch['image'].numpy()  # [2b, 8, 8, 3]
    labels = batch['label'].numpy().argmax(axis=1)
    assert images.shape == (8, 8, 8, 3)
    for row in range(4):
      index = _identify(images[row], examples)
      assert _identify(images[4 + row], examples) == index  # Row b + i: same example.
      assert examples[index][1] == labels[row]
  # The same seed gives the same batches in a new pipeline; another seed does not.
  first = next(iter(input_fn(_context(1, 0, 1))))['image']
  np.testing.assert_array_equal(next(iter(input_fn(_context(1, 0, 1))))['image'], first)
  other_fn = datasets.build_input_fn(config, split='train', is_training=True,
                                     train_mode='pretrain', global_batch_size=4, seed=4)
  assert np.any(next(iter(other_fn(_context(1, 0, 1))))['image'].numpy() != first.numpy())


@pytest.mark.parametrize('blur_impl', ['per_image', 'per_batch'])
def test_pretrain_blur_per_image_or_once_per_view_of_the_batch(tmp_path, blur_impl):
  # Constant images: the per-image blur (reflect padding) keeps them; the official
  # per-batch blur (zero padding) darkens the border by a factor set by its one sigma.
  _constant_color_folder(tmp_path, 8)
  config = DataConfig(dataset='image_folder', data_dir=str(tmp_path), train_split='train',
                      image_size=32, color_jitter_strength=0.0, blur_impl=blur_impl)
  input_fn = datasets.build_input_fn(config, split='train', is_training=True,
                                     train_mode='pretrain', global_batch_size=8, seed=5)
  ratios = []
  for batch in input_fn(_context(1, 0, 1)).take(4):
    images = batch['image'].numpy()  # [16, 32, 32, 3]
    corner = images[:, 0, 0, 1] / images[:, 16, 16, 1]
    np.testing.assert_allclose(images[:, 16, 16], images[:, 15, 17], atol=1e-5)
    if blur_impl == 'per_image':
      np.testing.assert_allclose(corner, 1.0, atol=1e-5)
      continue
    for view in (corner[:8], corner[8:]):
      blurred = view[view < 1 - 1e-4]
      if len(blurred):
        assert np.ptp(blurred) < 1e-4  # One sigma per view of the batch.
        ratios.append(blurred[0])
  if blur_impl == 'per_batch':
    assert len(ratios) >= 6 and len(np.unique(np.round(ratios, 4))) >= 6
    # 3-tap kernel, sigma in [0.1, 2]: the corner keeps (1 - w)^2, w <= 0.32.
    assert min(ratios) > (1 - 0.32) ** 2 - 1e-3


@pytest.mark.parametrize('crop_fallback', ['whole_image', 'center_crop'])
def test_crop_fallback_of_very_elongated_images(tmp_path, crop_fallback):
  # 4x120 horizontal ramp: no crop fits. The official fallback squeezes the whole ramp
  # into the view; ours takes a center crop (aspect 4/3: 4x5 px of the ramp's middle).
  ramp = np.tile(np.linspace(0, 255, 120).astype(np.uint8)[None, :, None], (4, 1, 3))
  for label in range(2):
    _write_image(tmp_path / 'train' / f'class_{label}' / 'ramp.png', ramp)
  config = DataConfig(dataset='image_folder', data_dir=str(tmp_path), train_split='train',
                      image_size=8, color_jitter_strength=0.0, use_blur=False,
                      crop_fallback=crop_fallback)
  input_fn = datasets.build_input_fn(config, split='train', is_training=True,
                                     train_mode='finetune', global_batch_size=2, seed=1)
  images = next(iter(input_fn(_context(1, 0, 1))))['image'].numpy()
  spread = images[:, 4, :, 0].max(axis=1) - images[:, 4, :, 0].min(axis=1)
  if crop_fallback == 'whole_image':
    assert np.all(spread > 0.8)
  else:
    assert np.all(spread < 0.1) and np.all(np.abs(images[:, 4, :, 0] - 0.5) < 0.1)


def test_image_folder_skips_and_counts_bad_files(tmp_path, caplog):
  _constant_color_folder(tmp_path, 6)
  class_dir = tmp_path / 'train' / 'class_0'
  (class_dir / 'notes.txt').write_text('not an image')
  (class_dir / 'corrupt.jpg').write_bytes(os.urandom(300))
  good_jpeg = (class_dir / '000.jpg').read_bytes()
  (class_dir / 'truncated.jpg').write_bytes(good_jpeg[:len(good_jpeg) // 3])
  # Corrupt inside, with its end marker: passes the scan, fails to decode.
  (class_dir / 'inside.jpg').write_bytes(good_jpeg[:len(good_jpeg) // 3] + b'\xff\xd9')
  gray = np.arange(16 * 16, dtype=np.uint8).reshape(16, 16)
  _write_image(tmp_path / 'test' / 'class_2' / 'gray.png', gray)
  config = DataConfig(dataset='image_folder', data_dir=str(tmp_path), train_split='train',
                      eval_split='test', image_size=16)
  with caplog.at_level(logging.WARNING):
    info = datasets.get_dataset_info(config)
  # 6 good + inside.jpg pass the scan; notes.txt, corrupt.jpg and truncated.jpg do not.
  assert info.num_train_examples == 7 and info.num_skipped_files == 3
  assert info.num_classes == 3 and info.class_names == ('class_0', 'class_1', 'class_2')
  assert 'skipped 3 of 10 files' in caplog.text
  # Each unreadable image file named once, on its own line, with the count.
  named = [line for line in caplog.text.splitlines() if 'image_folder: skipped ' in line]
  assert len(named) == 2, named
  assert f'skipped {class_dir / "corrupt.jpg"}: not a JPEG' in named[0]
  assert f'skipped {class_dir / "truncated.jpg"}: truncated or corrupt' in named[1]
  assert '(unreadable file 2 of 2 in ' in named[1]
  # inside.jpg fails to decode and is skipped by the pipeline, not the run.
  input_fn = datasets.build_input_fn(config, split='train', is_training=False,
                                     train_mode='finetune', global_batch_size=4)
  keys, batches = _collect_eval(input_fn, 1, 1)
  assert len(keys) == 6 and len(set(keys)) == 6 and batches == [2]
  # Grayscale files become 3 equal channels.
  eval_fn = datasets.build_input_fn(config, split='test', is_training=False,
                                    train_mode='finetune', global_batch_size=2)
  batch = next(iter(eval_fn(None)))
  image = batch['image'].numpy()[0]
  np.testing.assert_array_equal(np.round(image[..., 0] * 255), gray)
  np.testing.assert_array_equal(image[..., 0], image[..., 2])
  np.testing.assert_array_equal(batch['label'].numpy()[0], [0, 0, 1])


def test_image_file_problem_finds_truncated_files(tmp_path):
  """Truncated JPEG/PNG/GIF files are named at listing time; valid files with bytes after
  their end marker are kept (decided by decoding them); the verdict matches PIL's."""
  pixels = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
  encoded = {}
  for kind in ('JPEG', 'PNG', 'GIF', 'BMP'):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=kind)
    encoded[kind] = buffer.getvalue()
  cases = {'random.jpg': os.urandom(200), 'empty.png': b''}
  for kind, data in encoded.items():
    cases[f'good.{kind}'] = data
    cases[f'trailing_bytes.{kind}'] = data + b'\0' * 40
    if kind != 'BMP':  # BMP has no end marker: a truncated one fails in the pipeline.
      cases[f'truncated.{kind}'] = data[:len(data) // 2]
  for name, data in cases.items():
    (tmp_path / name).write_bytes(data)
    try:  # The reference: PIL decodes the whole file, or fails.
      with Image.open(tmp_path / name) as image:
        image.load()
      pil_reads = True
    except (OSError, SyntaxError):
      pil_reads = False
    problem = datasets.image_file_problem(str(tmp_path / name))
    assert (problem is None) == pil_reads, (name, problem)
  assert 'truncated or corrupt' in datasets.image_file_problem(str(tmp_path / 'truncated.JPEG'))
  assert 'no image signature' in datasets.image_file_problem(str(tmp_path / 'random.jpg'))
  assert 'cannot be read' in datasets.image_file_problem(str(tmp_path / 'absent.jpg'))


def test_a_class_only_in_the_eval_split_is_one_clear_line(tmp_path):
  _constant_color_folder(tmp_path, 6)  # train/class_0..2
  for class_name in ('class_0', 'class_3'):
    _write_image(tmp_path / 'test' / class_name / '0.png', np.zeros((8, 8, 3), np.uint8))
  (tmp_path / 'test' / 'class_1').mkdir()  # An empty folder is no class of the split.
  config = DataConfig(dataset='image_folder', data_dir=str(tmp_path), train_split='train[:50%]',
                      eval_split='test', image_size=8)
  with pytest.raises(ValueError) as error:
    datasets.get_dataset_info(config)
  message = str(error.value)
  assert '\n' not in message and message.startswith('--eval_split=test: class ')
  assert f"'class_3' ({tmp_path / 'test' / 'class_3'}) has no images" in message
  assert f'--train_split=train[:50%] folder(s) {tmp_path / "train"};' in message
  # Where the eval split is not read, or is a slice of the training folder: no error.
  info = datasets.get_dataset_info(config, with_eval=False)
  assert info.class_names == ('class_0', 'class_1', 'class_2', 'class_3')
  datasets.get_dataset_info(DataConfig(dataset='image_folder', data_dir=str(tmp_path),
                                       train_split='train[:50%]', eval_split='train[50%:]'))
  datasets.get_dataset_info(DataConfig(dataset='image_folder', data_dir=str(tmp_path),
                                       train_split='train+test', eval_split='test'))


def test_image_folder_errors_are_one_clear_line(tmp_path):
  (tmp_path / 'empty' / 'train' / 'cat').mkdir(parents=True)
  (tmp_path / 'empty' / 'train' / 'cat' / 'readme.md').write_text('x')
  (tmp_path / 'no_classes' / 'train').mkdir(parents=True)
  cases = [
      (DataConfig(dataset='image_folder', data_dir=str(tmp_path / 'empty')),
       FileNotFoundError, 'no readable image files'),
      (DataConfig(dataset='image_folder', data_dir=str(tmp_path / 'absent')),
       FileNotFoundError, 'no such folder'),
      (DataConfig(dataset='image_folder', data_dir=None), ValueError, 'needs --data_dir'),
      (DataConfig(dataset='image_folder', data_dir=str(tmp_path / 'no_classes')),
       FileNotFoundError, 'no readable image files'),
      (DataConfig(dataset='image_folder', data_dir=str(tmp_path / 'no_classes'),
                  image_folder_labels='folders'),
       FileNotFoundError, 'no ROOT/<split>/<class>/ folders'),
  ]
  for config, error_type, text in cases:
    with pytest.raises(error_type) as error:
      datasets.get_dataset_info(config, with_eval=False)
    assert text in str(error.value) and '\n' not in str(error.value)
  _constant_color_folder(tmp_path / 'ok', 3)
  with pytest.raises(ValueError) as error:
    datasets.get_dataset_info(DataConfig(dataset='image_folder', data_dir=str(tmp_path / 'ok')))
  assert str(error.value).startswith("--eval_split=validation: image folder")
  assert 'it has: train' in str(error.value)


def test_real_cifar10_folder_test_split(cifar10_dir):
  config = DataConfig(dataset='image_folder', data_dir=str(cifar10_dir),
                      train_split='test[:50%]', eval_split='test[50%:]', image_size=32)
  info = datasets.get_dataset_info(config)
  assert (info.num_train_examples, info.num_eval_examples, info.num_classes) == (5000, 5000, 10)
  assert info.class_names[0] == 'airplane' and info.class_names[-1] == 'truck'
  assert info.num_skipped_files == 0
  # Decoding matches PIL exactly (INTEGER_ACCURATE DCT).
  path = str(cifar10_dir / 'test' / 'cat' / '0000.jpg')
  decoded = datasets._decode_image_file(tf.constant(path)).numpy()  # pylint: disable=protected-access
  np.testing.assert_array_equal(decoded, np.asarray(Image.open(path).convert('RGB')))
  train_fn = datasets.build_input_fn(config, split=config.train_split, is_training=True,
                                     train_mode='pretrain', global_batch_size=32, seed=0)
  labels = []
  for batch in train_fn(None).take(3):
    assert batch['image'].shape == (64, 32, 32, 3)
    labels.extend(batch['label'].numpy().argmax(axis=1))
  assert len(set(labels)) >= 8  # Shuffled across classes.
  eval_fn = datasets.build_input_fn(config, split='test[:70]', is_training=False,
                                    train_mode='pretrain', global_batch_size=32)
  masks = [batch['mask'].numpy() for batch in eval_fn(None)]
  assert len(masks) == 3 and sum(mask.sum() for mask in masks) == 70


# ---------------------------------------------------------------------------
# Fashion-MNIST from the Debian package.


def _read_idx_reference(path: str) -> np.ndarray:
  with gzip.open(path) as f:
    data = f.read()
  num_dims = data[3]
  shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(num_dims)]
  return np.frombuffer(data[4 + 4 * num_dims:], np.uint8).reshape(shape)


@pytest.fixture
def fashion_mnist_dir() -> str:
  path = datasets.FASHION_MNIST_DEFAULT_DIR
  if not os.path.isfile(os.path.join(path, 't10k-images-idx3-ubyte.gz')):
    pytest.skip(f'Fashion-MNIST not installed at {path} (scripts/quickstart_data.sh)')
  return path


def test_fashion_mnist_local(fashion_mnist_dir):
  config = DataConfig(dataset='fashion_mnist_local', train_split='train', eval_split='test',
                      image_size=28)
  info = datasets.get_dataset_info(config)
  assert (info.num_train_examples, info.num_eval_examples, info.num_classes) == (60000, 10000, 10)
  assert info.image_shape == (28, 28, 3)
  images = _read_idx_reference(os.path.join(fashion_mnist_dir, 't10k-images-idx3-ubyte.gz'))
  labels = _read_idx_reference(os.path.join(fashion_mnist_dir, 't10k-labels-idx1-ubyte.gz'))
  reference = {image.tobytes(): label for image, label in zip(images, labels)}
  eval_fn = datasets.build_input_fn(config, split='test[:50]', is_training=False,
                                    train_mode='finetune', global_batch_size=32)
  seen = []
  for batch in eval_fn(None):
    for image, label, mask in zip(batch['image'].numpy(), batch['label'].numpy(),
                                  batch['mask'].numpy()):
      if mask:
        np.testing.assert_array_equal(image[..., 0], image[..., 1])  # Gray -> 3 channels.
        key = np.round(image[..., 0] * 255).astype(np.uint8).tobytes()
        assert reference[key] == label.argmax()
        seen.append(key)
  assert len(set(seen)) == 50
  train_fn = datasets.build_input_fn(config, split='train', is_training=True,
                                     train_mode='finetune', global_batch_size=16, seed=0)
  batch = next(iter(train_fn(None)))
  assert batch['image'].shape == (16, 28, 28, 3)


def test_fashion_mnist_missing_files_message(tmp_path):
  with pytest.raises(FileNotFoundError) as error:
    datasets.get_dataset_info(DataConfig(dataset='fashion_mnist_local', data_dir=str(tmp_path)))
  message = str(error.value)
  assert '\n' not in message and 'apt-get install -y dataset-fashion-mnist' in message


# ---------------------------------------------------------------------------
# Through a real MirroredStrategy (subprocess: logical devices need a fresh runtime).

_MIRRORED_SCRIPT = r'''
import sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices('CPU')[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from tf_simclr.config import DataConfig
from tf_simclr.data import datasets
strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
config = DataConfig(dataset='image_folder', data_dir=sys.argv[1], eval_split='train',
                    image_size=8)
eval_fn = datasets.build_input_fn(config, split='train', is_training=False,
                                  train_mode='pretrain', global_batch_size=4)
per_replica = tf.distribute.InputOptions(
    experimental_fetch_to_device=False,
    experimental_replication_mode=tf.distribute.InputReplicationMode.PER_REPLICA)
counts = []
for options in (None, per_replica):  # One pipeline split across replicas; one per replica.
  total, steps = 0.0, 0
  for batch in strategy.distribute_datasets_from_function(eval_fn, options):
    masks = strategy.experimental_local_results(batch['mask'])
    assert [m.shape[0] for m in masks] == [2, 2], masks
    total += sum(float(tf.reduce_sum(m)) for m in masks)
    steps += 1
  counts.append((total, steps))
assert counts[0] == counts[1], counts
train_fn = datasets.build_input_fn(config, split='train', is_training=True,
                                   train_mode='pretrain', global_batch_size=4, seed=0)
batch = next(iter(strategy.distribute_datasets_from_function(train_fn)))
shapes = [tuple(x.shape) for x in strategy.experimental_local_results(batch['image'])]
print('RESULT', total, steps, shapes)
'''


@pytest.mark.slow  # About 20-30 s on 2 shared cores (a fresh TF runtime).
def test_mirrored_strategy_eval_and_pretrain(tmp_path):
  _constant_color_folder(tmp_path, 7)
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL='2')
  result = subprocess.run([sys.executable, '-c', _MIRRORED_SCRIPT, str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  # 7 examples, global batch 4: 2 steps, 2 replicas x 2 rows each, 7 real rows.
  assert 'RESULT 7.0 2 [(4, 8, 8, 3), (4, 8, 8, 3)]' in result.stdout


# ---------------------------------------------------------------------------
# Visualisation.


def test_view_pairs_and_png_grid(tmp_path):
  from tf_simclr.data import visualize  # pylint: disable=g-import-not-at-top
  _constant_color_folder(tmp_path / 'data', 5)
  config = DataConfig(dataset='image_folder', data_dir=str(tmp_path / 'data'),
                      train_split='train', image_size=8)
  pairs = visualize.pairs_from_config(config, split='train', num_images=4, seed=0)
  assert pairs.shape == (4, 8, 16, 3)
  input_fn = datasets.build_input_fn(config, split='train', is_training=True,
                                     train_mode='pretrain', global_batch_size=4, seed=0)
  images = next(iter(input_fn(None)))['image'].numpy()  # [8, 8, 8, 3]
  np.testing.assert_array_equal(pairs[:, :, :8], images[:4])   # Left: view 1.
  np.testing.assert_array_equal(pairs[:, :, 8:], images[4:])   # Right: view 2 of the same rows.
  summary_pairs = visualize.view_pairs(tf.constant(images), max_images=3)
  assert summary_pairs.shape == (3, 8, 16, 3)
  path = visualize.save_grid(pairs, str(tmp_path / 'grid.png'), columns=2, scale=2)
  with Image.open(path) as grid:
    # 2 rows x 2 columns of 8x16 pairs with 2 px gaps, upscaled 2x.
    assert grid.size == ((2 * 16 + 3 * 2) * 2, (2 * 8 + 3 * 2) * 2)
