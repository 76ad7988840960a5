"""Looking at augmentations: view pairs for tf.summary.image and PNG grids.

    python -m tf_simclr.data.visualize --out grid.png --dataset=image_folder \
        --data_dir=../shared/data/cifar10 --split=train --image_size=32 --num_images=8

Each grid row is one example: its view 1 and view 2 side by side, as the pretraining
pipeline makes them.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Optional, Sequence

import numpy as np
from PIL import Image
import tensorflow as tf

from tf_simclr.config import DataConfig
from tf_simclr.data import datasets


def view_pairs(images: tf.Tensor, max_images: Optional[int] = None) -> tf.Tensor:
  """Pretraining batch [2b, H, W, C] (view 1 rows first) -> [n, H, 2W, C] side-by-side pairs.

  The result goes straight into `tf.summary.image(name, pairs, max_outputs=n)`.
  """
  view_1, view_2 = tf.split(images, 2, axis=0)  # Each [b, H, W, C].
  pairs = tf.concat([view_1, view_2], axis=2)    # [b, H, 2W, C]
  if max_images is not None:
    pairs = pairs[:max_images]
  return pairs


def pairs_from_config(data_config: DataConfig, *, split: str, num_images: int,
                      seed: Optional[int] = 0) -> np.ndarray:
  """[num_images, S, 2S, 3] float pairs of views from the pretraining pipeline."""
  input_fn = datasets.build_input_fn(data_config, split=split, is_training=True,
                                     train_mode='pretrain', global_batch_size=num_images,
                                     seed=seed)
  batch = next(iter(input_fn(None)))
  return view_pairs(batch['image']).numpy()


def save_grid(pairs: np.ndarray, path: str, *, scale: int = 1, columns: int = 1,
              gap: int = 2) -> str:
  """Writes [n, H, 2W, 3] pairs in [0, 1] as a PNG grid (white gaps), upscaled by `scale`."""
  count, height, width, _ = pairs.shape
  rows = -(-count // columns)
  grid = np.ones([rows * (height + gap) + gap, columns * (width + gap) + gap, 3], np.float32)
  for index, pair in enumerate(pairs):
    top = gap + (index // columns) * (height + gap)
    left = gap + (index % columns) * (width + gap)
    grid[top:top + height, left:left + width] = pair
  image = Image.fromarray(np.round(np.clip(grid, 0, 1) * 255).astype(np.uint8))
  if scale > 1:
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
  image.save(path)
  return path


def main(argv: Optional[Sequence[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', required=True, help='PNG file to write.')
  parser.add_argument('--dataset', default='image_folder')
  parser.add_argument('--data_dir', default=None)
  parser.add_argument('--split', default='train')
  parser.add_argument('--image_size', type=int, default=32)
  parser.add_argument('--color_jitter_strength', type=float, default=1.0)
  parser.add_argument('--use_blur', type=lambda text: text.lower() in ('1', 'true', 'yes'),
                      default=True)
  parser.add_argument('--color_jitter_impl', default='simclrv2')
  parser.add_argument('--num_images', type=int, default=8)
  parser.add_argument('--columns', type=int, default=2)
  parser.add_argument('--scale', type=int, default=4, help='Nearest-neighbour upscaling.')
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)
  from tf_simclr import cuda_quiet  # pylint: disable=g-import-not-at-top
  cuda_quiet.initialize_devices()  # Without TF's cuInit error line on a CPU machine.
  config = dataclasses.replace(
      DataConfig(), dataset=args.dataset, data_dir=args.data_dir, train_split=args.split,
      image_size=args.image_size, color_jitter_strength=args.color_jitter_strength,
      use_blur=args.use_blur, color_jitter_impl=args.color_jitter_impl)
  try:
    pairs = pairs_from_config(config, split=args.split, num_images=args.num_images,
                              seed=args.seed)
  except (ValueError, FileNotFoundError) as error:
    raise SystemExit(f'error: {error}') from None
  print(save_grid(pairs, args.out, scale=args.scale, columns=args.columns))


if __name__ == '__main__':
  main()
