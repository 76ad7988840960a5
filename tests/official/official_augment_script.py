"""Subprocess: official data_util.py outputs for given draws, and unseeded official samples.

    python official_augment_script.py OFFICIAL_DIR OUT.npz NUM_SAMPLES

Writes inputs, the draws served and the official outputs (keys documented where they
are set), plus two independent unseeded samples (A and B) of the official random
decisions for the distribution tests. Run by tests/official/test_augment.py.
"""

import json
import os
import sys

import numpy as np

official_dir, out_path, num_samples = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.path.insert(0, official_dir)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tensorflow.compat.v2 as tf  # noqa: E402

import data_util  # noqa: E402  The official module, unmodified.
from official_runner import ServedRandomness  # noqa: E402

rng = np.random.RandomState(21)
out = {}
served = ServedRandomness(tf)


def colour_images(count, height, width):
  return rng.uniform(0.0, 1.0, size=(count, height, width, 3)).astype(np.float32)


def random_box(height, width):
  crop_height = rng.randint(1, height + 1)
  crop_width = rng.randint(1, width + 1)
  return [rng.randint(0, height - crop_height + 1), rng.randint(0, width - crop_width + 1),
          crop_height, crop_width]


# Crop with a given box: data_util.crop_and_resize (the box sampler serves the box).
crop_cases = []
for index, (image_shape, output_shape) in enumerate([((40, 60), (32, 32)), ((32, 32), (32, 32)),
                                                     ((64, 48), (24, 32)), ((9, 200), (32, 32))]):
  image = colour_images(1, *image_shape)[0]
  box = random_box(*image_shape) if index < 3 else [0, 0, 9, 200]  # Last: whole image.
  with served:
    served.serve(box)
    result = data_util.crop_and_resize(tf.constant(image), *output_shape).numpy()
    served.check_used_up()
  out[f'crop_{index}_image'] = image
  out[f'crop_{index}_box'] = np.array(box, np.int32)
  out[f'crop_{index}_output'] = result
  crop_cases.append({'output_shape': output_shape, 'sampler_kwargs': {
      key: list(value) if isinstance(value, tuple) else value
      for key, value in served.calls[0][1].items()}})
out['crop_cases'] = np.array(json.dumps(crop_cases))

# Colour jitter with given values, fixed order (color_jitter_nonrand) and given order
# (color_jitter_rand: the shuffle serves the order, then one draw per step in that order).
jitter_cases = []
images = colour_images(3, 8, 8)
out['jitter_images'] = images
for index, (strength, impl, random_order) in enumerate(
    [(1.0, 'simclrv2', False), (0.5, 'simclrv2', False), (1.0, 'simclrv1', False),
     (1.0, 'simclrv2', True), (0.5, 'simclrv2', True), (1.0, 'simclrv1', True),
     (1.25, 'simclrv2', True)]):
  for image_index, image in enumerate(images):
    uniforms = rng.uniform(size=4).astype(np.float32)
    order = rng.permutation(4).astype(np.int32) if random_order else np.arange(4, dtype=np.int32)
    draws = ([order] + [uniforms[step] for step in order]) if random_order else list(uniforms)
    with served:
      served.serve(*draws)
      result = data_util.color_jitter(tf.constant(image), strength, random_order=random_order,
                                      impl=impl).numpy()
      served.check_used_up()
    key = f'jitter_{index}_{image_index}'
    out[key + '_uniforms'] = uniforms
    out[key + '_order'] = order
    out[key + '_output'] = result
    out[key + '_ranges'] = np.array([call[1:3] for call in served.calls if call[0] == 'uniform'])
  jitter_cases.append({'strength': strength, 'impl': impl, 'random_order': random_order})
out['jitter_cases'] = np.array(json.dumps(jitter_cases))

# Grayscale.
out['gray_input'] = colour_images(2, 6, 5) * 1.2 - 0.1  # Out-of-range values too.
out['gray_output'] = data_util.to_grayscale(tf.constant(out['gray_input'][0])).numpy()
out['gray_output_1'] = data_util.to_grayscale(tf.constant(out['gray_input'][1])).numpy()

# Blur with a given sigma and selection: data_util.batch_random_blur for one view.
for size in (32, 64):
  images = colour_images(4, size, size)
  sigma_uniform = np.float32(rng.uniform())
  selector = np.array([0.2, 0.7, 0.4, 0.9], np.float32).reshape(4, 1, 1, 1)
  with served:
    # random_blur's random_apply(p=1.0), its sigma, then the per-image selector.
    served.serve(np.float32(0.0), sigma_uniform, selector)
    result = data_util.batch_random_blur([tf.constant(images)], size, size)[0].numpy()
    served.check_used_up()
    out[f'blur_{size}_sigma_range'] = np.array(served.calls[1][1:3])
  out[f'blur_{size}_images'] = images
  out[f'blur_{size}_sigma_uniform'] = sigma_uniform
  out[f'blur_{size}_selected'] = selector.reshape(4) < 0.5
  out[f'blur_{size}_output'] = result

# Eval preprocessing (preprocess_image, as data.py calls it: test_crop = size > 32).
eval_cases = [((32, 32), 32), ((80, 100), 64), ((50, 60), 48), ((300, 200), 224)]
for index, (image_shape, size) in enumerate(eval_cases):
  image = (rng.uniform(size=image_shape + (3,)) * 255).astype(np.uint8)
  out[f'eval_{index}_image'] = image
  out[f'eval_{index}_output'] = data_util.preprocess_image(
      tf.constant(image), size, size, is_training=False, test_crop=size > 32).numpy()
out['eval_sizes'] = np.array([size for _, size in eval_cases])

# Whole training view (preprocess_image, is_training=True) with given draws, then the
# official per-view batch blur of the two views' batch.
train_views = []
for index in range(8):
  image = (rng.uniform(size=(40, 50, 3)) * 255).astype(np.uint8)
  # Some uint8 images saturate, so the clipping places matter.
  if index % 2:
    image = np.clip(image.astype(np.int32) * 2, 0, 255).astype(np.uint8)
  strength = 0.0 if index == 7 else 1.0
  box = random_box(40, 50)
  draws = {'flip_u': np.float32(rng.uniform()), 'jitter_u': np.float32([0.1, 0.9][index % 2]),
           'gray_u': np.float32([0.1, 0.5, 0.9][index % 3]), 'color_u': rng.uniform(size=4)
           .astype(np.float32), 'order': rng.permutation(4).astype(np.int32)}
  queue = [np.float32(0.0), box, draws['flip_u']]  # Crop random_apply(p=1), box, flip.
  if strength > 0:
    queue += [np.float32(0.0), draws['jitter_u']]   # random_color_jitter p=1, jitter p=0.8.
    if draws['jitter_u'] < 0.8:
      queue += [draws['order']] + [draws['color_u'][step] for step in draws['order']]
    queue += [draws['gray_u']]
  with served:
    served.serve(*queue)
    view = data_util.preprocess_image(tf.constant(image), 32, 32, is_training=True,
                                      color_jitter_strength=strength).numpy()
    served.check_used_up()
  out[f'train_{index}_image'] = image
  out[f'train_{index}_box'] = np.array(box, np.int32)
  out[f'train_{index}_strength'] = np.float32(strength)
  for key, value in draws.items():
    out[f'train_{index}_{key}'] = value
  out[f'train_{index}_output'] = view
  train_views.append(view)
with served:
  served.serve(np.float32(0.0), np.float32(0.8), np.linspace(0.05, 0.95, 8, dtype=np.float32)
               .reshape(8, 1, 1, 1))
  out['train_blurred'] = data_util.batch_random_blur([tf.constant(np.stack(train_views))],
                                                     32, 32)[0].numpy()
  served.check_used_up()
out['train_blur_sigma_uniform'] = np.float32(0.8)
out['train_blur_selected'] = np.linspace(0.05, 0.95, 8) < 0.5


if num_samples == 0:
  np.savez(out_path, **out)
  sys.exit(0)


# Unseeded official samples (no tf.random.set_seed: under it the official colour
# jitter's draws replay one stream). Spies pass each draw through and record it.
class Spy:
  def __init__(self):
    self.records = []
    self._saved = []

  def __enter__(self):
    for module, attribute in [(tf.image, 'sample_distorted_bounding_box'), (tf.random, 'shuffle')]:
      original = getattr(module, attribute)
      self._saved.append((module, attribute, original))

      def spy(*args, _original=original, _name=attribute, **kwargs):
        result = _original(*args, **kwargs)
        self.records.append((_name, result))
        return result
      setattr(module, attribute, spy)
    return self

  def __exit__(self, *exc_info):
    for module, attribute, original in self._saved:
      setattr(module, attribute, original)


asymmetric = np.zeros([8, 8, 3], np.float32)
asymmetric[:, :3] = 0.8
asymmetric[2:5, :, 1] = 0.5
colourful = np.array([[[0.9, 0.2, 0.1], [0.1, 0.6, 0.3]], [[0.2, 0.3, 0.8], [0.7, 0.7, 0.2]]],
                     np.float32)
out['asymmetric'] = asymmetric
out['colourful'] = colourful
for sample in ('a', 'b'):
  areas, aspects, flips, gray, jittered, orders = [], [], [], [], [], []
  for _ in range(num_samples):
    with Spy() as spy:
      data_util.crop_and_resize(tf.zeros([60, 90, 3]), 32, 32)
    size = spy.records[0][1][1].numpy()
    areas.append(size[0] * size[1] / (60 * 90))
    aspects.append(size[1] / size[0])
    view = data_util.preprocess_for_train(tf.constant(asymmetric), 8, 8, 0.0, crop=False).numpy()
    flips.append(bool(np.all(view == asymmetric[:, ::-1])))
    with Spy() as spy:
      view = data_util.random_color_jitter(tf.constant(colourful), strength=1.0).numpy()
    shuffles = [record[1].numpy() for record in spy.records if record[0] == 'shuffle']
    jittered.append(len(shuffles) == 1)
    orders.append(shuffles[0] if shuffles else -np.ones(4, np.int32))
    gray.append(bool(np.all(view == view[..., :1])))
  out[f'sample_{sample}_area'] = np.array(areas)
  out[f'sample_{sample}_aspect'] = np.array(aspects)
  out[f'sample_{sample}_flip'] = np.array(flips)
  out[f'sample_{sample}_gray'] = np.array(gray)
  out[f'sample_{sample}_jittered'] = np.array(jittered)
  out[f'sample_{sample}_order'] = np.array(orders)

np.savez(out_path, **out)
