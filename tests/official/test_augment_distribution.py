"""The random parts of our augmentation are distributed as the official ones.

Slow (about 1-2 minutes idle; official sampling is eager). The official
`data_util.py` runs unmodified in a subprocess and draws two independent samples, A
and B, of NUM_SAMPLES views each, unseeded (under `tf.random.set_seed` its colour
jitter's draws replay one stream); spies pass its crop sampler and shuffle through and
record them. From each sample: crop area and aspect ratio (60x90 image to 32x32),
horizontal flip rate, colour-jitter rate and order, grayscale rate. Ours draws a seeded
sample of the same size through `preprocess_for_train` / `sample_train_draws`.

Tolerance: for each statistic (two-sample Kolmogorov-Smirnov distance for area and
aspect; difference of rates; mean total-variation distance of the order's
(position, step) frequencies), the null distribution of official-vs-official values
comes from 500 random re-splits of A + B into two samples of NUM_SAMPLES; the
tolerance is 1.25 x its maximum. Ours must be within it against A and against B.
"""

import numpy as np
import pytest
import tensorflow as tf

from tests.official.conftest import official_outputs
from tf_simclr.data import augment

NUM_SAMPLES = 400
PERMUTATIONS = 500

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def official(tmp_path_factory):
  return official_outputs(tmp_path_factory, 'official_augment_script.py', str(NUM_SAMPLES))


def _ks(a: np.ndarray, b: np.ndarray) -> float:
  grid = np.concatenate([a, b])
  cdf_a = np.searchsorted(np.sort(a), grid, side='right') / len(a)
  cdf_b = np.searchsorted(np.sort(b), grid, side='right') / len(b)
  return float(np.abs(cdf_a - cdf_b).max())


def _rate(a: np.ndarray, b: np.ndarray) -> float:
  return float(abs(np.mean(a) - np.mean(b)))


def _order_distance(a: np.ndarray, b: np.ndarray) -> float:
  """Mean over positions of the total-variation distance of the step at that position."""
  def frequencies(orders):
    return np.stack([np.bincount(orders[:, position], minlength=4) / len(orders)
                     for position in range(4)])
  return float(0.5 * np.abs(frequencies(a) - frequencies(b)).sum() / 4)


def _tolerance(statistic, sample_a: np.ndarray, sample_b: np.ndarray) -> float:
  pooled = np.concatenate([sample_a, sample_b])
  rng = np.random.RandomState(0)
  null = []
  for _ in range(PERMUTATIONS):
    shuffled = pooled[rng.permutation(len(pooled))]
    null.append(statistic(shuffled[:len(sample_a)], shuffled[len(sample_a):]))
  return 1.25 * max(null)


def _our_sample(official) -> dict[str, np.ndarray]:
  seeds = np.arange(2 * NUM_SAMPLES, dtype=np.int64).reshape(NUM_SAMPLES, 2) + 777
  asymmetric = tf.constant(official['asymmetric'])
  colourful = tf.constant(official['colourful'])

  def one(seed):
    box = augment.sample_train_draws(tf.constant([60, 90, 3]), 32, 32, seed=seed)['box']
    flip_view = augment.preprocess_for_train(asymmetric, 8, 8, color_jitter_strength=0.0,
                                             use_blur=False, crop=False, seed=seed)
    colour_view = augment.preprocess_for_train(colourful, 2, 2, color_jitter_strength=1.0,
                                               use_blur=False, crop=False, flip=False, seed=seed)
    draws = augment.sample_train_draws(tf.shape(colourful), 2, 2, seed=seed)
    return box, flip_view, colour_view, draws['jitter_u'] < 0.8, draws['order']

  dataset = tf.data.Dataset.from_tensor_slices(seeds).map(one, num_parallel_calls=tf.data.AUTOTUNE)
  box, flip_view, colour_view, jittered, order = [
      value.numpy() for value in next(iter(dataset.batch(NUM_SAMPLES)))]
  return {'area': box[:, 2] * box[:, 3] / (60 * 90), 'aspect': box[:, 3] / box[:, 2],
          'flip': np.all(flip_view == official['asymmetric'][:, ::-1], axis=(1, 2, 3)),
          'gray': np.all(colour_view == colour_view[..., :1], axis=(1, 2, 3)),
          'jittered': jittered, 'order': order[jittered]}


def test_random_parts_are_distributed_as_the_official_ones(official):
  ours = _our_sample(official)
  samples = {}
  for name in ('a', 'b'):
    jittered = official[f'sample_{name}_jittered']
    samples[name] = {key: official[f'sample_{name}_{key}']
                     for key in ('area', 'aspect', 'flip', 'gray', 'jittered')}
    samples[name]['order'] = official[f'sample_{name}_order'][jittered]
  assert samples['a']['area'].min() >= 0.1 - 1e-9  # The official min_object_covered.
  checks = [('area', _ks), ('aspect', lambda a, b: _ks(np.log(a), np.log(b))),
            ('flip', _rate), ('gray', _rate), ('jittered', _rate), ('order', _order_distance)]
  report, failures = [], []
  for key, statistic in checks:
    tolerance = _tolerance(statistic, samples['a'][key], samples['b'][key])
    official_distance = statistic(samples['a'][key], samples['b'][key])
    distances = [statistic(ours[key], samples[name][key]) for name in ('a', 'b')]
    report.append(f'{key}: ours-A {distances[0]:.3f}, ours-B {distances[1]:.3f}, '
                  f'A-B {official_distance:.3f}, tolerance {tolerance:.3f}')
    if max(distances) > tolerance:
      failures.append(key)
  print('\n'.join(report))
  assert not failures, f'{failures} differ from the official distribution:\n' + '\n'.join(report)
