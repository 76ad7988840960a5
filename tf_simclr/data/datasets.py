"""Input pipelines for pretraining, fine-tuning and evaluation.

Sources, chosen by `DataConfig.dataset`:
- any TFDS name (`cifar10`, `imagenet2012_subset/1pct`), read from `data_dir`
  (default: TFDS_DATA_DIR or ~/tensorflow_datasets);
- `image_folder`: `data_dir=ROOT` holding ROOT/<split>/<class>/<image> (JPEG, PNG,
  BMP, GIF), the layout of `tfds.ImageFolder`; classes are the sorted union of the
  class folders of all splits; files that are not images are skipped and counted, and
  truncated or unreadable image files are skipped, each named in a warning. ROOT may be
  local or remote (gs://...): folders are read through tf.io.gfile.
  Unlabelled images may lie directly in ROOT/<split>/ or in nested folders whose names
  are not classes (`DataConfig.image_folder_labels`, see `folder_layout`); they are
  read recursively and the dataset has no classes (`DatasetInfo.num_classes == 0`);
- `fashion_mnist_local`: the Fashion-MNIST idx files of Debian's
  `dataset-fashion-mnist` package (default `data_dir` /usr/share/datasets/fashion-mnist),
  read directly; splits `train` (60,000) and `test` (10,000).

Split strings follow TFDS for all sources: `train`, `train[:10%]`, `train[100:200]`,
`train[:50%]+test`. For `image_folder` and `fashion_mnist_local` the examples of a
split are put in a fixed pseudo-random order before slicing, so a slice has all classes.

`build_input_fn` returns a function for `strategy.distribute_datasets_from_function`:
each input pipeline reads its own shard and yields per-replica batches of
{'image', 'label', 'mask'} (see `build_input_fn`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import gzip
import math
import os
import re
from typing import Any, Callable, Iterator, Optional, Sequence

from absl import logging
import numpy as np
import tensorflow as tf

from tf_simclr.config import DataConfig
from tf_simclr.config import IMAGE_FOLDER_LABELS
from tf_simclr.data import augment

IMAGE_FOLDER = 'image_folder'
FASHION_MNIST_LOCAL = 'fashion_mnist_local'
FASHION_MNIST_DEFAULT_DIR = '/usr/share/datasets/fashion-mnist'
FASHION_MNIST_CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal',
                         'Shirt', 'Sneaker', 'Bag', 'Ankle boot')
_FASHION_MNIST_FILES = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif')
_IMAGE_SIGNATURES = (b'\xff\xd8\xff', b'\x89PNG\r\n\x1a\n', b'GIF87a', b'GIF89a', b'BM')
_JPEG_END, _PNG_END, _GIF_END = b'\xff\xd9', b'IEND\xaeB`\x82', b';'  # Last bytes of a file.
_REMOTE_READ_THREADS = 32  # Parallel header reads of remote files (latency-bound).
_SPLIT_ORDER_SEED = 0  # Fixed order of image-folder / Fashion-MNIST examples before slicing.


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Sizes and classes of the configured train and eval splits."""
  num_train_examples: int
  num_eval_examples: int
  num_classes: int
  class_names: Optional[tuple[str, ...]] = None
  source: str = 'tfds'  # 'tfds', 'image_folder' or 'fashion_mnist_local'.
  image_shape: Optional[tuple[int, int, int]] = None  # Native shape when fixed.
  num_skipped_files: int = 0  # image_folder: files of these splits skipped as unreadable.
  # image_folder: how the labels were decided, e.g. 'folders (auto: 10 class folders)'.
  labels_note: str = ''

  @property
  def labelled(self) -> bool:
    """Whether the examples have class labels (False for an unlabelled image folder)."""
    return self.num_classes > 0


def _first_line(error: BaseException) -> str:
  text = str(error).strip().splitlines()
  return text[0] if text else type(error).__name__


# ---------------------------------------------------------------------------
# Files, local or remote (gs://, ram://, ...): everything through tf.io.gfile, except
# reading file headers of local folders (open() is 3x faster than GFile there).


def is_remote(path: str) -> bool:
  """Whether `path` names a file system by scheme (gs://, ram://, hdfs://...)."""
  return '://' in path


def local_path(path: str) -> str:
  """`~` expanded for a local path; a 'scheme://' path is returned unchanged."""
  return path if is_remote(path) else os.path.expanduser(path)


def list_folder(folder: str) -> tuple[list[str], list[str]]:
  """(sorted subfolder names, sorted file names) of `folder` ([], [] if unreadable).

  One tf.io.gfile.listdir per folder (as fast as os.scandir on local disks). A name
  is a folder when the file system marks it so (GCS: a trailing '/'), a file when it
  has an image extension, else it is asked with tf.io.gfile.isdir. Symbolic links are
  followed.
  """
  try:
    names = tf.io.gfile.listdir(folder)
  except tf.errors.OpError:
    return [], []
  folders, files = [], []
  for name in names:
    if name.endswith('/'):
      folders.append(name.rstrip('/'))
    elif name.lower().endswith(IMAGE_EXTENSIONS):
      files.append(name)
    elif tf.io.gfile.isdir(os.path.join(folder, name)):
      folders.append(name)
    else:
      files.append(name)
  return sorted(folders), sorted(files)


def walk_files(folder: str) -> Iterator[str]:
  """Every file under `folder` (hidden files and folders left out), depth first in
  name order: a folder's files before those of its subfolders (as os.walk)."""
  folders, files = list_folder(folder)
  for name in files:
    if not name.startswith('.'):
      yield os.path.join(folder, name)
  for name in folders:
    if not name.startswith('.'):
      yield from walk_files(os.path.join(folder, name))


# ---------------------------------------------------------------------------
# Split strings.


_SPLIT_PART = re.compile(r'^(\w+)(?:\[(-?\d+%?)?:(-?\d+%?)?\])?$')


def parse_split(split: str, split_names: Sequence[str], size_of: Callable[[str], int],
                flag: str, dataset: str) -> list[tuple[str, int, int]]:
  """Resolves a TFDS-style split string to [(split_name, start, stop), ...].

  Args:
    split: e.g. 'train', 'train[:10%]', 'train[10:-10]+test'. Percent boundaries are
      rounded to the closest example, as TFDS does.
    split_names: The dataset's split names.
    size_of: Number of examples of a split (called only for the named splits).
    flag: Flag name for error messages, e.g. 'train_split'.
    dataset: Dataset name for error messages.

  Raises:
    ValueError: malformed string or unknown split name.
  """
  parts = []
  for part in split.replace(' ', '').split('+'):
    match = _SPLIT_PART.match(part)
    if not match:
      raise ValueError(f'--{flag}={split}: malformed split; use e.g. train, train[:10%], '
                       f'train[100:200] or train+test.')
    name, start_text, stop_text = match.groups()
    if name not in split_names:
      raise ValueError(f'--{flag}={split}: {dataset} has no split {name!r} (it has: '
                       f'{", ".join(sorted(split_names))}); set --{flag} to one of them.')
    size = size_of(name)

    def boundary(text: Optional[str], default: int) -> int:
      if text is None:
        return default
      value = (int(round(float(text[:-1]) * size / 100.0)) if text.endswith('%')
               else int(text))
      if value < 0:
        value += size
      return min(max(value, 0), size)

    parts.append((name, boundary(start_text, 0), boundary(stop_text, size)))
  return parts


# ---------------------------------------------------------------------------
# Sources: each yields (image uint8 [H, W, 3], label int64) for one shard of a split.


def _to_rgb(image: tf.Tensor) -> tf.Tensor:
  """[H, W, 1|3|4] -> [H, W, 3]."""
  channels = image.shape[-1]
  if channels == 1:
    return tf.image.grayscale_to_rgb(image)
  if channels == 4:
    return image[..., :3]
  return image


DOWNLOAD_PROBE_TIMEOUT_SECS = 10.0


def _check_downloadable(builder: Any) -> None:
  """Raises ConnectionError within seconds when the dataset's download host cannot be
  reached (TFDS itself retries for minutes before failing)."""
  try:
    urls = sorted(builder.url_infos or {})
  except Exception:  # pylint: disable=broad-except
    urls = []
  if not urls:
    return
  import requests  # pylint: disable=g-import-not-at-top
  try:
    requests.head(urls[0], timeout=DOWNLOAD_PROBE_TIMEOUT_SECS, allow_redirects=False)
  except requests.RequestException as error:
    raise ConnectionError(f'cannot reach {urls[0]} ({type(error).__name__})') from None


def _missing_paths(data_dir: str, name: str) -> list[str]:
  """The TFDS folders that download_and_prepare may create and that do not exist yet."""
  root = local_path(data_dir)
  candidates = [root, os.path.join(root, 'downloads'), os.path.join(root, name)]
  return [path for path in candidates if not tf.io.gfile.exists(path)]


def _remove_created(paths: list[str]) -> None:
  """Deletes what a failed download_and_prepare created among `paths` (outermost first)."""
  for path in paths:
    try:
      if tf.io.gfile.exists(path):
        tf.io.gfile.rmtree(path)
    except tf.errors.OpError:
      pass


class _TfdsSource:
  """A TFDS dataset with supervised keys (image, label)."""

  source = 'tfds'
  num_skipped_files = 0

  def __init__(self, name: str, data_dir: Optional[str]):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    self._tfds = tfds
    self.name = name
    self._data_dir = local_path(data_dir) if data_dir else None  # gs:// works too.
    self._prepare_tried = False
    try:
      self._builder = tfds.builder(name, data_dir=self._data_dir)
    except tfds.core.registered.DatasetNotFoundError:
      raise ValueError(
          f'--dataset={name}: not a TFDS dataset name, nor {IMAGE_FOLDER!r} or '
          f'{FASHION_MNIST_LOCAL!r}; check the name, or use --dataset={IMAGE_FOLDER} '
          f'--data_dir=ROOT (ROOT/<split>/<class>/*.jpg).') from None
    except Exception as error:  # pylint: disable=broad-except
      raise ValueError(f'--dataset={name}: TFDS could not open it ({_first_line(error)}); '
                       f'check --dataset and --data_dir.') from None
    info = self._builder.info
    keys = info.supervised_keys
    if not keys or len(keys) != 2:
      raise ValueError(f'--dataset={name}: this TFDS dataset has no (image, label) supervised '
                       f'keys; use an image classification dataset or --dataset={IMAGE_FOLDER}.')
    image_key, label_key = keys
    label_feature = info.features[label_key]
    if not hasattr(label_feature, 'num_classes'):
      raise ValueError(f'--dataset={name}: its label {label_key!r} is not a class label; '
                       f'use an image classification dataset.')
    self.num_classes = int(label_feature.num_classes)
    self.class_names = tuple(label_feature.names)
    shape = tuple(info.features[image_key].shape)
    self.image_shape = (shape[0], shape[1], 3) if None not in shape else None

  def _as_dataset(self, split: str, flag: str, *, shuffle_files: bool,
                  read_config=None) -> tf.data.Dataset:
    """builder.as_dataset with TFDS errors turned into one clear line."""
    data_dir = self._data_dir or os.environ.get('TFDS_DATA_DIR', '~/tensorflow_datasets')
    for attempt in range(2):
      try:
        return self._builder.as_dataset(split=split, as_supervised=True,
                                        shuffle_files=shuffle_files, read_config=read_config)
      except AssertionError as error:  # Data not prepared in data_dir.
        if attempt == 0 and not self._prepare_tried:
          self._prepare_tried = True
          created = _missing_paths(data_dir, self.name)
          try:
            _check_downloadable(self._builder)
            logging.info('%s is not prepared in %s; trying download_and_prepare.', self.name,
                         data_dir)
            self._builder.download_and_prepare()
            continue
          except Exception as prepare_error:  # pylint: disable=broad-except
            error = prepare_error
            _remove_created(created)
        raise FileNotFoundError(
            f'--dataset={self.name}: not found in TFDS data_dir {data_dir} and not '
            f'downloadable here ({_first_line(error)}); set --data_dir (or TFDS_DATA_DIR) to a '
            f'folder holding {self.name}/<version>/, or use --dataset={IMAGE_FOLDER} '
            f'--data_dir=ROOT.') from None
      except (ValueError, KeyError) as error:
        if 'Cannot shard' in str(error):
          raise
        splits = ', '.join(sorted(self._builder.info.splits.keys())) or 'unknown'
        raise ValueError(f'--{flag}={split}: not a split of {self.name} (it has: {splits}; '
                         f'{_first_line(error)}); set --{flag} to one of them, e.g. '
                         f'train[:10%].') from None
    raise AssertionError('unreachable')

  def num_examples(self, split: str, flag: str) -> int:
    dataset = self._as_dataset(split, flag, shuffle_files=False)
    cardinality = int(dataset.cardinality())
    if cardinality >= 0:
      return cardinality
    return int(self._builder.info.splits[split].num_examples)

  def examples(self, split: str, flag: str, *, num_shards: int, shard_index: int,
               shuffle_files: bool, seed: Optional[int]) -> tf.data.Dataset:
    tfds = self._tfds
    if num_shards > 1 and shuffle_files:
      # Training on several hosts: each reads its own files, as the official code.
      context = tf.distribute.InputContext(num_input_pipelines=num_shards,
                                           input_pipeline_id=shard_index)
      try:
        dataset = self._as_dataset(split, flag, shuffle_files=True, read_config=tfds.ReadConfig(
            input_context=context, shuffle_seed=seed, interleave_cycle_length=16,
            interleave_block_length=1))
        return dataset.map(lambda image, label: (_to_rgb(image), label))
      except ValueError as error:  # Fewer files than pipelines: shard examples below.
        logging.info('Sharding %s by example: %s', self.name, _first_line(error))
    # Examples in a fixed file order, so that the shards partition the split exactly.
    dataset = self._as_dataset(split, flag, shuffle_files=shuffle_files and num_shards == 1,
                               read_config=tfds.ReadConfig(shuffle_seed=seed))
    dataset = dataset.shard(num_shards, shard_index)
    return dataset.map(lambda image, label: (_to_rgb(image), label))


@dataclasses.dataclass(frozen=True)
class _FolderSplit:
  paths: np.ndarray   # [N] str, in a fixed pseudo-random order.
  labels: np.ndarray  # [N] int64.
  num_skipped: int


def _file_ends(path: str) -> tuple[bytes, bytes]:
  """(first 8 bytes, last 12 bytes) of a file; local files with open() (faster)."""
  if is_remote(path):
    with tf.io.gfile.GFile(path, 'rb') as f:
      head = f.read(8)
      f.seek(max(f.size() - 12, 0))
      return head, f.read(12)
  with open(path, 'rb', buffering=0) as f:
    start = f.read(8192)  # What a buffered read of 8 bytes reads anyway.
    if len(start) < 8192:  # The whole file (one system call for small images).
      return start[:8], start[-12:]
    f.seek(-12, os.SEEK_END)
    return start[:8], f.read(12)


def image_file_problem(path: str) -> Optional[str]:
  """Why an image file cannot be used (one short phrase), or None when it can.

  Cheap: reads the first 8 and last 12 bytes. The file must start with a JPEG, PNG,
  GIF or BMP signature; a JPEG, PNG or GIF without its end marker (FFD9, IEND, ';'),
  usually a truncated copy or download, is decoded to decide (some valid files carry
  bytes after the marker). Files that pass and still fail to decode (corrupt inside)
  are dropped by the input pipeline.
  """
  try:
    head, tail = _file_ends(path)
  except (OSError, tf.errors.OpError) as error:
    return f'cannot be read ({type(error).__name__})'
  if not any(head.startswith(signature) for signature in _IMAGE_SIGNATURES):
    return 'not a JPEG, PNG, GIF or BMP file (no image signature)'
  if head.startswith(b'\xff\xd8'):
    complete = tail.endswith(_JPEG_END)
  elif head.startswith(b'\x89PNG'):
    complete = tail.endswith(_PNG_END)
  elif head.startswith(b'GIF'):
    complete = tail.endswith(_GIF_END)
  else:  # BMP: no end marker.
    complete = True
  if complete:
    return None
  try:
    with tf.io.gfile.GFile(path, 'rb') as f:
      _decode_image_data(tf.constant(f.read()))
  except (OSError, tf.errors.OpError):
    return 'truncated or corrupt (no end marker, and it does not decode)'
  return None


def _decode_image_data(data: tf.Tensor) -> tf.Tensor:
  """Decodes one encoded image to uint8 [H, W, 3] (JPEG with INTEGER_ACCURATE DCT)."""
  image = tf.cond(
      tf.io.is_jpeg(data),
      lambda: tf.io.decode_jpeg(data, channels=3, dct_method='INTEGER_ACCURATE'),
      lambda: tf.io.decode_image(data, channels=3, expand_animations=False))
  image.set_shape([None, None, 3])
  return image


def _decode_image_file(path: tf.Tensor) -> tf.Tensor:
  """Reads and decodes one image file to uint8 [H, W, 3]."""
  return _decode_image_data(tf.io.read_file(path))


def _has_image_files(folder: str) -> bool:
  """Whether `folder` directly holds a file with an image extension."""
  return any(name.lower().endswith(IMAGE_EXTENSIONS) for name in list_folder(folder)[1])


def folder_layout(split_dirs: Sequence[str], labels: str = 'auto') -> tuple[bool, str]:
  """Decides whether image folders are labelled by their subfolders.

  `auto` reads ROOT/<split>/<class>/<image> (labelled) when no split folder holds image
  files directly and at least two subfolders (over all splits) hold image files
  directly; anything else (images directly in ROOT/<split>/, images only in deeper
  folders such as ROOT/<split>/2024/05/, or a single subfolder) is read unlabelled.

  Args:
    split_dirs: the ROOT/<split> folders.
    labels: 'auto', 'folders' (always labelled) or 'none' (always unlabelled).

  Returns:
    (labelled, a short reason for logs, e.g. 'auto: 10 class folders').
  """
  if labels not in IMAGE_FOLDER_LABELS:
    raise ValueError(f'--image_folder_labels={labels!r} is unknown; use one of '
                     f'{", ".join(IMAGE_FOLDER_LABELS)}.')
  if labels != 'auto':
    return labels == 'folders', f'--image_folder_labels={labels}'
  loose = [split_dir for split_dir in split_dirs if _has_image_files(split_dir)]
  if loose:
    return False, f'auto: image files directly in {loose[0]}'
  class_names = set()
  for split_dir in split_dirs:
    class_names.update(name for name in list_folder(split_dir)[0]
                       if _has_image_files(os.path.join(split_dir, name)))
  if len(class_names) >= 2:
    return True, f'auto: {len(class_names)} class folders'
  if class_names:
    return False, f'auto: one folder ({class_names.pop()}), not classes'
  return False, 'auto: no folder holds image files directly'


class _ImageFolderSource:
  """ROOT/<split>/<class>/<image file>, or unlabelled ROOT/<split>/**/<image file>."""

  source = IMAGE_FOLDER
  image_shape = None

  def __init__(self, root: Optional[str], labels: str = 'auto'):
    if not root:
      raise ValueError(f'--dataset={IMAGE_FOLDER} needs --data_dir=ROOT, a folder with '
                       f'ROOT/<split>/<class>/<image> (e.g. ../shared/data/cifar10).')
    self.root = (root.rstrip('/') if is_remote(root)
                 else os.path.abspath(os.path.expanduser(root)))
    if not tf.io.gfile.isdir(self.root):
      raise FileNotFoundError(f'--data_dir={root}: no such folder; --dataset={IMAGE_FOLDER} '
                              f'reads ROOT/<split>/<class>/<image>.')
    self._split_names = list_folder(self.root)[0]
    self.labelled, self.labels_note = folder_layout(
        [os.path.join(self.root, name) for name in self._split_names], labels)
    classes = set()
    if self.labelled:
      for split_name in self._split_names:
        classes.update(list_folder(os.path.join(self.root, split_name))[0])
      if not classes:
        raise FileNotFoundError(f'--data_dir={root}: no ROOT/<split>/<class>/ folders found; '
                                f'--dataset={IMAGE_FOLDER} reads ROOT/<split>/<class>/<image>, '
                                f'e.g. ROOT/train/cat/0001.jpg (or pass '
                                f'--image_folder_labels=none for unlabelled images).')
    elif not self._split_names:
      raise FileNotFoundError(f'--data_dir={root}: no ROOT/<split>/ folders found; '
                              f'--dataset={IMAGE_FOLDER} reads ROOT/<split>/<class>/<image> or, '
                              f'unlabelled, ROOT/<split>/<image>, e.g. ROOT/train/0001.jpg.')
    self.class_names = tuple(sorted(classes))
    self.num_classes = len(self.class_names)
    self._scanned: dict[str, _FolderSplit] = {}
    logging.info('image_folder %s: %s (%s).', self.root,
                 f'{self.num_classes} classes' if self.labelled else 'unlabelled',
                 self.labels_note)

  @property
  def num_skipped_files(self) -> int:
    return sum(split.num_skipped for split in self._scanned.values())

  def _candidates(self, split_dir: str) -> Iterator[tuple[str, int]]:
    """(file path, label) of the files of a split folder, in a fixed order.

    Labelled: the files directly in each class folder. Unlabelled: every file under
    `split_dir`, recursively (hidden files and folders left out), label -1.
    """
    if self.labelled:
      for label, class_name in enumerate(self.class_names):
        class_dir = os.path.join(split_dir, class_name)
        for name in list_folder(class_dir)[1]:  # Nothing when there is no such folder.
          yield os.path.join(class_dir, name), label
      return
    for path in walk_files(split_dir):
      yield path, -1

  def _scan(self, split_name: str) -> _FolderSplit:
    """Lists and checks the files of one split folder (once)."""
    if split_name in self._scanned:
      return self._scanned[split_name]
    split_dir = os.path.join(self.root, split_name)
    paths, labels = [], []
    not_images, examples = 0, []
    for file_path, label in self._candidates(split_dir):
      if file_path.lower().endswith(IMAGE_EXTENSIONS):
        paths.append(file_path)
        labels.append(label)
      else:
        not_images += 1
        examples.append(file_path)
    if is_remote(split_dir):  # Latency-bound reads: in parallel.
      with concurrent.futures.ThreadPoolExecutor(_REMOTE_READ_THREADS) as pool:
        problems = list(pool.map(image_file_problem, paths))
    else:
      problems = [image_file_problem(path) for path in paths]
    bad = [(path, problem) for path, problem in zip(paths, problems) if problem]
    for number, (path, problem) in enumerate(bad, 1):
      logging.warning('image_folder: skipped %s: %s (unreadable file %d of %d in %s).',
                      path, problem, number, len(bad), split_dir)
    if bad:
      kept = [index for index, problem in enumerate(problems) if not problem]
      paths, labels = [paths[index] for index in kept], [labels[index] for index in kept]
      examples += [path for path, _ in bad]
    unreadable = len(bad)
    num_skipped = not_images + unreadable
    if num_skipped:
      logging.warning(
          'image_folder %s: skipped %d of %d files (%d without an image extension %s, %d not '
          'a readable JPEG/PNG/GIF/BMP), e.g. %s', split_dir, num_skipped,
          num_skipped + len(paths), not_images, '/'.join(IMAGE_EXTENSIONS), unreadable,
          ', '.join(examples[:3]))
    if not paths:
      where = f'{split_dir}/<class>/' if self.labelled else f'{split_dir}/ (unlabelled)'
      raise FileNotFoundError(
          f'--data_dir={self.root}: no readable image files in {where} '
          f'({num_skipped} other files); --dataset={IMAGE_FOLDER} reads '
          f'ROOT/<split>/<class>/*.jpg|png or, unlabelled, ROOT/<split>/*.jpg|png.')
    order = np.random.RandomState(_SPLIT_ORDER_SEED).permutation(len(paths))
    scanned = _FolderSplit(np.array(paths)[order], np.array(labels, np.int64)[order], num_skipped)
    self._scanned[split_name] = scanned
    return scanned

  def _select(self, split: str, flag: str) -> tuple[np.ndarray, np.ndarray]:
    parts = parse_split(split, self._split_names, lambda name: len(self._scan(name).paths),
                        flag, f'image folder {self.root}')
    paths = [self._scan(name).paths[start:stop] for name, start, stop in parts]
    labels = [self._scan(name).labels[start:stop] for name, start, stop in parts]
    return np.concatenate(paths), np.concatenate(labels)

  def num_examples(self, split: str, flag: str) -> int:
    return len(self._select(split, flag)[0])

  def check_eval_classes(self, train_split: str, eval_split: str) -> None:
    """Raises ValueError (one line) when a class folder of the eval split's folders has
    images but no train split folder has any of that class (whole folders are
    compared, not the slices: a small slice may miss a class by chance)."""
    if not self.labelled:
      return

    def split_names(split: str, flag: str) -> list[str]:
      return [name for name, _, _ in parse_split(split, self._split_names,
                                                  lambda name: len(self._scan(name).paths),
                                                  flag, f'image folder {self.root}')]

    train_names = split_names(train_split, 'train_split')
    trained = set()
    for name in train_names:
      trained.update(np.unique(self._scan(name).labels).tolist())
    for name in split_names(eval_split, 'eval_split'):
      for label in np.unique(self._scan(name).labels).tolist():
        if label not in trained:
          class_name = self.class_names[label]
          raise ValueError(
              f'--eval_split={eval_split}: class {class_name!r} '
              f'({os.path.join(self.root, name, class_name)}) has no images in the '
              f'--train_split={train_split} folder(s) '
              f'{", ".join(os.path.join(self.root, n) for n in train_names)}; the model '
              f'cannot learn it: add its training images or remove the folder.')

  def examples(self, split: str, flag: str, *, num_shards: int, shard_index: int,
               shuffle_files: bool, seed: Optional[int]) -> tf.data.Dataset:
    paths, labels = self._select(split, flag)
    dataset = tf.data.Dataset.from_tensor_slices(
        (paths[shard_index::num_shards], labels[shard_index::num_shards]))
    if shuffle_files:
      dataset = dataset.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.map(lambda path, label: (_decode_image_file(path), label),
                          num_parallel_calls=tf.data.AUTOTUNE)
    # Last line of defence for files with an image header but corrupt data: skipped,
    # each logged by tf.data.
    return dataset.ignore_errors(log_warning=True)


def _read_idx(path: str) -> np.ndarray:
  """Reads an idx file (optionally .gz) to a uint8 array."""
  with tf.io.gfile.GFile(path, 'rb') as f:
    data = f.read()
  if path.endswith('.gz'):
    data = gzip.decompress(data)
  magic = int.from_bytes(data[:4], 'big')
  if magic >> 8 != 0x08:  # Unsigned byte data.
    raise ValueError(f'{path}: not an idx file of unsigned bytes (magic {magic:#x}).')
  num_dims = magic & 0xFF
  shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(num_dims))
  array = np.frombuffer(data, np.uint8, offset=4 + 4 * num_dims)
  if array.size != math.prod(shape):
    raise ValueError(f'{path}: truncated idx file ({array.size} bytes for shape {shape}).')
  return array.reshape(shape)


class _FashionMnistSource:
  """Fashion-MNIST from the idx files of Debian's dataset-fashion-mnist package."""

  source = FASHION_MNIST_LOCAL
  num_classes = 10
  class_names = FASHION_MNIST_CLASSES
  image_shape = (28, 28, 3)
  num_skipped_files = 0

  def __init__(self, data_dir: Optional[str]):
    self.data_dir = local_path(data_dir or FASHION_MNIST_DEFAULT_DIR)
    self._loaded: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    self._files = {}
    for split_name, names in _FASHION_MNIST_FILES.items():
      found = []
      for name in names:
        candidates = [os.path.join(self.data_dir, name + suffix) for suffix in ('.gz', '')]
        existing = [path for path in candidates
                    if tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path)]
        if not existing:
          raise FileNotFoundError(
              f'--dataset={FASHION_MNIST_LOCAL}: {name}(.gz) not found in {self.data_dir}; '
              f'install it with `apt-get install -y dataset-fashion-mnist` '
              f'(scripts/quickstart_data.sh) or set --data_dir to the folder of the idx files.')
        found.append(existing[0])
      self._files[split_name] = tuple(found)

  def _load(self, split_name: str) -> tuple[np.ndarray, np.ndarray]:
    """(images [N, 28, 28] uint8, labels [N] int64) of a split, in a fixed order (once)."""
    if split_name in self._loaded:
      return self._loaded[split_name]
    images_path, labels_path = self._files[split_name]
    images, labels = _read_idx(images_path), _read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
      raise ValueError(f'--data_dir={self.data_dir}: {images_path} and {labels_path} do not '
                       f'match (shapes {images.shape}, {labels.shape}).')
    order = np.random.RandomState(_SPLIT_ORDER_SEED).permutation(len(labels))
    self._loaded[split_name] = (images[order], labels[order].astype(np.int64))
    return self._loaded[split_name]

  def _select(self, split: str, flag: str) -> tuple[np.ndarray, np.ndarray]:
    parts = parse_split(split, tuple(_FASHION_MNIST_FILES), lambda name: len(self._load(name)[1]),
                        flag, FASHION_MNIST_LOCAL)
    images = [self._load(name)[0][start:stop] for name, start, stop in parts]
    labels = [self._load(name)[1][start:stop] for name, start, stop in parts]
    return np.concatenate(images), np.concatenate(labels)

  def num_examples(self, split: str, flag: str) -> int:
    return len(self._select(split, flag)[1])

  def examples(self, split: str, flag: str, *, num_shards: int, shard_index: int,
               shuffle_files: bool, seed: Optional[int]) -> tf.data.Dataset:
    images, labels = self._select(split, flag)
    images = images[shard_index::num_shards, :, :, np.newaxis]  # [n, 28, 28, 1]
    labels = labels[shard_index::num_shards]
    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    if shuffle_files:
      dataset = dataset.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    return dataset.map(lambda image, label: (_to_rgb(image), label))


@functools.lru_cache(maxsize=8)
def _get_source(dataset: str, data_dir: Optional[str], image_folder_labels: str = 'auto'):
  """The source object for a dataset name (cached: folders are scanned once)."""
  if dataset == IMAGE_FOLDER:
    return _ImageFolderSource(data_dir, image_folder_labels)
  if dataset == FASHION_MNIST_LOCAL:
    return _FashionMnistSource(data_dir)
  return _TfdsSource(dataset, data_dir)


# ---------------------------------------------------------------------------
# Public API.


def get_dataset_info(data_config: DataConfig, *, with_eval: bool = True) -> DatasetInfo:
  """Sizes and classes of `data_config.train_split` (and `eval_split` when `with_eval`).

  Raises:
    ValueError / FileNotFoundError: one line naming the flag and what to do, for an
      unknown dataset, missing data, or a missing split.
  """
  source = _get_source(data_config.dataset, data_config.data_dir,
                       data_config.image_folder_labels)
  num_train = source.num_examples(data_config.train_split, 'train_split')
  _check_not_empty(num_train, 'train_split', data_config)
  num_eval = source.num_examples(data_config.eval_split, 'eval_split') if with_eval else 0
  if with_eval:
    _check_not_empty(num_eval, 'eval_split', data_config)
    if isinstance(source, _ImageFolderSource):
      source.check_eval_classes(data_config.train_split, data_config.eval_split)
  return DatasetInfo(
      num_train_examples=num_train,
      num_eval_examples=num_eval,
      num_classes=source.num_classes,
      class_names=source.class_names,
      source=source.source,
      image_shape=source.image_shape,
      num_skipped_files=source.num_skipped_files,
      labels_note=getattr(source, 'labels_note', ''))


def _check_not_empty(num_examples: int, flag: str, data_config: DataConfig) -> None:
  """Raises ValueError naming --flag when its split selects no examples."""
  if num_examples <= 0:
    split = getattr(data_config, flag)
    raise ValueError(f'--{flag}={split} selects no examples of --dataset='
                     f'{data_config.dataset}; choose a non-empty split (e.g. without [:0]).')


def num_eval_steps(num_examples: int, global_batch_size: int) -> int:
  """Global eval steps that cover every example once: ceil(num_examples / global_batch_size)."""
  return -(-num_examples // global_batch_size)


def _derive_seed(seed: Optional[int], pipeline_id: int, salt: int) -> Optional[int]:
  """A distinct seed per input pipeline and purpose; None stays None (random)."""
  if seed is None:
    return None
  return (seed * 1_000_003 + pipeline_id * 101 + salt) % (2**31 - 1)


def build_input_fn(data_config: DataConfig,
                   *,
                   split: str,
                   is_training: bool,
                   train_mode: str,
                   global_batch_size: int,
                   seed: Optional[int] = None,
                   flag: Optional[str] = None
                   ) -> Callable[[Optional[tf.distribute.InputContext]], tf.data.Dataset]:
  """Input function for `strategy.distribute_datasets_from_function`.

  Each input pipeline reads its shard (example i goes to pipeline i mod P) and yields
  per-replica batches (b = global_batch_size / num_replicas) of
  {'image': float32 [2b, S, S, 3] for pretraining (view 1 of the b examples in rows
     0..b-1, view 2 in rows b..2b-1) or [b, S, S, 3] otherwise,
   'label': float32 [b, num_classes] one-hot, 'mask': float32 [b] (1 real, 0 padding)}.
  Training: shuffled (seedable), repeated forever, last partial batch dropped;
  pretraining views get the full SimCLR augmentation, fine-tuning crop and flip only.
  Pretraining blur (`use_blur`): per image (`blur_impl='per_image'`), or as the
  official code (`'per_batch'`): one sigma per view of each per-replica batch.
  Eval: one pass, center crop (none at <= 32 px), every example exactly once; each
  pipeline pads with mask-0 examples to ceil(N / global_batch_size) global steps, so
  all replicas get the same number of equal batches.

  Args:
    data_config: Dataset, image size and augmentation settings.
    split: Split string, e.g. data_config.train_split.
    is_training: Training (augmented, infinite) or eval (one pass) pipeline.
    train_mode: 'pretrain' (two views) or 'finetune' (one view).
    global_batch_size: Examples per global step over all replicas.
    seed: Makes shuffling and augmentation reproducible; None: random.
    flag: The flag named in errors about `split`; default train_split / eval_split.

  Raises:
    ValueError / FileNotFoundError: one clear line, at call time (not in the input fn).
  """
  if train_mode not in ('pretrain', 'finetune'):
    raise ValueError(f'--train_mode={train_mode!r} is unknown; use pretrain or finetune.')
  source = _get_source(data_config.dataset, data_config.data_dir,
                       data_config.image_folder_labels)
  flag = flag or ('train_split' if is_training else 'eval_split')
  num_examples = source.num_examples(split, flag)
  num_classes = source.num_classes
  size = data_config.image_size
  pretrain = is_training and train_mode == 'pretrain'
  blur_per_image = data_config.use_blur and pretrain and data_config.blur_impl == 'per_image'
  blur_per_batch = data_config.use_blur and pretrain and data_config.blur_impl == 'per_batch'

  def one_hot(label: tf.Tensor) -> tf.Tensor:
    return tf.one_hot(label, num_classes, dtype=tf.float32)

  def train_view(image: tf.Tensor, view_seed: tf.Tensor) -> tf.Tensor:
    return augment.preprocess_for_train(
        image, size, size,
        color_jitter_strength=data_config.color_jitter_strength,
        use_blur=blur_per_image,
        color_distort=pretrain,
        impl=data_config.color_jitter_impl,
        crop_fallback=data_config.crop_fallback,
        seed=view_seed)

  def train_map(example, example_seed):
    image, label = example
    if pretrain:
      seed_1, seed_2 = tf.unstack(tf.random.experimental.stateless_split(example_seed, 2))
      views = (train_view(image, seed_1), train_view(image, seed_2))
    else:
      views = train_view(image, example_seed)
    return {'image': views, 'label': one_hot(label), 'mask': tf.constant(1.0)}

  def stack_views(batch, batch_seed=None):
    view_1, view_2 = batch['image']
    if batch_seed is not None:  # The official blur: one sigma per view of the batch.
      seed_1, seed_2 = tf.unstack(tf.random.experimental.stateless_split(batch_seed, 2))
      view_1 = augment.batch_random_blur(view_1, seed=seed_1)
      view_2 = augment.batch_random_blur(view_2, seed=seed_2)
    return dict(batch, image=tf.concat([view_1, view_2], axis=0))  # [2b, S, S, 3]

  eval_crop = augment.eval_center_crop(size)

  def eval_map(image, label):
    return {'image': augment.preprocess_for_eval(image, size, size, crop=eval_crop),
            'label': one_hot(label), 'mask': tf.constant(1.0)}

  def input_fn(input_context: Optional[tf.distribute.InputContext] = None) -> tf.data.Dataset:
    context = input_context or tf.distribute.InputContext()
    batch_size = context.get_per_replica_batch_size(global_batch_size)
    num_pipelines, pipeline_id = context.num_input_pipelines, context.input_pipeline_id
    dataset = source.examples(split, flag, num_shards=num_pipelines, shard_index=pipeline_id,
                              shuffle_files=is_training,
                              seed=_derive_seed(seed, pipeline_id, 0))
    if data_config.cache_dataset:
      dataset = dataset.cache()  # Decoded images; augmentation stays random per epoch.
    options = tf.data.Options()
    if is_training:
      buffer_multiplier = 50 if size <= augment.SMALL_IMAGE_SIZE else 10
      dataset = dataset.shuffle(batch_size * buffer_multiplier,
                                seed=_derive_seed(seed, pipeline_id, 1))
      dataset = dataset.repeat()
      example_seeds = tf.data.Dataset.random(seed=_derive_seed(seed, pipeline_id, 2)).batch(2)
      dataset = tf.data.Dataset.zip(dataset, example_seeds)
      dataset = dataset.map(train_map, num_parallel_calls=tf.data.AUTOTUNE)
      dataset = dataset.batch(batch_size, drop_remainder=True)
      if blur_per_batch:
        batch_seeds = tf.data.Dataset.random(seed=_derive_seed(seed, pipeline_id, 3)).batch(2)
        dataset = tf.data.Dataset.zip(dataset, batch_seeds).map(stack_views)
      elif pretrain:
        dataset = dataset.map(stack_views)
      options.deterministic = seed is not None
      # No experimental_slack: it only helps TPU hosts, and a restored iterator
      # with slack on hangs after its next save (tf_simclr.train._without_slack).
    else:
      dataset = dataset.map(eval_map, num_parallel_calls=tf.data.AUTOTUNE)
      # Each pipeline feeds num_replicas / num_pipelines replicas per global step.
      examples_per_pipeline = (num_eval_steps(num_examples, global_batch_size)
                               * (global_batch_size // num_pipelines))
      padding = tf.data.Dataset.from_tensors({
          'image': tf.zeros([size, size, 3], tf.float32),
          'label': tf.zeros([num_classes], tf.float32),
          'mask': tf.constant(0.0)}).repeat()
      dataset = dataset.concatenate(padding).take(examples_per_pipeline)
      dataset = dataset.batch(batch_size, drop_remainder=True)
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)

  return input_fn
