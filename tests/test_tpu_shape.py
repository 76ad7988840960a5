"""The training step has the shape a TPU needs: static shapes, no host ops.

The replica step of tf_simclr.train (pretraining with the linear-eval head, LARS,
global BN) is traced, not run, with fully defined per-replica input shapes, and every
op of the traced graph (nested function bodies included) is checked by
`tpu_shape.step_problems`. The same step traced with an unknown batch dimension, and
a step that prints, must be reported (the check bites). The training input gives
fully static per-replica batches for each host of a multi-host InputContext.
Default suite: about 25 s on 2 idle cores (three ResNet-18 step traces, one pipeline).
"""


import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from tests import train_fixtures
from tf_simclr import config as config_lib
from tf_simclr import models
from tf_simclr import optim
from tf_simclr import tpu_shape
from tf_simclr import train as train_lib
from tf_simclr.data import datasets

IMAGE_SIZE = 16
LOCAL_BATCH = 4


def _step_function(config: config_lib.Config, *, print_in_step: bool = False):
  strategy = tf.distribute.get_strategy()
  with strategy.scope():
    model = models.build_model_for(config, train_fixtures.NUM_CLASSES)
    optimizer = optim.build_optimizer(config.optim, 0.1)
    optimizer.build(model.trainable_variables)
  step_fn = train_lib.build_train_step(config, model, optimizer, strategy)

  @tf.function
  def replica_step(batch):
    if print_in_step:
      tf.print('loss of this step')
    return strategy.run(step_fn, args=(batch,))

  return replica_step


def _spec(batch_size):
  views = None if batch_size is None else 2 * batch_size
  return {'image': tf.TensorSpec([views, IMAGE_SIZE, IMAGE_SIZE, 3], tf.float32),
          'label': tf.TensorSpec([batch_size, train_fixtures.NUM_CLASSES], tf.float32),
          'mask': tf.TensorSpec([batch_size], tf.float32)}


@pytest.fixture(scope='module')
def tiny_config(tmp_path_factory):
  return train_fixtures.tiny_config(str(tmp_path_factory.mktemp('tpu_shape')))


def test_replica_step_has_static_shapes_and_no_host_ops(tiny_config):
  traced = _step_function(tiny_config).get_concrete_function(_spec(LOCAL_BATCH))
  assert len(traced.graph.get_operations()) > 500  # The whole step was traced.
  assert tpu_shape.step_problems(traced) == []


def test_check_reports_a_dynamic_batch_and_a_host_op(tiny_config):
  # One trace (they cost seconds each): a step that prints, with an unknown batch size.
  traced = _step_function(tiny_config, print_in_step=True).get_concrete_function(
      _spec(None))
  problems = tpu_shape.step_problems(traced)
  assert any(line.startswith('dynamic shape (None, 16, 16, 64)') for line in problems)
  assert [line.split('`')[0] for line in problems if line.startswith('host op')] == [
      'host op StringFormat ', 'host op PrintV2 ']


def test_training_input_is_static_per_replica_on_every_host(tmp_path):
  rng = np.random.default_rng(0)
  for index in range(12):  # Images of different sizes.
    path = tmp_path / 'train' / f'class_{index % 3}' / f'{index}.png'
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (10 + index, 20 - index, 3), np.uint8)).save(path)
  data_config = config_lib.DataConfig(dataset='image_folder', data_dir=str(tmp_path),
                                      image_size=IMAGE_SIZE)
  input_fn = datasets.build_input_fn(data_config, split='train', is_training=True,
                                     train_mode='pretrain', global_batch_size=8, seed=0)
  for host in range(2):  # 2 hosts with 2 replicas each: per-replica batch 2.
    context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=host,
                                         num_replicas_in_sync=4)
    spec = input_fn(context).element_spec
    # (Sharding examples over pipelines: tests/test_datasets.py checks the eval input,
    # which reads its shard through the same source.examples call.)
    assert spec['image'].shape.as_list() == [4, IMAGE_SIZE, IMAGE_SIZE, 3]
    assert spec['label'].shape.as_list() == [2, 3] and spec['mask'].shape.as_list() == [2]
