"""TensorBoard hyper-parameters and throughput scalars of a training run."""

import os
import time

import tensorflow as tf
from tensorboard.plugins.hparams import metadata as hparams_metadata

from tests import train_fixtures
from tf_simclr import summaries
from tf_simclr import train as train_lib


def _events(model_dir):
  for path in tf.io.gfile.glob(os.path.join(model_dir, 'events.out.tfevents.*')):
    yield from tf.compat.v1.train.summary_iterator(path)


def test_run_writes_hparams_and_step_throughput(tmp_path):
  model_dir = str(tmp_path / 'run')
  config = train_fixtures.tiny_config(model_dir, train_steps=2, checkpoint_steps=2,
                                      steps_per_loop=1)
  batches = train_fixtures.global_batches(2, 8, 16)
  start = time.perf_counter()
  train_lib.train(config, tf.distribute.OneDeviceStrategy('/cpu:0'),
                  input_fn=train_fixtures.make_input_fn(batches),
                  data_sizes=train_fixtures.Sizes(16, 8), verbose=False)
  wall = time.perf_counter() - start
  scalars, session = {}, None
  for event in _events(model_dir):
    for value in event.summary.value:
      plugin = value.metadata.plugin_data
      if plugin.plugin_name == hparams_metadata.PLUGIN_NAME and (
          value.tag == hparams_metadata.SESSION_START_INFO_TAG):
        session = hparams_metadata.parse_session_start_info_plugin_data(plugin.content)
      elif value.tag.startswith('train/') and plugin.plugin_name == 'scalars':
        scalars[(value.tag, event.step)] = float(tf.make_ndarray(value.tensor))
  assert session is not None
  hparams = {name: value.WhichOneof('kind') and getattr(value, value.WhichOneof('kind'))
             for name, value in session.hparams.items()}
  flat = config.flat_dict()
  assert hparams['resnet_depth'] == flat['resnet_depth'] == 18
  assert hparams['learning_rate'] == flat['learning_rate']
  assert hparams['optimizer'] == 'lars' and hparams['global_bn'] is True
  assert hparams['checkpoint'] == '' and 'model_dir' not in hparams
  assert set(hparams) == set(flat) - {'model_dir'}
  assert session.group_name == model_dir
  for step in (1, 2):
    steps_per_second = scalars[('train/steps_per_second', step)]
    # One step per loop, 8 images per step; the loop took less than the whole run.
    assert 1.0 / steps_per_second < wall
    assert abs(scalars[('train/images_per_second', step)] - 8 * steps_per_second) < (
        1e-4 * 8 * steps_per_second)


def test_throughput_formula():
  assert summaries.throughput(10, 4.0, 64) == {'steps_per_second': 2.5,
                                               'images_per_second': 160.0}
