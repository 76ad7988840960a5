"""SimCLR augmentations: flag-free functions on float32 [H, W, 3] images in [0, 1].

Each random function takes an optional `seed`: a stateless seed, an int32/int64
tensor of shape [2]. With a seed, the output is a pure function of (image, seed),
identical eagerly and inside `tf.data.Dataset.map`; without one, a seed is drawn
from the global generator.

Defaults follow google-research/simclr tf2 `data_util.py` (tests/official/ compares
them with that code): the crop box is sampled with `min_object_covered=0.1`, the
bicubic resize of the crop is not clipped, colour jitter clips after each of its
steps, the view is clipped once at the end, and blur runs at every image size
(a 3-tap kernel at 32 px). `eval_center_crop(image_size)` is False for
`image_size <= SMALL_IMAGE_SIZE`: eval images that small are only resized, as there.

Options that differ from the official code (chosen by the caller; docs/differences.md):
- `random_blur` draws sigma per image and pads by reflection; `batch_random_blur` is
  the official one: one sigma per batch, zero padding.
- `crop_fallback='center_crop'`: when no crop fits after `max_attempts` (very
  elongated images), a center crop with the aspect ratio clamped into range, as
  torchvision; the default 'whole_image' is the official whole, distorted image.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import tensorflow as tf

CROP_PROPORTION = 0.875  # Center-crop fraction for eval, standard for ImageNet.
SMALL_IMAGE_SIZE = 32    # At or below this size: no eval center crop.
CROP_FALLBACKS = ('whole_image', 'center_crop')
BLUR_PADDINGS = ('reflect', 'zero')

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
                    min_object_covered: float = 0.1,
                    max_attempts: int = 100,
                    crop_fallback: str = 'whole_image',
                    seed: Seed = None) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
  """Samples a SimCLR/Inception crop box with `tf.image.sample_distorted_bounding_box`.

  The defaults are the official ones: the crop must also cover `min_object_covered`
  of the whole image, so with 0.1 the areas actually sampled are in [0.1, 1].

  Args:
    image_shape: [3] int tensor, (height, width, channels) of the image.
    area_range: (min, max) fraction of the image area the crop covers.
    aspect_ratio_range: (min, max) crop width / height.
    min_object_covered: Smallest fraction of the whole image the crop must cover.
    max_attempts: Tries before the fallback.
    crop_fallback: After `max_attempts` failures: 'whole_image' (official) keeps the
      sampler's whole image, whatever its aspect ratio; 'center_crop' takes a center
      crop with the aspect ratio clamped into `aspect_ratio_range` (torchvision).
    seed: Optional [2] stateless seed.

  Returns:
    (offset_y, offset_x, crop_height, crop_width), int32 scalars.
  """
  if crop_fallback not in CROP_FALLBACKS:
    raise ValueError(f'crop_fallback={crop_fallback!r} is unknown; use one of {CROP_FALLBACKS}.')
  image_shape = tf.cast(image_shape, tf.int32)
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      image_shape,
      bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, shape=[1, 1, 4]),
      seed=_make_seed(seed),
      min_object_covered=min_object_covered,
      aspect_ratio_range=tuple(aspect_ratio_range),
      area_range=tuple(area_range),
      max_attempts=max_attempts,
      use_image_if_no_bounding_boxes=True)
  if crop_fallback == 'whole_image':
    return begin[0], begin[1], size[0], size[1]
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


def _resize(image: tf.Tensor, height: int, width: int, clip: bool = True) -> tf.Tensor:
  """Bicubic resize of one image to [height, width, C], clipped to [0, 1] if `clip`."""
  resized = tf.image.resize(image[tf.newaxis], [height, width],
                            method=tf.image.ResizeMethod.BICUBIC)[0]
  return tf.clip_by_value(resized, 0.0, 1.0) if clip else resized


def crop_and_resize(image: tf.Tensor, box: Sequence[tf.Tensor], height: int,
                    width: int) -> tf.Tensor:
  """Crops `box` = (offset_y, offset_x, crop_height, crop_width) and bicubic-resizes it.

  Not clipped: bicubic overshoot beyond [0, 1] stays, as in the official code (the
  training view is clipped later).
  """
  crop = tf.image.crop_to_bounding_box(_to_float(image), *box)
  return _resize(crop, height, width, clip=False)


def random_resized_crop(image: tf.Tensor,
                        height: int,
                        width: int,
                        *,
                        area_range: Sequence[float] = (0.08, 1.0),
                        aspect_ratio_range: Sequence[float] = (3. / 4., 4. / 3.),
                        min_object_covered: float = 0.1,
                        max_attempts: int = 100,
                        crop_fallback: str = 'whole_image',
                        seed: Seed = None) -> tf.Tensor:
  """Random crop (area, aspect; see `sample_crop_box`) then bicubic resize to [height, width, 3].

  As the official code, the aspect-ratio range is relative to the output's
  width / height, and the result is not clipped (bicubic may overshoot [0, 1]).
  """
  image = _to_float(image)
  target_ratio = width / height
  box = sample_crop_box(
      tf.shape(image),
      area_range=area_range,
      aspect_ratio_range=(aspect_ratio_range[0] * target_ratio,
                          aspect_ratio_range[1] * target_ratio),
      min_object_covered=min_object_covered,
      max_attempts=max_attempts,
      crop_fallback=crop_fallback,
      seed=seed)
  return crop_and_resize(image, box, height, width)


def _flip_if(image: tf.Tensor, flip: tf.Tensor) -> tf.Tensor:
  """Horizontal flip when the scalar bool `flip` is True."""
  return tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image)


def random_flip(image: tf.Tensor, *, seed: Seed = None) -> tf.Tensor:
  """Horizontal flip with probability 0.5."""
  return _flip_if(_to_float(image), tf.random.stateless_uniform([], _make_seed(seed)) < 0.5)


def color_jitter_ranges(strength: float, impl: str = 'simclrv2') -> tuple[tuple[float, float], ...]:
  """(low, high) of the four jitter draws of strength s: brightness, contrast, saturation, hue.

  Brightness: factor U(max(1 - 0.8s, 0), 1 + 0.8s) ('simclrv2') or additive delta
  U(-0.8s, 0.8s) ('simclrv1'); contrast and saturation factors U(max(1 - 0.8s, 0),
  1 + 0.8s); hue shift U(-h, h), h = min(0.2s, 0.5). For s <= 1.25 these are the
  official ranges (the official code raises an error above that).
  """
  if impl not in ('simclrv1', 'simclrv2'):
    raise ValueError(f'color jitter impl={impl!r} is unknown; use simclrv1 or simclrv2.')
  spread = 0.8 * strength
  factor_range = (max(1.0 - spread, 0.0), 1.0 + spread)
  brightness_range = factor_range if impl == 'simclrv2' else (-spread, spread)
  hue = min(0.2 * strength, 0.5)
  return (brightness_range, factor_range, factor_range, (-hue, hue))


def adjust_color(image: tf.Tensor, factors: tf.Tensor, order: Sequence[int] | tf.Tensor,
                 *, impl: str = 'simclrv2') -> tf.Tensor:
  """Brightness, contrast, saturation and hue with given values, in `order`, clipped after each.

  Deterministic core of `color_jitter` (official `color_jitter_rand` /
  `color_jitter_nonrand` given their draws).

  Args:
    image: [..., H, W, 3] float image.
    factors: [4] float: brightness factor (or additive delta for 'simclrv1'),
      contrast factor, saturation factor, hue shift in turns.
    order: [4] permutation; position i applies transform order[i] (0 brightness,
      1 contrast, 2 saturation, 3 hue). [0, 1, 2, 3] is the official fixed order.
    impl: 'simclrv2' (multiplicative brightness) or 'simclrv1' (additive).

  Returns:
    The adjusted image, in [0, 1].
  """
  factors = tf.cast(factors, tf.float32)
  if impl == 'simclrv2':
    brightness = lambda x: x * factors[0]
  elif impl == 'simclrv1':
    brightness = lambda x: x + factors[0]
  else:
    raise ValueError(f'color jitter impl={impl!r} is unknown; use simclrv1 or simclrv2.')
  transforms = [
      brightness,
      lambda x: tf.image.adjust_contrast(x, factors[1]),
      lambda x: tf.image.adjust_saturation(x, factors[2]),
      lambda x: tf.image.adjust_hue(x, factors[3]),
  ]
  static_order = None
  if isinstance(order, (list, tuple)):
    static_order = [int(index) for index in order]
  elif tf.executing_eagerly():  # The indices are known: skip switch_case's tracing.
    static_order = [int(index) for index in order]
  for position in range(4):
    if static_order is not None:
      image = transforms[static_order[position]](image)
    else:
      # Bind `image` now: each branch transforms the current image.
      branches = [lambda f=f, x=image: f(x) for f in transforms]
      image = tf.switch_case(tf.cast(order[position], tf.int32), branches)
    image = tf.clip_by_value(image, 0.0, 1.0)
  return image


def _uniform_to_range(uniform: tf.Tensor, low: float, high: float) -> tf.Tensor:
  """low + u * (high - low) in float32, as tf.random.uniform maps its raw draw u."""
  low = tf.constant(low, tf.float32)
  high = tf.constant(high, tf.float32)
  return tf.cast(uniform, tf.float32) * (high - low) + low


def jitter_factors(uniforms: tf.Tensor, strength: float, impl: str = 'simclrv2') -> tf.Tensor:
  """[4] uniforms in [0, 1) -> [4] jitter values in `color_jitter_ranges(strength, impl)`."""
  ranges = color_jitter_ranges(strength, impl)
  return tf.stack([_uniform_to_range(uniforms[index], low, high)
                   for index, (low, high) in enumerate(ranges)])


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


def _random_order(seed: tf.Tensor) -> tf.Tensor:
  """A uniformly random permutation of range(4)."""
  return tf.cast(tf.argsort(tf.random.stateless_uniform([4], seed)), tf.int32)


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
  the image is clipped to [0, 1] after each (`adjust_color`). `impl='simclrv1'` makes
  brightness additive, as SimCLR v1.
  """
  color_jitter_ranges(strength, impl)  # Checks impl.
  image = _to_float(image)
  if strength == 0:
    return image
  apply_seed, factor_seed, order_seed = _split_seed(seed, 3)

  def jitter(x: tf.Tensor) -> tf.Tensor:
    factors = jitter_factors(tf.random.stateless_uniform([4], factor_seed), strength, impl)
    order = _random_order(order_seed) if random_order else [0, 1, 2, 3]
    return adjust_color(x, factors, order, impl=impl)

  return random_apply(jitter, p, image, seed=apply_seed)


def to_grayscale(image: tf.Tensor) -> tf.Tensor:
  """Luma grayscale, kept as 3 channels."""
  return tf.tile(tf.image.rgb_to_grayscale(image), [1, 1, 3])


def random_grayscale(image: tf.Tensor, p: float = 0.2, *, seed: Seed = None) -> tf.Tensor:
  """Converts to grayscale (3 channels) with probability `p`."""
  return random_apply(to_grayscale, p, _to_float(image), seed=seed)


def blur_kernel_size(height: int | tf.Tensor) -> int | tf.Tensor:
  """Blur kernel size of the official code: 10% of the height, made odd (2 * (h // 20) + 1)."""
  return 2 * ((height // 10) // 2) + 1


def _blur_matrix(size: tf.Tensor, kernel: tf.Tensor, padding: str) -> tf.Tensor:
  """[size, size] matrix M with (M @ x) = 1-D convolution of x with `kernel`, padded."""
  kernel_size = tf.shape(kernel)[0]
  radius = kernel_size // 2
  source = tf.range(size)[:, tf.newaxis] + tf.range(kernel_size)[tf.newaxis, :] - radius
  weights = tf.broadcast_to(kernel, [size, kernel_size])
  if padding == 'reflect':
    source = tf.abs(source)                                                # Reflect at 0,
    source = tf.where(source > size - 1, 2 * (size - 1) - source, source)  # and at size - 1.
  elif padding == 'zero':
    inside = tf.logical_and(source >= 0, source <= size - 1)
    weights = tf.where(inside, weights, tf.zeros_like(weights))  # Taps off the edge read 0.
    source = tf.clip_by_value(source, 0, size - 1)
  else:
    raise ValueError(f'blur padding={padding!r} is unknown; use one of {BLUR_PADDINGS}.')
  rows = tf.broadcast_to(tf.range(size)[:, tf.newaxis], [size, kernel_size])
  indices = tf.stack([rows, source], axis=-1)  # [size, k, 2]
  # Taps that land on the same pixel are summed.
  return tf.scatter_nd(indices, weights, [size, size])


def gaussian_blur(image: tf.Tensor, sigma: float | tf.Tensor,
                  kernel_size: int | tf.Tensor, padding: str = 'reflect') -> tf.Tensor:
  """Separable Gaussian blur of one image or a batch: a vertical and a horizontal 1-D pass.

  Each pass is a matrix product with a banded [n, n] matrix (the 1-D kernel with the
  padding folded in): on CPU about 5x faster than two depthwise convolutions with a
  23-tap kernel at 224 px, with the same result.

  Args:
    image: [H, W, C] or [N, H, W, C] float image(s).
    sigma: Standard deviation in pixels (> 0), one for all images.
    kernel_size: Taps of the 1-D kernel; an even size is rounded up to odd. The radius
      must be smaller than H and W.
    padding: 'reflect' (ours: no dark border) or 'zero' (the official 'SAME'
      convolution: pixels beyond the edge read 0).

  Returns:
    The blurred image(s), same shape.
  """
  image = tf.cast(tf.convert_to_tensor(image), tf.float32)
  batched = image.shape.rank == 4
  if not batched:
    image = image[tf.newaxis]
  radius = tf.cast(kernel_size, tf.int32) // 2
  positions = tf.cast(tf.range(-radius, radius + 1), tf.float32)
  sigma = tf.cast(sigma, tf.float32)
  kernel = tf.exp(-tf.square(positions) / (2.0 * tf.square(sigma)))
  kernel /= tf.reduce_sum(kernel)
  shape = tf.shape(image)
  count, height, width, channels = shape[0], shape[1], shape[2], shape[3]
  columns = tf.reshape(tf.transpose(image, [1, 0, 2, 3]), [height, -1])  # [H, N*W*C]
  vertical = tf.matmul(_blur_matrix(height, kernel, padding), columns)
  vertical = tf.transpose(tf.reshape(vertical, [height, count, width, channels]), [1, 0, 3, 2])
  rows = tf.reshape(vertical, [-1, width])  # [N*H*C, W]
  blurred = tf.matmul(rows, _blur_matrix(width, kernel, padding), transpose_b=True)
  blurred = tf.transpose(tf.reshape(blurred, [count, height, channels, width]), [0, 1, 3, 2])
  return blurred if batched else blurred[0]


def blur_sigma(uniform: tf.Tensor, sigma_range: Sequence[float] = (0.1, 2.0)) -> tf.Tensor:
  """Blur sigma from a U[0, 1) draw: uniform in `sigma_range`, as the official code."""
  return _uniform_to_range(uniform, sigma_range[0], sigma_range[1])


def random_blur(image: tf.Tensor,
                p: float = 0.5,
                *,
                sigma_range: Sequence[float] = (0.1, 2.0),
                kernel_size: Optional[int] = None,
                padding: str = 'reflect',
                seed: Seed = None) -> tf.Tensor:
  """With probability `p`, Gaussian blur with sigma ~ U(sigma_range) drawn for this image.

  The kernel defaults to `blur_kernel_size(height)` (about 10% of the height, as the
  official code), the padding to reflection. Clipped to [0, 1].
  """
  image = _to_float(image)
  apply_seed, sigma_seed = _split_seed(seed, 2)
  if kernel_size is None:
    kernel_size = blur_kernel_size(tf.shape(image)[0])

  def blur(x: tf.Tensor) -> tf.Tensor:
    sigma = blur_sigma(tf.random.stateless_uniform([], sigma_seed), sigma_range)
    return tf.clip_by_value(gaussian_blur(x, sigma, kernel_size, padding), 0.0, 1.0)

  return random_apply(blur, p, image, seed=apply_seed)


def blur_batch_with_draws(images: tf.Tensor, sigma: tf.Tensor, selected: tf.Tensor,
                          *, kernel_size: Optional[int] = None,
                          padding: str = 'zero') -> tf.Tensor:
  """Blurs the images of a batch where `selected` with one `sigma`, then clips to [0, 1].

  Deterministic core of `batch_random_blur` (official `batch_random_blur` given its
  draws). images: [N, H, W, C]; selected: [N] bool.
  """
  images = tf.cast(images, tf.float32)
  if kernel_size is None:
    kernel_size = blur_kernel_size(tf.shape(images)[1])
  blurred = gaussian_blur(images, sigma, kernel_size, padding)
  selector = tf.cast(selected, tf.float32)[:, tf.newaxis, tf.newaxis, tf.newaxis]
  return tf.clip_by_value(blurred * selector + images * (1.0 - selector), 0.0, 1.0)


def batch_random_blur(images: tf.Tensor,
                      p: float = 0.5,
                      *,
                      sigma_range: Sequence[float] = (0.1, 2.0),
                      kernel_size: Optional[int] = None,
                      padding: str = 'zero',
                      seed: Seed = None) -> tf.Tensor:
  """The official blur of one view of a batch: one sigma ~ U(sigma_range) for all images.

  Each image [N, H, W, C] is blurred with probability `p`; the result is clipped to
  [0, 1]. Defaults as google-research/simclr tf2 `batch_random_blur` (zero padding,
  kernel `blur_kernel_size(H)`).
  """
  sigma_seed, select_seed = _split_seed(seed, 2)
  sigma = blur_sigma(tf.random.stateless_uniform([], sigma_seed), sigma_range)
  selected = tf.random.stateless_uniform(tf.shape(images)[:1], select_seed) < p
  return blur_batch_with_draws(images, sigma, selected, kernel_size=kernel_size,
                               padding=padding)


def resize_if_needed(image: tf.Tensor, height: int, width: int) -> tf.Tensor:
  """Bicubic resize to [height, width] unless the image already has that size."""
  shape = tf.shape(image)
  same = tf.logical_and(tf.equal(shape[0], height), tf.equal(shape[1], width))
  return tf.cond(same, lambda: image, lambda: _resize(image, height, width))


TrainDraws = dict[str, tf.Tensor]


def sample_train_draws(image_shape: tf.Tensor, height: int, width: int, *,
                       crop_fallback: str = 'whole_image', seed: Seed = None) -> TrainDraws:
  """All random draws of one training view (see `train_view_from_draws`).

  Returns:
    {'box': [4] int32 (offset_y, offset_x, crop_height, crop_width) from
     `sample_crop_box` with the official arguments; 'flip_u', 'jitter_u', 'gray_u',
     'blur_u', 'sigma_u': float32 U[0, 1) scalars; 'color_u': [4] U[0, 1) for the
     jitter values; 'order': [4] int32 random permutation of the jitter steps}.
  """
  crop_seed, flip_seed, jitter_seed, gray_seed, blur_seed = _split_seed(seed, 5)
  apply_seed, factor_seed, order_seed = _split_seed(jitter_seed, 3)
  blur_apply_seed, sigma_seed = _split_seed(blur_seed, 2)
  ratio = width / height
  box = sample_crop_box(image_shape, aspect_ratio_range=(3. / 4. * ratio, 4. / 3. * ratio),
                        crop_fallback=crop_fallback, seed=crop_seed)
  uniform = tf.random.stateless_uniform
  return {'box': tf.stack(box), 'flip_u': uniform([], flip_seed),
          'jitter_u': uniform([], apply_seed), 'color_u': uniform([4], factor_seed),
          'order': _random_order(order_seed), 'gray_u': uniform([], gray_seed),
          'blur_u': uniform([], blur_apply_seed), 'sigma_u': uniform([], sigma_seed)}


def train_view_from_draws(image: tf.Tensor,
                          draws: TrainDraws,
                          height: int,
                          width: int,
                          *,
                          color_jitter_strength: float,
                          use_blur: bool,
                          crop: bool = True,
                          flip: bool = True,
                          color_distort: bool = True,
                          impl: str = 'simclrv2',
                          blur_padding: str = 'reflect') -> tf.Tensor:
  """One training view from given draws: the deterministic core of `preprocess_for_train`.

  In the official order and with its clipping: crop box + bicubic resize (not
  clipped), flip if flip_u < 0.5; if colour distortion is on (and the strength > 0):
  with jitter_u < 0.8 `adjust_color` (clips after each step), then grayscale if
  gray_u < 0.2; clip to [0, 1]; then, if `use_blur`, blur with sigma U(0.1, 2) from
  sigma_u if blur_u < 0.5, clipped again.
  """
  image = _to_float(image)
  if crop:
    box = tf.unstack(tf.cast(draws['box'], tf.int32))
    image = crop_and_resize(image, box, height, width)
  else:
    image = resize_if_needed(image, height, width)
  if flip:
    image = _flip_if(image, draws['flip_u'] < 0.5)
  if color_distort and color_jitter_strength > 0:
    factors = jitter_factors(draws['color_u'], color_jitter_strength, impl)
    image = tf.cond(draws['jitter_u'] < 0.8,
                    lambda: adjust_color(image, factors, draws['order'], impl=impl),
                    lambda: image)
    image = tf.cond(draws['gray_u'] < 0.2, lambda: to_grayscale(image), lambda: image)
  image = tf.clip_by_value(tf.reshape(image, [height, width, 3]), 0.0, 1.0)
  if use_blur:
    sigma = blur_sigma(draws['sigma_u'], (0.1, 2.0))
    kernel_size = blur_kernel_size(height)
    image = tf.cond(
        draws['blur_u'] < 0.5,
        lambda: tf.clip_by_value(gaussian_blur(image, sigma, kernel_size, blur_padding), 0.0, 1.0),
        lambda: image)
  return image


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
                         crop_fallback: str = 'whole_image',
                         seed: Seed = None) -> tf.Tensor:
  """One SimCLR training view: crop+resize, flip, colour jitter (p 0.8), grayscale (p 0.2), blur (p 0.5).

  As the official `preprocess_image` (plus, with `use_blur`, a per-image blur: sigma
  drawn for this image, reflect padding; the official per-batch blur is
  `batch_random_blur`, applied by the caller to batches instead). Colour jitter and
  grayscale run only when `color_distort` and `color_jitter_strength > 0`.
  Fine-tuning uses crop and flip only (`color_distort=False, use_blur=False`).

  Args:
    image: [H, W, 3] uint8, or float in [0, 1], any H and W.
    height: Output height.
    width: Output width.
    color_jitter_strength: s of the colour jitter.
    use_blur: Per-image Gaussian blur (any image size; a 3-tap kernel at 32 px).
    crop: Random resized crop; if False the image is only resized.
    flip: Random horizontal flip.
    color_distort: Colour jitter and random grayscale.
    impl: 'simclrv2' (multiplicative brightness) or 'simclrv1' (additive).
    crop_fallback: See `sample_crop_box`.
    seed: Optional [2] stateless seed.

  Returns:
    float32 [height, width, 3] in [0, 1].
  """
  image = _to_float(image)
  draws = sample_train_draws(tf.shape(image), height, width, crop_fallback=crop_fallback,
                             seed=seed)
  return train_view_from_draws(image, draws, height, width,
                               color_jitter_strength=color_jitter_strength, use_blur=use_blur,
                               crop=crop, flip=flip, color_distort=color_distort, impl=impl)


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
