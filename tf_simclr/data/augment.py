"""SimCLR augmentations: flag-free functions on float32 [H, W, 3] images in [0, 1].

Each random function takes an optional `seed`: a stateless seed, an int32/int64
tensor of shape [2]. With a seed, the output is a pure function of (image, seed),
identical eagerly and inside `tf.data.Dataset.map`; without one, a seed is drawn
from the global generator. Every random decision is made per image (one crop, one
flip, one colour order, one blur sigma per call).

Small-image rules of the official recipe, kept here so all callers agree:
- `preprocess_for_train` blurs only when `use_blur` and `height > SMALL_IMAGE_SIZE`
  (the official CIFAR-10 recipe turns blur off for 32 px images).
- `eval_center_crop(image_size)` is False for `image_size <= SMALL_IMAGE_SIZE`: eval
  images that small are only resized, as in the official code.

Differences from google-research/simclr (documented in docs/differences.md):
- Blur sigma is drawn per image (the official code draws one sigma per batch), and
  the blur pads by reflection instead of with zeros (no dark border).
- The random crop samples areas in [0.08, 1]: the official code also passes
  `min_object_covered=0.1`, which silently raises the smallest area to 0.1.
- When no crop fits after `max_attempts` (very elongated images), it falls back to a
  center crop with the aspect ratio clamped into range, as torchvision does; the
  official code then uses the whole, distorted image.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import tensorflow as tf

CROP_PROPORTION = 0.875  # Center-crop fraction for eval, standard for ImageNet.
SMALL_IMAGE_SIZE = 32    # At or below this size: no blur in training, no eval crop.

Seed = Optional[tf.Tensor]


def _make_seed(seed: Seed) -> tf.Tensor:
  """Returns a [2] int64 stateless seed; draws one when `seed` is None."""
  if seed is None:
    return tf.random.uniform([2], maxval=tf.int64.max, dtype=tf.int64)
  return tf.cast(seed, tf.int64)


def _split_seed(seed: Seed, num: int) -> list[tf.Tensor]:
  """Splits a seed into `num` independent [2] seeds."""
  return tf.unstack(tf.random.experimental.stateless_split(_make_seed(seed), num))


def _to_float(image: tf.Tensor) -> tf.Tensor:
  """uint8 -> float32 in [0, 1]; float images are cast to float32."""
  if image.dtype == tf.uint8:
    return tf.image.convert_image_dtype(image, tf.float32)
  return tf.cast(image, tf.float32)


def random_apply(func: Callable[[tf.Tensor], tf.Tensor], p: float, image: tf.Tensor,
                 *, seed: Seed = None) -> tf.Tensor:
  """Applies `func` to `image` with probability `p`."""
  draw = tf.random.stateless_uniform([], _make_seed(seed))
  return tf.cond(draw < p, lambda: func(image), lambda: image)


def sample_crop_box(image_shape: tf.Tensor,
                    *,
                    area_range: Sequence[float] = (0.08, 1.0),
                    aspect_ratio_range: Sequence[float] = (3. / 4., 4. / 3.),
                    max_attempts: int = 100,
                    seed: Seed = None) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
  """Samples a SimCLR/Inception crop box with `tf.image.sample_distorted_bounding_box`.

  Args:
    image_shape: [3] int tensor, (height, width, channels) of the image.
    area_range: (min, max) fraction of the image area the crop covers.
    aspect_ratio_range: (min, max) crop width / height.
    max_attempts: Tries before falling back to a center crop with the aspect
      ratio clamped into `aspect_ratio_range`.
    seed: Optional [2] stateless seed.

  Returns:
    (offset_y, offset_x, crop_height, crop_width), int32 scalars.
  """
  image_shape = tf.cast(image_shape, tf.int32)
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      image_shape,
      bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, shape=[1, 1, 4]),
      seed=_make_seed(seed),
      min_object_covered=0.0,
      aspect_ratio_range=tuple(aspect_ratio_range),
      area_range=tuple(area_range),
      max_attempts=max_attempts,
      use_image_if_no_bounding_boxes=True)
  image_height, image_width = image_shape[0], image_shape[1]
  height_float = tf.cast(image_height, tf.float32)
  width_float = tf.cast(image_width, tf.float32)
  image_ratio = width_float / height_float
  min_ratio, max_ratio = aspect_ratio_range
  # The sampler returns the whole image after `max_attempts` failures; the whole
  # image is a legal sample only when its own aspect ratio is in range.
  whole_image = tf.logical_and(tf.equal(size[0], image_height), tf.equal(size[1], image_width))
  out_of_range = tf.logical_or(image_ratio < min_ratio, image_ratio > max_ratio)
  fallback_height = tf.where(
      image_ratio < min_ratio,
      tf.cast(tf.round(width_float / min_ratio), tf.int32), image_height)
  fallback_width = tf.where(
      image_ratio > max_ratio,
      tf.cast(tf.round(height_float * max_ratio), tf.int32), image_width)
  fallback_height = tf.clip_by_value(fallback_height, 1, image_height)
  fallback_width = tf.clip_by_value(fallback_width, 1, image_width)
  use_fallback = tf.logical_and(whole_image, out_of_range)
  crop_height = tf.where(use_fallback, fallback_height, size[0])
  crop_width = tf.where(use_fallback, fallback_width, size[1])
  offset_y = tf.where(use_fallback, (image_height - crop_height) // 2, begin[0])
  offset_x = tf.where(use_fallback, (image_width - crop_width) // 2, begin[1])
  return offset_y, offset_x, crop_height, crop_width


def _resize(image: tf.Tensor, height: int, width: int) -> tf.Tensor:
  """Bicubic resize of one image to [height, width, C], clipped to [0, 1]."""
  resized = tf.image.resize(image[tf.newaxis], [height, width],
                            method=tf.image.ResizeMethod.BICUBIC)[0]
  return tf.clip_by_value(resized, 0.0, 1.0)


def random_resized_crop(image: tf.Tensor,
                        height: int,
                        width: int,
                        *,
                        area_range: Sequence[float] = (0.08, 1.0),
                        aspect_ratio_range: Sequence[float] = (3. / 4., 4. / 3.),
                        max_attempts: int = 100,
                        seed: Seed = None) -> tf.Tensor:
  """Random crop (area, aspect) then bicubic resize to [height, width, 3].

  As the official code, the aspect-ratio range is relative to the output's
  width / height.
  """
  image = _to_float(image)
  target_ratio = width / height
  offset_y, offset_x, crop_height, crop_width = sample_crop_box(
      tf.shape(image),
      area_range=area_range,
      aspect_ratio_range=(aspect_ratio_range[0] * target_ratio,
                          aspect_ratio_range[1] * target_ratio),
      max_attempts=max_attempts,
      seed=seed)
  crop = tf.image.crop_to_bounding_box(image, offset_y, offset_x, crop_height, crop_width)
  return _resize(crop, height, width)


def random_flip(image: tf.Tensor, *, seed: Seed = None) -> tf.Tensor:
  """Horizontal flip with probability 0.5."""
  return tf.image.stateless_random_flip_left_right(_to_float(image), _make_seed(seed))


def random_brightness(image: tf.Tensor, max_delta: float, *, impl: str = 'simclrv2',
                      seed: Seed = None) -> tf.Tensor:
  """SimCLRv2: image * U(max(1 - max_delta, 0), 1 + max_delta); v1: image + U(-max_delta, max_delta).

  Not clipped (`color_jitter` clips after each step).
  """
  seed = _make_seed(seed)
  if impl == 'simclrv2':
    factor = tf.random.stateless_uniform([], seed, max(1.0 - max_delta, 0.0), 1.0 + max_delta)
    return image * factor
  if impl == 'simclrv1':
    return image + tf.random.stateless_uniform([], seed, -max_delta, max_delta)
  raise ValueError(f'color jitter impl={impl!r} is unknown; use simclrv1 or simclrv2.')


def _random_factor(seed: tf.Tensor, strength: float) -> tf.Tensor:
  """U(max(1 - strength, 0), 1 + strength)."""
  return tf.random.stateless_uniform([], seed, max(1.0 - strength, 0.0), 1.0 + strength)


def _jitter_all(image: tf.Tensor, strength: float, *, random_order: bool, impl: str,
                seed: Seed) -> tf.Tensor:
  """Brightness, contrast, saturation, hue (in random order), clipped after each."""
  brightness = contrast = saturation = 0.8 * strength
  hue = min(0.2 * strength, 0.5)
  order_seed, brightness_seed, contrast_seed, saturation_seed, hue_seed = _split_seed(seed, 5)
  transforms = [
      lambda x: random_brightness(x, brightness, impl=impl, seed=brightness_seed),
      lambda x: tf.image.adjust_contrast(x, _random_factor(contrast_seed, contrast)),
      lambda x: tf.image.adjust_saturation(x, _random_factor(saturation_seed, saturation)),
      lambda x: tf.image.adjust_hue(
          x, tf.random.stateless_uniform([], hue_seed, -hue, hue)),
  ]
  if random_order:
    order = tf.argsort(tf.random.stateless_uniform([4], order_seed))
    for position in range(4):
      if tf.executing_eagerly():  # The index is known: skip switch_case's tracing.
        image = transforms[int(order[position])](image)
      else:
        # Bind `image` now: each branch transforms the current image.
        branches = [lambda f=f, x=image: f(x) for f in transforms]
        image = tf.switch_case(order[position], branches)
      image = tf.clip_by_value(image, 0.0, 1.0)
  else:
    for transform in transforms:
      image = tf.clip_by_value(transform(image), 0.0, 1.0)
  return image


def color_jitter(image: tf.Tensor,
                 strength: float,
                 *,
                 p: float = 0.8,
                 random_order: bool = True,
                 impl: str = 'simclrv2',
                 seed: Seed = None) -> tf.Tensor:
  """With probability `p`, SimCLR colour jitter of strength `strength`.

  Brightness, contrast and saturation factors are U(1 - 0.8s, 1 + 0.8s) (lower end
  at least 0), hue shift U(-0.2s, 0.2s); the four are applied in random order and
  the image is clipped to [0, 1] after each. `impl='simclrv1'` makes brightness
  additive, as SimCLR v1.
  """
  if impl not in ('simclrv1', 'simclrv2'):
    raise ValueError(f'color jitter impl={impl!r} is unknown; use simclrv1 or simclrv2.')
  image = _to_float(image)
  if strength == 0:
    return image
  apply_seed, jitter_seed = _split_seed(seed, 2)
  return random_apply(
      lambda x: _jitter_all(x, strength, random_order=random_order, impl=impl, seed=jitter_seed),
      p, image, seed=apply_seed)


def to_grayscale(image: tf.Tensor) -> tf.Tensor:
  """Luma grayscale, kept as 3 channels."""
  return tf.tile(tf.image.rgb_to_grayscale(image), [1, 1, 3])


def random_grayscale(image: tf.Tensor, p: float = 0.2, *, seed: Seed = None) -> tf.Tensor:
  """Converts to grayscale (3 channels) with probability `p`."""
  return random_apply(to_grayscale, p, _to_float(image), seed=seed)


def blur_kernel_size(height: int | tf.Tensor) -> int | tf.Tensor:
  """Blur kernel size of the official code: 10% of the height, made odd (2 * (h // 20) + 1)."""
  return 2 * ((height // 10) // 2) + 1


def _blur_matrix(size: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
  """[size, size] matrix M with (M @ x) = 1-D convolution of x with `kernel`, reflect-padded."""
  kernel_size = tf.shape(kernel)[0]
  radius = kernel_size // 2
  source = tf.range(size)[:, tf.newaxis] + tf.range(kernel_size)[tf.newaxis, :] - radius
  source = tf.abs(source)                                            # Reflect at 0,
  source = tf.where(source > size - 1, 2 * (size - 1) - source, source)  # and at size - 1.
  rows = tf.broadcast_to(tf.range(size)[:, tf.newaxis], [size, kernel_size])
  indices = tf.stack([rows, source], axis=-1)  # [size, k, 2]
  # Taps that reflect onto the same pixel are summed.
  return tf.scatter_nd(indices, tf.broadcast_to(kernel, [size, kernel_size]), [size, size])


def gaussian_blur(image: tf.Tensor, sigma: float | tf.Tensor,
                  kernel_size: int | tf.Tensor) -> tf.Tensor:
  """Separable Gaussian blur of one image: a vertical and a horizontal 1-D pass, reflect padding.

  Each pass is a matrix product with a banded [n, n] matrix (the 1-D kernel with the
  reflection folded in): on CPU about 5x faster than two depthwise convolutions with a
  23-tap kernel at 224 px, with the same result.

  Args:
    image: [H, W, C] float image.
    sigma: Standard deviation in pixels (> 0).
    kernel_size: Taps of the 1-D kernel; an even size is rounded up to odd. The radius
      must be smaller than H and W.

  Returns:
    [H, W, C] blurred image.
  """
  radius = tf.cast(kernel_size, tf.int32) // 2
  positions = tf.cast(tf.range(-radius, radius + 1), tf.float32)
  sigma = tf.cast(sigma, tf.float32)
  kernel = tf.exp(-tf.square(positions) / (2.0 * tf.square(sigma)))
  kernel /= tf.reduce_sum(kernel)
  shape = tf.shape(image)
  height, width, channels = shape[0], shape[1], shape[2]
  image = tf.cast(image, tf.float32)
  vertical = tf.matmul(_blur_matrix(height, kernel), tf.reshape(image, [height, -1]))  # [H, W*C]
  rows = tf.reshape(tf.transpose(tf.reshape(vertical, [height, width, channels]), [0, 2, 1]),
                    [height * channels, width])  # [H*C, W]
  blurred = tf.matmul(rows, _blur_matrix(width, kernel), transpose_b=True)  # [H*C, W]
  return tf.transpose(tf.reshape(blurred, [height, channels, width]), [0, 2, 1])


def random_blur(image: tf.Tensor,
                p: float = 0.5,
                *,
                sigma_range: Sequence[float] = (0.1, 2.0),
                kernel_size: Optional[int] = None,
                seed: Seed = None) -> tf.Tensor:
  """With probability `p`, Gaussian blur with sigma ~ U(sigma_range) drawn for this image.

  The kernel defaults to `blur_kernel_size(height)` (about 10% of the height, as the
  official code).
  """
  image = _to_float(image)
  apply_seed, sigma_seed = _split_seed(seed, 2)
  if kernel_size is None:
    kernel_size = blur_kernel_size(tf.shape(image)[0])

  def blur(x: tf.Tensor) -> tf.Tensor:
    sigma = tf.random.stateless_uniform([], sigma_seed, sigma_range[0], sigma_range[1])
    return tf.clip_by_value(gaussian_blur(x, sigma, kernel_size), 0.0, 1.0)

  return random_apply(blur, p, image, seed=apply_seed)


def resize_if_needed(image: tf.Tensor, height: int, width: int) -> tf.Tensor:
  """Bicubic resize to [height, width] unless the image already has that size."""
  shape = tf.shape(image)
  same = tf.logical_and(tf.equal(shape[0], height), tf.equal(shape[1], width))
  return tf.cond(same, lambda: image, lambda: _resize(image, height, width))


def preprocess_for_train(image: tf.Tensor,
                         height: int,
                         width: int,
                         *,
                         color_jitter_strength: float,
                         use_blur: bool,
                         crop: bool = True,
                         flip: bool = True,
                         color_distort: bool = True,
                         impl: str = 'simclrv2',
                         seed: Seed = None) -> tf.Tensor:
  """One SimCLR training view: crop+resize, flip, colour jitter (p 0.8), grayscale (p 0.2), blur (p 0.5).

  Blur runs only when `use_blur` and `height > SMALL_IMAGE_SIZE` (off for CIFAR-size
  images, as the official recipe). Fine-tuning uses crop and flip only
  (`color_distort=False, use_blur=False`).

  Args:
    image: [H, W, 3] uint8, or float in [0, 1], any H and W.
    height: Output height.
    width: Output width.
    color_jitter_strength: s of the colour jitter.
    use_blur: Whether to blur (see above).
    crop: Random resized crop; if False the image is only resized.
    flip: Random horizontal flip.
    color_distort: Colour jitter and random grayscale.
    impl: 'simclrv2' (multiplicative brightness) or 'simclrv1' (additive).
    seed: Optional [2] stateless seed.

  Returns:
    float32 [height, width, 3] in [0, 1].
  """
  image = _to_float(image)
  crop_seed, flip_seed, jitter_seed, gray_seed, blur_seed = _split_seed(seed, 5)
  if crop:
    image = random_resized_crop(image, height, width, seed=crop_seed)
  else:
    image = resize_if_needed(image, height, width)
  if flip:
    image = random_flip(image, seed=flip_seed)
  if color_distort:
    image = color_jitter(image, color_jitter_strength, impl=impl, seed=jitter_seed)
    image = random_grayscale(image, seed=gray_seed)
  if use_blur and height > SMALL_IMAGE_SIZE:
    image = random_blur(image, seed=blur_seed)
  image = tf.reshape(image, [height, width, 3])
  return tf.clip_by_value(image, 0.0, 1.0)


def eval_center_crop(image_size: int) -> bool:
  """Whether eval preprocessing center-crops: not for images <= SMALL_IMAGE_SIZE."""
  return image_size > SMALL_IMAGE_SIZE


def center_crop(image: tf.Tensor, height: int, width: int,
                crop_proportion: float = CROP_PROPORTION) -> tf.Tensor:
  """Central crop keeping `crop_proportion` of the less-cropped side, at the output's aspect ratio, then bicubic resize."""
  shape = tf.shape(image)
  image_height = tf.cast(shape[0], tf.float32)
  image_width = tf.cast(shape[1], tf.float32)
  aspect_ratio = width / height
  wider_than_image = aspect_ratio > image_width / image_height
  crop_height = tf.where(wider_than_image,
                         crop_proportion / aspect_ratio * image_width,
                         crop_proportion * image_height)
  crop_width = tf.where(wider_than_image,
                        crop_proportion * image_width,
                        crop_proportion * aspect_ratio * image_height)
  crop_height = tf.maximum(tf.cast(tf.math.rint(crop_height), tf.int32), 1)
  crop_width = tf.maximum(tf.cast(tf.math.rint(crop_width), tf.int32), 1)
  offset_y = (shape[0] - crop_height + 1) // 2
  offset_x = (shape[1] - crop_width + 1) // 2
  image = tf.image.crop_to_bounding_box(image, offset_y, offset_x, crop_height, crop_width)
  return _resize(image, height, width)


def preprocess_for_eval(image: tf.Tensor, height: int, width: int, crop: bool = True) -> tf.Tensor:
  """Eval view: center crop (0.875) + bicubic resize, or, with crop=False, resize only when needed.

  Callers pass `crop=eval_center_crop(image_size)` to follow the official small-image rule.

  Returns:
    float32 [height, width, 3] in [0, 1].
  """
  image = _to_float(image)
  if crop:
    image = center_crop(image, height, width)
  else:
    image = resize_if_needed(image, height, width)
  image = tf.reshape(image, [height, width, 3])
  return tf.clip_by_value(image, 0.0, 1.0)
