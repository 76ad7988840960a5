"""Statistics and exact checks of the SimCLR augmentations, eagerly and inside tf.data.map.

References are independent: NumPy float64 formulas (luma, Gaussian kernel, reflect
padding) and the distributions the paper specifies. Seeds are fixed, so every
statistical check is deterministic.
"""

import numpy as np
import pytest
import tensorflow as tf

from tf_simclr.data import augment

NUM_SAMPLES = 300


def _seeds(count: int, offset: int = 0) -> np.ndarray:
  return (np.arange(2 * count, dtype=np.int64) + 1000 + offset).reshape(count, 2)


def _run_eager(fn, images: np.ndarray, seeds: np.ndarray) -> np.ndarray:
  return np.stack([fn(tf.constant(image), seed=tf.constant(seed)).numpy()
                   for image, seed in zip(images, seeds)])


def _run_dataset(fn, images: np.ndarray, seeds: np.ndarray) -> np.ndarray:
  dataset = tf.data.Dataset.from_tensor_slices((images, seeds))
  dataset = dataset.map(lambda image, seed: fn(image, seed=seed),
                        num_parallel_calls=tf.data.AUTOTUNE)
  return next(iter(dataset.batch(len(images)))).numpy()


@pytest.fixture(params=['eager', 'tf.data.map'])
def run(request):
  """Applies fn(image, seed=...) to each image: eagerly, or in a parallel tf.data map."""
  return _run_eager if request.param == 'eager' else _run_dataset


def _color_image(height: int = 16, width: int = 16) -> np.ndarray:
  rng = np.random.RandomState(0)
  return rng.uniform(0.05, 0.95, size=(height, width, 3)).astype(np.float32)


def _tile(image: np.ndarray, count: int) -> np.ndarray:
  return np.repeat(image[np.newaxis], count, axis=0)


# ---------------------------------------------------------------------------
# Random resized crop.


def test_crop_box_area_and_aspect_distribution(run):
  shape = np.array([224, 224, 3], np.int32)

  def box(unused_image, seed):
    return tf.stack(augment.sample_crop_box(tf.constant(shape), seed=seed))

  boxes = run(box, np.zeros([NUM_SAMPLES, 1], np.float32), _seeds(NUM_SAMPLES))
  offset_y, offset_x, height, width = boxes.T.astype(np.float64)
  area = height * width / (224.0 * 224.0)
  aspect = width / height
  assert np.all(offset_y >= 0) and np.all(offset_y + height <= 224)
  assert np.all(offset_x >= 0) and np.all(offset_x + width <= 224)
  # The official min_object_covered=0.1 raises the smallest area from 0.08 to 0.1.
  assert area.min() >= 0.1 and area.max() <= 1.0
  # Integer crop sizes: aspect within the range up to one pixel of rounding.
  assert np.all(aspect >= 3 / 4 * (1 - 1 / height) - 1e-9)
  assert np.all(aspect <= 4 / 3 * (1 + 1 / height) + 1e-9)
  # The whole range is used: small and large crops.
  assert area.min() < 0.13 and area.max() > 0.9
  assert aspect.min() < 0.8 and aspect.max() > 1.25


def test_crop_fallback_whole_image_or_center_crop_with_clamped_aspect():
  # 10x200: no crop of area >= 8% has aspect <= 4/3, so every attempt fails.
  for seed in _seeds(5):
    box = [int(v) for v in augment.sample_crop_box(tf.constant([10, 200, 3]), seed=seed)]
    assert box == [0, 0, 10, 200]  # Official: the whole image (distorted by the resize).
    box = [int(v) for v in augment.sample_crop_box(tf.constant([10, 200, 3]), seed=seed,
                                                   crop_fallback='center_crop')]
    assert box == [0, (200 - 13) // 2, 10, 13]
  # A tall image clamps to aspect 3/4: height round(10 / 0.75) = 13.
  box = [int(v) for v in augment.sample_crop_box(tf.constant([200, 10, 3]), seed=[1, 2],
                                                 crop_fallback='center_crop')]
  assert box == [(200 - 13) // 2, 0, 13, 10]
  with pytest.raises(ValueError, match='crop_fallback'):
    augment.sample_crop_box(tf.constant([10, 200, 3]), crop_fallback='squash')


def test_random_resized_crop_output(run):
  image = _color_image(40, 60)
  out = run(lambda x, seed: augment.random_resized_crop(x, 24, 32, seed=seed),
            _tile(image, 20), _seeds(20))
  assert out.shape == (20, 24, 32, 3) and out.dtype == np.float32
  # Bicubic overshoot is kept, as the official crop_and_resize (the view is clipped later).
  assert out.min() < 0.0 and out.max() > 1.0 and out.min() > -0.2 and out.max() < 1.2
  assert len({out[i].tobytes() for i in range(20)}) == 20  # A different crop each time.


# ---------------------------------------------------------------------------
# Flip, grayscale, colour jitter.


def test_flip_fraction(run):
  image = _color_image()
  out = run(augment.random_flip, _tile(image, NUM_SAMPLES), _seeds(NUM_SAMPLES))
  flipped = np.all(out == image[:, ::-1], axis=(1, 2, 3))
  unchanged = np.all(out == image, axis=(1, 2, 3))
  assert np.all(flipped | unchanged)
  assert abs(flipped.mean() - 0.5) < 0.08


def test_grayscale_fraction_and_luma(run):
  image = _color_image()
  out = run(augment.random_grayscale, _tile(image, NUM_SAMPLES), _seeds(NUM_SAMPLES))
  gray = np.all(out[..., :1] == out, axis=(1, 2, 3))
  unchanged = np.all(out == image, axis=(1, 2, 3))
  assert np.all(gray | unchanged)
  assert abs(gray.mean() - 0.2) < 0.07
  luma = image.astype(np.float64) @ np.array([0.2989, 0.5870, 0.1140])  # ITU-R 601-2.
  np.testing.assert_allclose(out[gray][..., 0], np.broadcast_to(luma, out[gray][..., 0].shape),
                             atol=2e-3)


def test_color_jitter_applied_fraction_and_range(run):
  image = _color_image()
  out = run(lambda x, seed: augment.color_jitter(x, 1.0, seed=seed),
            _tile(image, NUM_SAMPLES), _seeds(NUM_SAMPLES))
  changed = np.any(out != image, axis=(1, 2, 3))
  assert abs(changed.mean() - 0.8) < 0.07
  assert out.dtype == np.float32 and out.min() >= 0.0 and out.max() <= 1.0
  same = augment.color_jitter(image, 0.0, seed=[1, 2])
  np.testing.assert_array_equal(same.numpy(), image)


@pytest.mark.parametrize('strength, mode', [(1.0, 'eager'), (1.0, 'tf.data.map'),
                                            (0.5, 'tf.data.map')])
def test_brightness_factor_range_v2(strength, mode):
  # A gray image is unchanged by contrast, saturation and hue: only brightness acts.
  image = np.full([4, 4, 3], 0.3, np.float32)
  run, count = (_run_eager, 150) if mode == 'eager' else (_run_dataset, NUM_SAMPLES)
  out = run(lambda x, seed: augment.color_jitter(x, strength, p=1.0, seed=seed),
            _tile(image, count), _seeds(count))
  factor = out[:, 0, 0, 0].astype(np.float64) / 0.3
  low, high = 1 - 0.8 * strength, 1 + 0.8 * strength
  assert factor.min() >= low - 1e-5 and factor.max() <= high + 1e-5
  assert factor.min() < low + 0.1 * (high - low) and factor.max() > high - 0.1 * (high - low)
  assert abs(factor.mean() - 1.0) < 0.05 * (high - low) * 2
  assert np.all(out == out[:, :1, :1, :1])  # Still gray: nothing else changed the image.


def test_brightness_additive_v1(run):
  image = np.full([4, 4, 3], 0.5, np.float32)
  count = 150 if run is _run_eager else NUM_SAMPLES  # Eager jitter is slow; 150 suffice.
  out = run(lambda x, seed: augment.color_jitter(x, 0.5, p=1.0, impl='simclrv1', seed=seed),
            _tile(image, count), _seeds(count))
  delta = out[:, 0, 0, 0].astype(np.float64) - 0.5
  assert delta.min() >= -0.4 - 1e-6 and delta.max() <= 0.4 + 1e-6
  assert delta.min() < -0.35 and delta.max() > 0.35
  with pytest.raises(ValueError, match='impl'):
    augment.color_jitter(image, 0.5, impl='simclrv3')


def test_hue_shift_range():
  # Hue shift of a red pixel (hue 0): with strength s, |shift| <= 0.2 s turns. The
  # pixel is dark enough that no brightness factor (<= 1.4) clips it (clipping moves hue).
  image = np.zeros([2, 2, 3], np.float32)
  image[..., 0] = 0.5
  image[..., 1] = 0.1
  image[..., 2] = 0.1
  out = _run_dataset(lambda x, seed: augment.color_jitter(x, 0.5, p=1.0, seed=seed),
                     _tile(image, NUM_SAMPLES), _seeds(NUM_SAMPLES))
  hue = tf.image.rgb_to_hsv(out[:, 0, 0]).numpy()[:, 0]
  shift = np.minimum(hue, 1.0 - hue)  # Circular distance from red.
  assert shift.max() <= 0.1 + 2e-3
  assert shift.max() > 0.08


# ---------------------------------------------------------------------------
# Gaussian blur.


def _numpy_blur(image: np.ndarray, sigma: float, kernel_size: int,
                mode: str = 'reflect') -> np.ndarray:
  """Float64 reference: separable Gaussian, reflect (or zero: mode='constant') padding."""
  radius = kernel_size // 2
  x = np.arange(-radius, radius + 1, dtype=np.float64)
  kernel = np.exp(-x**2 / (2 * sigma**2))
  kernel /= kernel.sum()
  padded = np.pad(image.astype(np.float64), [(radius, radius), (radius, radius), (0, 0)],
                  mode=mode)
  height, width = image.shape[:2]
  rows = sum(kernel[i] * padded[:, i:i + width] for i in range(kernel_size))
  return sum(kernel[i] * rows[i:i + height] for i in range(kernel_size))


def test_gaussian_blur_matches_numpy_reference():
  image = np.random.RandomState(1).uniform(size=(40, 36, 3)).astype(np.float32)
  for sigma, kernel_size in [(1.3, 7), (0.4, 3), (2.0, 23)]:
    out = augment.gaussian_blur(image, sigma, kernel_size).numpy()
    np.testing.assert_allclose(out, _numpy_blur(image, sigma, kernel_size), atol=1e-5)


def test_gaussian_blur_zero_padding_and_batches_match_numpy_reference():
  images = np.random.RandomState(5).uniform(size=(3, 32, 24, 3)).astype(np.float32)
  for sigma, kernel_size in [(1.7, 3), (0.8, 5)]:
    out = augment.gaussian_blur(images, sigma, kernel_size, padding='zero').numpy()
    for image, blurred in zip(images, out):
      np.testing.assert_allclose(blurred, _numpy_blur(image, sigma, kernel_size, 'constant'),
                                 atol=1e-5)
    reflect = augment.gaussian_blur(images, sigma, kernel_size).numpy()
    np.testing.assert_allclose(reflect[1], _numpy_blur(images[1], sigma, kernel_size), atol=1e-5)
  with pytest.raises(ValueError, match='padding'):
    augment.gaussian_blur(images[0], 1.0, 3, padding='wrap')


def test_batch_random_blur_one_sigma_per_batch():
  # The official batch blur: one sigma for the batch, each image blurred with p 0.5.
  size, count = 48, 64
  images = _impulses(count, size)
  sigmas_seen = []
  selected_fraction = []
  for seed in _seeds(6):
    out = augment.batch_random_blur(tf.constant(images), seed=seed).numpy()
    changed = np.any(out != images, axis=(1, 2, 3))
    selected_fraction.append(changed.mean())
    sigmas, errors = _estimate_sigmas(out[changed], size)
    assert np.all(errors < 1e-4)
    assert np.ptp(sigmas) < 1e-3  # One sigma for all blurred images of the batch.
    sigmas_seen.append(sigmas[0])
  assert len(np.unique(np.round(sigmas_seen, 3))) == 6  # A new sigma per batch.
  assert abs(np.mean(selected_fraction) - 0.5) < 0.1


def test_blur_kernel_size_is_ten_percent():
  assert augment.blur_kernel_size(224) == 23
  assert augment.blur_kernel_size(64) == 7
  assert augment.blur_kernel_size(32) == 3


def _impulse_response(sigmas: np.ndarray, kernel_size: int) -> np.ndarray:
  """[n, k, k] float64 blur of a centred impulse: the outer product of the 1-D kernels."""
  radius = kernel_size // 2
  x = np.arange(-radius, radius + 1, dtype=np.float64)
  kernels = np.exp(-x[np.newaxis]**2 / (2 * sigmas[:, np.newaxis]**2))
  kernels /= kernels.sum(axis=1, keepdims=True)
  return kernels[:, :, np.newaxis] * kernels[:, np.newaxis, :]


def _estimate_sigmas(out: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
  """Best-fitting sigma in [0.1, 2.0] for blurred centred impulses, and the fit error."""
  center = size // 2
  kernel_size = augment.blur_kernel_size(size)
  radius = kernel_size // 2
  patches = out[:, center - radius:center + radius + 1, center - radius:center + radius + 1, 0]
  sigmas, errors = [], []
  for patch in patches:
    grid = np.arange(0.1, 2.0 + 1e-9, 0.01)
    for step in (0.01, 0.0005, 0.00002):  # Coarse to fine search.
      error = np.abs(_impulse_response(grid, kernel_size) - patch).max(axis=(1, 2))
      best = grid[error.argmin()]
      grid = np.clip(np.arange(best - step, best + step + 1e-12, step / 25), 0.1, 2.0)
    sigmas.append(best)
    errors.append(error.min())
  return np.array(sigmas), np.array(errors)


def _impulses(count: int, size: int) -> np.ndarray:
  images = np.zeros([count, size, size, 3], np.float32)
  images[:, size // 2, size // 2] = 1.0
  return images


def test_blur_fraction_and_sigma_per_image(run):
  size = 64
  images = _impulses(NUM_SAMPLES, size)
  out = run(augment.random_blur, images, _seeds(NUM_SAMPLES))
  changed = np.any(out != images, axis=(1, 2, 3))
  # A blur with sigma < ~0.2 is the identity in float32 (5% of blurs).
  assert abs(changed.mean() - 0.5 * 0.97) < 0.08
  sigmas, errors = _estimate_sigmas(out[changed], size)
  assert np.all(errors < 1e-4)  # Each changed image is exactly a Gaussian blur.
  assert sigmas.min() >= 0.1 and sigmas.max() <= 2.0
  # Roughly U(0.1, 2.0): half below 1.05.
  assert abs(np.mean(sigmas < 1.05) - 0.5) < 0.12
  assert sigmas.min() < 0.5 and sigmas.max() > 1.8


def test_blur_sigma_differs_within_a_batch():
  size = 48
  dataset = tf.data.Dataset.from_tensor_slices((_impulses(32, size), _seeds(32)))
  dataset = dataset.map(lambda image, seed: augment.random_blur(image, p=1.0, seed=seed),
                        num_parallel_calls=tf.data.AUTOTUNE).batch(32)
  batch = next(iter(dataset)).numpy()
  sigmas, errors = _estimate_sigmas(batch, size)
  confident = sigmas > 0.3  # Below that the blur is too weak to measure sigma.
  assert np.all(errors[confident] < 1e-4)
  assert len(np.unique(sigmas[confident])) >= 20


def test_train_blur_at_every_size_as_the_official_code():
  # use_blur blurs at 32 px too (a 3-tap kernel); at 16 px the kernel has 1 tap.
  for size, expect_blur in [(16, False), (32, True), (40, True)]:
    images = _impulses(16, size)
    out = _run_dataset(
        lambda x, seed, size=size: augment.preprocess_for_train(
            x, size, size, color_jitter_strength=1.0, use_blur=True, crop=False, flip=False,
            color_distort=False, seed=seed),
        images, _seeds(16))
    assert np.any(out != images) == expect_blur


# ---------------------------------------------------------------------------
# Whole train / eval preprocessing.


def test_no_colour_distortion_at_zero_strength():
  # As the official code: color_jitter_strength=0 turns off jitter and grayscale.
  image = _color_image()
  out = _run_dataset(
      lambda x, seed: augment.preprocess_for_train(
          x, 16, 16, color_jitter_strength=0.0, use_blur=False, crop=False, flip=False,
          seed=seed),
      _tile(image, 40), _seeds(40))
  np.testing.assert_array_equal(out, _tile(image, 40))


@pytest.mark.parametrize('impl', ['simclrv2', 'simclrv1'])
def test_preprocess_for_train_shape_range_and_determinism(run, impl):
  image = (np.random.RandomState(2).uniform(size=(50, 70, 3)) * 255).astype(np.uint8)

  def fn(x, seed):
    return augment.preprocess_for_train(x, 40, 40, color_jitter_strength=1.0, use_blur=True,
                                        impl=impl, seed=seed)

  seeds = _seeds(12)
  out = run(fn, _tile(image, 12), seeds)
  assert out.shape == (12, 40, 40, 3) and out.dtype == np.float32
  assert out.min() >= 0.0 and out.max() <= 1.0
  assert len({view.tobytes() for view in out}) == 12
  # The same seed gives the same view eagerly and inside tf.data.map.
  np.testing.assert_array_equal(out, _run_eager(fn, _tile(image, 12), seeds))


def test_preprocess_for_eval_center_crop_and_resize():
  image = np.random.RandomState(3).uniform(size=(64, 64, 3)).astype(np.float32)
  # 0.875 of 64 is 56: the central 56x56, resized to 56 (identity up to rounding).
  out = augment.preprocess_for_eval(image, 56, 56).numpy()
  np.testing.assert_allclose(out, image[4:60, 4:60], atol=1e-5)
  assert augment.preprocess_for_eval(image, 32, 32).shape == (32, 32, 3)
  np.testing.assert_array_equal(augment.preprocess_for_eval(image, 64, 64, crop=False), image)
  resized = augment.preprocess_for_eval(image, 32, 32, crop=False).numpy()
  assert resized.shape == (32, 32, 3) and resized.min() >= 0 and resized.max() <= 1
  assert not augment.eval_center_crop(32) and augment.eval_center_crop(33)


def test_preprocess_for_eval_in_dataset_map():
  images = (np.random.RandomState(4).uniform(size=(6, 48, 40, 3)) * 255).astype(np.uint8)
  dataset = tf.data.Dataset.from_tensor_slices(images).map(
      lambda x: augment.preprocess_for_eval(x, 32, 32), num_parallel_calls=tf.data.AUTOTUNE)
  out = next(iter(dataset.batch(6))).numpy()
  eager = np.stack([augment.preprocess_for_eval(x, 32, 32).numpy() for x in images])
  assert out.shape == (6, 32, 32, 3) and out.dtype == np.float32
  np.testing.assert_array_equal(out, eager)
