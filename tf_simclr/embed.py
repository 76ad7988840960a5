"""Embeddings of your images from a trained run or an export.

    python -m tf_simclr.embed --model_dir=RUN | --export_dir=EXPORT \
        --images=FOLDER_OR_GLOB --out=DIR [--endpoint=final_avg_pool] [--batch_size=64]

Writes to DIR:

* `embeddings.npy`: float32 [N, D], row i the `--endpoint` output (default
  `final_avg_pool`, the encoder's feature vector) of the image of files.csv row i;
* `files.csv`: `index,path,label` (label: the class folder when --images is a folder of
  class folders, else empty);
* `skipped.csv`: `path,reason` of the files that could not be read (not fatal);
* `projector/`: a TensorBoard projector log (`tensorboard --logdir=DIR/projector`):
  projector_config.pbtxt, the embeddings as raw float32 (`embeddings.bytes`),
  metadata.tsv (path, label) and a sprite of thumbnails (`sprite.png`).

Images are read as in evaluation (RGB in [0, 1], center crop above 32 px, resized to
the training image size) and streamed: one batch in memory at a time, a progress line
every few seconds; the embeddings go to disk as they come (memory does not grow with N,
except the list of file names and the sprite, at most 8192 x 8192 pixels). Bad input
(no images, a run without checkpoint, an export without a model card, an unknown
endpoint): one line `error: ...` on stderr, exit status 2, nothing written.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import sys
import time
from typing import Any, Callable, Iterator, Optional, Sequence

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

from tf_simclr import cuda_quiet  # pylint: disable=g-import-not-at-top
from tf_simclr.data import augment  # pylint: disable=g-import-not-at-top
from tf_simclr.data import datasets  # pylint: disable=g-import-not-at-top

DEFAULT_ENDPOINT = 'final_avg_pool'
MAX_SPRITE_SIDE = 8192  # The projector's limit for the sprite image.
EXIT_BAD_INPUT = 2


# ---------------------------------------------------------------------------
# Listing the images.


def list_images(images: str, labels: str = 'auto'
                ) -> tuple[list[str], list[str], list[tuple[str, str]]]:
  """Files to embed, their labels and the files skipped up front.

  Args:
    images: a folder (read recursively; with class subfolders when `labels` says so,
      see `datasets.folder_layout`) or a glob pattern such as '/photos/*.jpg'.
    labels: 'auto', 'folders' or 'none', for a folder.

  Returns:
    (paths with an image extension in a fixed order, their labels ('' without),
     [(path, reason)] of files without an image extension).

  Raises:
    FileNotFoundError: one line when nothing matches or no file has an image extension.
  """
  skipped: list[tuple[str, str]] = []
  entries: list[tuple[str, str]] = []
  if tf.io.gfile.isdir(images):
    root = images.rstrip('/') or '/'
    labelled, _ = datasets.folder_layout([root], labels)
    if labelled:
      for class_name in datasets.list_folder(root)[0]:
        class_dir = os.path.join(root, class_name)
        entries += [(os.path.join(class_dir, name), class_name)
                    for name in datasets.list_folder(class_dir)[1]]
    else:
      entries = [(path, '') for path in datasets.walk_files(root)]
  else:
    matches = sorted(tf.io.gfile.glob(images))
    entries = [(path, '') for path in matches if not tf.io.gfile.isdir(path)]
    if not entries:
      raise FileNotFoundError(f'--images={images}: no such folder, and no file matches it '
                              'as a glob; pass a folder of images or a pattern such as '
                              '"/photos/*.jpg".')
  paths, path_labels = [], []
  for path, label in entries:
    if path.lower().endswith(datasets.IMAGE_EXTENSIONS):
      paths.append(path)
      path_labels.append(label)
    else:
      skipped.append((path, 'no image extension (' + '/'.join(datasets.IMAGE_EXTENSIONS) + ')'))
  if not paths:
    raise FileNotFoundError(
        f'--images={images}: no image files ({len(skipped)} other files); pass a folder or '
        'glob of JPEG, PNG, GIF or BMP files.')
  return paths, path_labels, skipped


# ---------------------------------------------------------------------------
# The model: a function images [B, S, S, 3] -> {endpoint: [B, ...]}.


def load_export(export_dir: str) -> tuple[Callable[[tf.Tensor], dict[str, tf.Tensor]], int,
                                          dict[str, Any]]:
  """(serve function, training image size, model card) of a hub export."""
  from tf_simclr.export import model_card  # pylint: disable=g-import-not-at-top
  card = model_card.read_card(export_dir)
  loaded = tf.saved_model.load(export_dir)
  image_size = int(card.get('input', {}).get('training_image_size') or 0)

  def serve(images: tf.Tensor) -> dict[str, tf.Tensor]:
    return loaded.serve(images)  # The closure keeps the loaded object (its variables) alive.

  return serve, image_size, card


def load_run(model_dir: str, checkpoint: str = 'latest'
             ) -> tuple[Callable[[tf.Tensor], dict[str, tf.Tensor]], int, str]:
  """(model call in inference mode, image size, checkpoint path) of a training run.

  Restores the encoder and projection head (the supervised head's `logits_sup` is
  available from an export).
  """
  from tf_simclr import checkpoints  # pylint: disable=g-import-not-at-top
  from tf_simclr import config as config_lib  # pylint: disable=g-import-not-at-top
  from tf_simclr.models import build_model_for  # pylint: disable=g-import-not-at-top

  checkpoint_path = checkpoints.checkpoint_of_run(model_dir, checkpoint)
  config = config_from_run(model_dir)
  config = config_lib.replace(config, train={
      'train_mode': 'pretrain', 'lineareval_while_pretraining': False,
      'fine_tune_after_block': -1, 'zero_init_logits_layer': False})
  model = build_model_for(config, None)
  parts = tf.train.Checkpoint(encoder=model.encoder, projection_head=model.projection_head)
  checkpoints.restore_or_explain(tf.train.Checkpoint(model=parts), checkpoint_path)

  @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
  def serve(images: tf.Tensor) -> dict[str, tf.Tensor]:
    outputs = model(images, training=False)
    return {name: tf.cast(value, tf.float32) for name, value in outputs.items()}

  return serve, config.data.image_size, checkpoint_path


def config_from_run(model_dir: str) -> Any:
  """The `Config` of a run from its flags.json (flag names are the config's field names;
  absent ones take their defaults, unknown ones such as absl's own are ignored)."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from tf_simclr import config as config_lib  # pylint: disable=g-import-not-at-top
  from tf_simclr import run_dir  # pylint: disable=g-import-not-at-top
  values = run_dir.load_flags_json(run_dir.flags_json_path(model_dir))
  nested = {}
  for section in dataclasses.fields(config_lib.Config):
    names = {field.name for field in dataclasses.fields(section.default_factory)}
    nested[section.name] = {name: values[name] for name in names if name in values}
  return config_lib.Config.from_dict(nested)


# ---------------------------------------------------------------------------
# Output files.


def npy_header(shape: tuple[int, ...], dtype: str = '<f4') -> bytes:
  """The .npy (format 1.0) header of a C-order array."""
  buffer = io.BytesIO()
  np.lib.format.write_array_header_1_0(
      buffer, {'descr': dtype, 'fortran_order': False, 'shape': shape})
  return buffer.getvalue()


def _sprite_layout(num_images: int, thumbnail_size: int) -> tuple[int, int]:
  """(images per sprite row, thumbnail side) so that the sprite fits MAX_SPRITE_SIDE."""
  per_row = max(1, math.ceil(math.sqrt(num_images)))
  return per_row, min(thumbnail_size, MAX_SPRITE_SIDE // per_row)


def _write_projector(out: str, num_rows: int, dim: int, endpoint: str,
                     sprite: Optional[np.ndarray], thumbnail: int) -> None:
  """projector_config.pbtxt next to embeddings.bytes, metadata.tsv and sprite.png."""
  from google.protobuf import text_format  # pylint: disable=g-import-not-at-top
  from tensorboard.plugins.projector import projector_config_pb2  # pylint: disable=g-import-not-at-top
  config = projector_config_pb2.ProjectorConfig()
  embedding = config.embeddings.add()
  embedding.tensor_name = endpoint
  embedding.tensor_path = 'embeddings.bytes'
  embedding.tensor_shape.extend([num_rows, dim])
  embedding.metadata_path = 'metadata.tsv'
  if sprite is not None:
    per_row = sprite.shape[0] // thumbnail
    used_rows = math.ceil(num_rows / per_row)
    with tf.io.gfile.GFile(os.path.join(out, 'sprite.png'), 'wb') as sprite_file:
      sprite_file.write(tf.io.encode_png(sprite[:used_rows * thumbnail]).numpy())
    embedding.sprite.image_path = 'sprite.png'
    embedding.sprite.single_image_dim.extend([thumbnail, thumbnail])
  with tf.io.gfile.GFile(os.path.join(out, 'projector_config.pbtxt'), 'w') as config_file:
    config_file.write(text_format.MessageToString(config))


def _thumbnail(image: tf.Tensor, size: int) -> tf.Tensor:
  """uint8 [size, size, 3]: the central square of the image, resized."""
  shape = tf.shape(image)
  side = tf.minimum(shape[0], shape[1])
  square = tf.image.crop_to_bounding_box(image, (shape[0] - side) // 2,
                                         (shape[1] - side) // 2, side, side)
  resized = tf.image.resize(square, [size, size], method='area', antialias=True)
  return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


def image_batches(paths: Sequence[str], image_size: int, batch_size: int,
                  thumbnail_size: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """(indices [b], images float32 [b, S, S, 3], thumbnails uint8 [b, t, t, 3]) batches.

  Files that fail to decode are left out (their index is missing from `indices`).
  """
  crop = augment.eval_center_crop(image_size)

  def load(index: tf.Tensor, path: tf.Tensor):
    image = datasets._decode_image_file(path)  # pylint: disable=protected-access
    return (index, augment.preprocess_for_eval(image, image_size, image_size, crop=crop),
            _thumbnail(image, max(thumbnail_size, 1)))

  dataset = tf.data.Dataset.from_tensor_slices(
      (np.arange(len(paths), dtype=np.int64), np.asarray(paths)))
  dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  dataset = dataset.ignore_errors().batch(batch_size).prefetch(2)
  for indices, images, thumbnails in dataset:
    yield indices.numpy(), images, thumbnails.numpy()


def embed_images(serve: Callable[[tf.Tensor], dict[str, tf.Tensor]],
                 paths: Sequence[str],
                 labels: Sequence[str],
                 out: str,
                 *,
                 image_size: int,
                 endpoint: str = DEFAULT_ENDPOINT,
                 batch_size: int = 64,
                 thumbnail_size: int = 32,
                 skipped: Sequence[tuple[str, str]] = (),
                 progress_every_secs: float = 5.0,
                 stream: Any = None) -> dict[str, Any]:
  """Embeds `paths` with `serve` and writes the files of the module docstring to `out`.

  Args:
    serve: images float32 [B, S, S, 3] in [0, 1] -> {endpoint name: tensor}.
    paths: image files; labels: a label per path ('' without).
    out: the output folder (created).
    image_size: S, the side the images are resized to.
    endpoint: the output to keep; its features are flattened to one row per image.
    batch_size: images per model call.
    thumbnail_size: the sprite's thumbnail side (smaller when the sprite would exceed
      8192 px; 0: no sprite).
    skipped: files already skipped, written to skipped.csv with the unreadable ones.
    progress_every_secs: seconds between progress lines.
    stream: where progress lines go (default stdout).

  Returns:
    {'num_embedded', 'dim', 'num_skipped', 'seconds'}.

  Raises:
    ValueError: `endpoint` is not an output of the model (one line, names the valid ones).
    FileNotFoundError: no file could be read.
  """
  stream = stream or sys.stdout
  projector_dir = os.path.join(out, 'projector')
  per_row, thumbnail = _sprite_layout(len(paths), thumbnail_size)
  sprite = (np.zeros([per_row * thumbnail, per_row * thumbnail, 3], np.uint8)
            if thumbnail_size > 0 and thumbnail >= 4 else None)
  rows_path = os.path.join(projector_dir, 'embeddings.bytes')
  skipped = list(skipped)
  num_rows, dim, expected = 0, None, 0
  start = last_report = time.perf_counter()
  created = []
  try:
    for directory in (out, projector_dir):
      if not tf.io.gfile.isdir(directory):
        tf.io.gfile.makedirs(directory)
        created.append(directory)
    with tf.io.gfile.GFile(rows_path, 'wb') as rows_file, \
        tf.io.gfile.GFile(os.path.join(out, 'files.csv'), 'w') as files_file, \
        tf.io.gfile.GFile(os.path.join(projector_dir, 'metadata.tsv'), 'w') as metadata_file:
      files_csv = csv.writer(files_file, lineterminator='\n')
      files_csv.writerow(['index', 'path', 'label'])
      metadata_file.write('path\tlabel\n')
      for indices, images, thumbnails in image_batches(paths, image_size, batch_size,
                                                       thumbnail if sprite is not None else 1):
        outputs = serve(images)
        if endpoint not in outputs:
          raise ValueError(f'--endpoint={endpoint} is not an output of the model; use one '
                           f'of {", ".join(sorted(outputs))}.')
        features = tf.reshape(tf.cast(outputs[endpoint], tf.float32),
                              [tf.shape(images)[0], -1]).numpy()
        dim = features.shape[1]
        rows_file.write(features.astype('<f4').tobytes())
        for row, index in enumerate(indices):
          skipped += [(paths[i], 'could not be decoded as an image')
                      for i in range(expected, index)]
          expected = index + 1
          files_csv.writerow([num_rows, paths[index], labels[index]])
          metadata_file.write(f'{_tsv(paths[index])}\t{_tsv(labels[index])}\n')
          if sprite is not None:
            y, x = divmod(num_rows, per_row)
            sprite[y * thumbnail:(y + 1) * thumbnail,
                   x * thumbnail:(x + 1) * thumbnail] = thumbnails[row]
          num_rows += 1
        now = time.perf_counter()
        if now - last_report >= progress_every_secs:
          last_report = now
          print(_progress(expected, len(paths), num_rows, now - start), file=stream, flush=True)
    skipped += [(paths[i], 'could not be decoded as an image')
                for i in range(expected, len(paths))]
    if not num_rows:
      raise FileNotFoundError(f'none of the {len(paths)} image files could be read (e.g. '
                              f'{paths[0]}); pass JPEG, PNG, GIF or BMP files.')
    with tf.io.gfile.GFile(os.path.join(out, 'embeddings.npy'), 'wb') as npy_file, \
        tf.io.gfile.GFile(rows_path, 'rb') as rows_file:
      npy_file.write(npy_header((num_rows, dim)))
      while chunk := rows_file.read(64 << 20):
        npy_file.write(chunk)
    with tf.io.gfile.GFile(os.path.join(out, 'skipped.csv'), 'w') as skipped_file:
      skipped_csv = csv.writer(skipped_file, lineterminator='\n')
      skipped_csv.writerow(['path', 'reason'])
      skipped_csv.writerows(skipped)
    _write_projector(projector_dir, num_rows, dim, endpoint, sprite, thumbnail)
  except BaseException:
    for directory in reversed(created):  # Only what this call created.
      if tf.io.gfile.exists(directory):
        tf.io.gfile.rmtree(directory)
    raise
  seconds = time.perf_counter() - start
  print(_progress(len(paths), len(paths), num_rows, seconds), file=stream, flush=True)
  return {'num_embedded': num_rows, 'dim': dim, 'num_skipped': len(skipped),
          'seconds': seconds}


def _tsv(text: str) -> str:
  return text.replace('\t', ' ').replace('\n', ' ')


def _progress(done: int, total: int, embedded: int, seconds: float) -> str:
  rate = done / max(seconds, 1e-9)
  eta = (total - done) / rate if rate > 0 else 0.0
  return (f'embedded {embedded} of {total} files ({100.0 * done / total:.1f}%) | '
          f'{rate:.1f} images/s | ETA {eta:.0f} s')


# ---------------------------------------------------------------------------
# Command line.


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog='python -m tf_simclr.embed',
      description='Embeddings of a folder or glob of images, with a TensorBoard projector log.')
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument('--model_dir', help='A training run (flags.json and ckpt-*).')
  source.add_argument('--export_dir', help='A hub export (with its model card).')
  parser.add_argument('--images', required=True, help='A folder of images or a glob.')
  parser.add_argument('--out', required=True, help='The output folder (new or empty).')
  parser.add_argument('--endpoint', default=DEFAULT_ENDPOINT,
                      help='The output to keep: final_avg_pool (default), block_group1..4, '
                      'proj_head_output, ft_hidden, ... (flattened per image).')
  parser.add_argument('--batch_size', type=int, default=64)
  parser.add_argument('--image_size', type=int, default=0,
                      help='Resize to this side (default: the training image size).')
  parser.add_argument('--labels', '--image_folder_labels', dest='labels', default='auto',
                      choices=datasets_labels(),
                      help='--images folder: class subfolders (folders), none, or auto '
                      '(--image_folder_labels as in run.py).')
  parser.add_argument('--checkpoint', default='latest',
                      help='With --model_dir: "latest" or a checkpoint prefix.')
  parser.add_argument('--thumbnail_size', type=int, default=32,
                      help='Sprite thumbnail side in pixels (0: no sprite).')
  return parser.parse_args(argv)


def datasets_labels() -> tuple[str, ...]:
  from tf_simclr.config import IMAGE_FOLDER_LABELS  # pylint: disable=g-import-not-at-top
  return IMAGE_FOLDER_LABELS


def run(args: argparse.Namespace) -> dict[str, Any]:
  """Checks the arguments, loads the model and embeds; raises one-line errors."""
  if args.batch_size < 1:
    raise ValueError(f'--batch_size={args.batch_size} must be >= 1.')
  if args.image_size < 0 or args.thumbnail_size < 0:
    raise ValueError('--image_size and --thumbnail_size must be >= 0.')
  out = args.out.rstrip('/') or '/'
  if tf.io.gfile.isdir(out) and tf.io.gfile.listdir(out):
    raise FileExistsError(f'--out={args.out} exists and is not empty; pass a new folder.')
  if tf.io.gfile.exists(out) and not tf.io.gfile.isdir(out):
    raise FileExistsError(f'--out={args.out} is a file; pass a new folder.')
  paths, labels, skipped = list_images(args.images, args.labels)
  if args.export_dir:
    serve, image_size, _ = load_export(args.export_dir)
    source = args.export_dir
  else:
    serve, image_size, source = load_run(args.model_dir, args.checkpoint)
  image_size = args.image_size or image_size
  if not image_size:
    raise ValueError(f'{source}: the training image size is unknown; pass --image_size.')
  print(f'Embedding {len(paths)} files from {args.images} with {source} '
        f'({args.endpoint}, {image_size}x{image_size} px) into {out}', flush=True)
  return embed_images(serve, paths, labels, out, image_size=image_size,
                      endpoint=args.endpoint, batch_size=args.batch_size,
                      thumbnail_size=args.thumbnail_size, skipped=skipped)


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = _parse_args(argv)
  cuda_quiet.initialize_devices()  # Without TF's cuInit error line on a CPU machine.
  try:
    result = run(args)
  except (FileNotFoundError, FileExistsError, ValueError) as error:
    print('error: ' + ' '.join(str(error).split()), file=sys.stderr, flush=True)
    return EXIT_BAD_INPUT
  print(f'Wrote {args.out}/embeddings.npy [{result["num_embedded"]}, {result["dim"]}] float32, '
        f'files.csv, skipped.csv ({result["num_skipped"]} files) and a projector log: '
        f'tensorboard --logdir={args.out}/projector', flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
