"""Our augmentations equal google-research/simclr tf2 `data_util.py` given the same draws.

The official functions run unmodified in one subprocess (official_augment_script.py);
TensorFlow's stateful random ops are served given values there (official_runner), and
our deterministic cores get the same values: crop with a given box, colour jitter with
given values in the fixed (`color_jitter_nonrand`) and a given (`color_jitter_rand`)
order, grayscale, the per-batch blur with a given sigma and selection, eval
preprocessing, and whole training views (crop, flip, jitter, grayscale and the
official clipping places) followed by the per-view batch blur. Differences are float
rounding only (atol 1e-6; most cases are bit-identical).
"""

import json

import numpy as np
import pytest
import tensorflow as tf

from tests.official.conftest import official_outputs
from tf_simclr.data import augment

ATOL = 1e-6


@pytest.fixture(scope='module')
def official(tmp_path_factory):
  return official_outputs(tmp_path_factory, 'official_augment_script.py', '0')


def test_crop_with_a_given_box(official, monkeypatch):
  cases = json.loads(str(official['crop_cases']))
  for index, case in enumerate(cases):
    height, width = case['output_shape']
    image = official[f'crop_{index}_image']
    box = [int(v) for v in official[f'crop_{index}_box']]
    ours = augment.crop_and_resize(image, box, height, width).numpy()
    np.testing.assert_allclose(ours, official[f'crop_{index}_output'], atol=ATOL, rtol=0)
  assert official['crop_0_output'].max() > 1.0  # Unclipped bicubic overshoot, on both sides.

  # The box sampler gets the official arguments (recorded by a spy on the TF op).
  recorded = []
  original = tf.image.stateless_sample_distorted_bounding_box

  def spy(*args, **kwargs):
    recorded.append(kwargs)
    return original(*args, **kwargs)

  monkeypatch.setattr(tf.image, 'stateless_sample_distorted_bounding_box', spy)
  for index, case in enumerate(cases):
    height, width = case['output_shape']
    image_shape = official[f'crop_{index}_image'].shape
    augment.sample_train_draws(tf.constant(image_shape), height, width, seed=[1, index])
    ours = {key: recorded[-1][key] for key in case['sampler_kwargs']}
    ours = {key: list(value) if isinstance(value, tuple) else value for key, value in ours.items()}
    np.testing.assert_allclose(ours.pop('aspect_ratio_range'),
                               case['sampler_kwargs'].pop('aspect_ratio_range'), rtol=1e-12)
    assert ours == case['sampler_kwargs']


def test_color_jitter_with_given_values_and_order(official):
  cases = json.loads(str(official['jitter_cases']))
  for index, case in enumerate(cases):
    ranges = augment.color_jitter_ranges(case['strength'], case['impl'])
    for image_index, image in enumerate(official['jitter_images']):
      key = f'jitter_{index}_{image_index}'
      order = official[key + '_order']
      factors = augment.jitter_factors(official[key + '_uniforms'], case['strength'],
                                       case['impl'])
      ours = augment.adjust_color(image, factors, order, impl=case['impl']).numpy()
      np.testing.assert_allclose(ours, official[key + '_output'], atol=ATOL, rtol=0,
                                 err_msg=f'{case} image {image_index}')
      # The official draws asked for the same ranges, step by step in the order used.
      np.testing.assert_allclose(official[key + '_ranges'], np.array(ranges)[order], rtol=1e-6)


def test_grayscale(official):
  for key in ('gray_output', 'gray_output_1'):
    image = official['gray_input'][0 if key == 'gray_output' else 1]
    np.testing.assert_array_equal(augment.to_grayscale(image).numpy(), official[key])


@pytest.mark.parametrize('size', [32, 64])
def test_batch_blur_with_a_given_sigma(official, size):
  # The official sigma range is ours (recorded in float32).
  np.testing.assert_allclose(official[f'blur_{size}_sigma_range'], [0.1, 2.0], rtol=1e-7)
  sigma = augment.blur_sigma(official[f'blur_{size}_sigma_uniform'])
  ours = augment.blur_batch_with_draws(official[f'blur_{size}_images'], sigma,
                                       official[f'blur_{size}_selected']).numpy()
  np.testing.assert_allclose(ours, official[f'blur_{size}_output'], atol=ATOL, rtol=0)


def test_eval_preprocessing(official):
  for index, size in enumerate(official['eval_sizes']):
    size = int(size)
    ours = augment.preprocess_for_eval(official[f'eval_{index}_image'], size, size,
                                       crop=augment.eval_center_crop(size)).numpy()
    np.testing.assert_allclose(ours, official[f'eval_{index}_output'], atol=ATOL, rtol=0)


def test_training_views_with_given_draws_then_batch_blur(official):
  views = []
  index = 0
  while f'train_{index}_image' in official:
    key = f'train_{index}_'
    draws = {name: official[key + name] for name in
             ('box', 'flip_u', 'jitter_u', 'gray_u', 'color_u', 'order')}
    draws.update(blur_u=np.float32(1.0), sigma_u=np.float32(0.0))
    view = augment.train_view_from_draws(
        official[key + 'image'], draws, 32, 32,
        color_jitter_strength=float(official[key + 'strength']), use_blur=False).numpy()
    np.testing.assert_allclose(view, official[key + 'output'], atol=ATOL, rtol=0,
                               err_msg=f'training view {index}')
    views.append(view)
    index += 1
  assert index == 8
  sigma = augment.blur_sigma(official['train_blur_sigma_uniform'])
  blurred = augment.blur_batch_with_draws(np.stack(views), sigma, official['train_blur_selected'])
  np.testing.assert_allclose(blurred.numpy(), official['train_blurred'], atol=ATOL, rtol=0)
