"""Schedule, weight decay, LARS, NT-Xent, supervised loss and metrics equal the official code.

google-research/simclr tf2 (`model.py`, `lars_optimizer.py`, `objective.py`,
`metrics.py`, with the flags of its `run.py`) runs unmodified in one subprocess
(official_optim_script.py) on fixed inputs; ours runs here on the same inputs:
- the learning rate at every step of four short runs (warmup, none, sqrt scaling,
  warmup longer than the run) and the total step count;
- which variables of the ResNet-18 SimCLR model get weight decay and the LARS trust
  ratio, and the weight-decay loss (LARS and momentum) with the same weights;
- three LARS steps on variables named like the model's (excluded ones, ||g|| = 0,
  ||w|| = 0);
- NT-Xent loss, logits, labels and gradient with and without hidden_norm, and the
  contrastive accuracy and entropy; the supervised loss, training accuracy and eval
  top-1 / top-5.
"""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.official.conftest import official_outputs
from tf_simclr import config as config_lib
from tf_simclr import losses
from tf_simclr import metrics as metrics_lib
from tf_simclr import optim
from tf_simclr.models import simclr


@pytest.fixture(scope='module')
def official(tmp_path_factory):
  return official_outputs(tmp_path_factory, 'official_optim_script.py')


def test_learning_rate_schedule_at_every_step(official):
  for index, schedule in enumerate(json.loads(str(official['schedules']))):
    train_config = config_lib.TrainConfig(train_batch_size=schedule['train_batch_size'],
                                          train_epochs=schedule['train_epochs'],
                                          train_steps=schedule['train_steps'])
    total_steps = optim.total_train_steps(train_config, schedule['num_examples'])
    assert total_steps == official[f'schedule_{index}_total_steps']
    learning_rate = optim.WarmUpAndCosineDecay(
        schedule['learning_rate'], schedule['num_examples'], schedule['train_batch_size'],
        schedule['warmup_epochs'], total_steps, schedule['learning_rate_scaling'])
    ours = [float(learning_rate(step)) for step in range(total_steps + 2)]
    np.testing.assert_allclose(ours, official[f'schedule_{index}_values'], rtol=1e-6, atol=1e-9,
                               err_msg=str(schedule))


def _our_model() -> keras.Model:
  config = config_lib.Config(model=config_lib.ModelConfig(resnet_depth=18),
                             data=config_lib.DataConfig(image_size=32))
  model = simclr.build_model(config, num_classes=10)
  model(tf.zeros([4, 32, 32, 3]), training=False)
  return model


def test_weight_decay_and_lars_exclusions_on_the_model(official):
  model = _our_model()
  variables = model.trainable_variables
  for variable in variables:  # Values set by shape, as there (creation orders differ).
    variable.assign(tf.fill(variable.shape, 0.01 * (1 + sum(variable.shape) % 7)))
  lars = optim.build_optimizer(config_lib.OptimConfig(weight_decay=0.01), 0.1)
  lars.build(variables)
  # The same trainable variables (by shape) with the same decay / adaptation flags.
  ours = sorted((list(v.shape), bool(lars.uses_weight_decay(v)),
                 bool(lars.uses_layer_adaptation(v))) for v in variables)
  theirs = sorted(zip(json.loads(str(official['variable_shapes'])),
                      official['lars_decay'].tolist(), official['lars_adaptation'].tolist()))
  assert ours == theirs
  assert 0 < sum(decay for _, decay, _ in ours) < len(ours)
  for optimizer in ('lars', 'momentum'):
    ours = optim.weight_decay_loss(
        model, config_lib.OptimConfig(optimizer=optimizer, weight_decay=0.01))
    np.testing.assert_allclose(float(ours), official[f'decay_{optimizer}_value'], rtol=1e-6)


def test_lars_updates(official):
  names = json.loads(str(official['lars_names']))
  layers = {}
  variables = []
  for index, name in enumerate(names):  # Paths 'layer/weight' as in the official names.
    layer_name, weight_name = name.split('/')
    layer = layers.setdefault(layer_name, keras.layers.Layer(name=layer_name))
    value = official[f'lars_initial_{index}']
    variables.append(layer.add_weight(shape=value.shape, name=weight_name,
                                      initializer=keras.initializers.Constant(value)))
  assert [v.path for v in variables] == names
  lars = optim.LARS(0.7, momentum=0.9, weight_decay=1e-2,
                    exclude_from_weight_decay=['batch_normalization', 'bias', 'head_supervised'])
  lars.build(variables)
  for step in range(3):
    gradients = [tf.constant(official[f'lars_gradient_{step}_{index}'])
                 for index in range(len(names))]
    lars.apply_gradients(zip(gradients, variables))
    for index, variable in enumerate(variables):
      np.testing.assert_allclose(variable.numpy(), official[f'lars_step{step}_var{index}'],
                                 rtol=1e-6, atol=1e-7, err_msg=f'step {step} {names[index]}')


@pytest.mark.parametrize('hidden_norm', [True, False])
@pytest.mark.parametrize('temperature', [0.1, 0.5])
def test_nt_xent_and_contrastive_metrics(official, hidden_norm, temperature):
  key = f'ntxent_{int(hidden_norm)}_{temperature}'
  hidden = tf.constant(official['hidden'])
  with tf.GradientTape() as tape:
    tape.watch(hidden)
    loss, logits_ab, labels = losses.nt_xent_loss(hidden, temperature=temperature,
                                                  hidden_norm=hidden_norm)
  np.testing.assert_allclose(float(loss), official[key + '_loss'], rtol=1e-6)
  np.testing.assert_allclose(tape.gradient(loss, hidden), official[key + '_gradient'],
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(logits_ab, official[key + '_logits_ab'], rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(labels, official[key + '_labels'])
  values = losses.contrastive_metrics(logits_ab, labels)
  np.testing.assert_allclose(float(values['contrast_acc']), official[key + '_acc'], rtol=1e-7)
  np.testing.assert_allclose(float(values['contrast_entropy']), official[key + '_entropy'],
                             rtol=1e-6)


def test_supervised_loss_and_metrics(official):
  labels, logits = official['sup_labels'], official['sup_logits']
  np.testing.assert_allclose(float(losses.supervised_loss(labels, logits)), official['sup_loss'],
                             rtol=1e-6)
  np.testing.assert_allclose(float(losses.supervised_accuracy(labels, logits)),
                             official['sup_acc'], rtol=1e-7)
  mask = tf.ones([len(labels)])
  for k, key in ((1, 'eval_top_1'), (5, 'eval_top_5')):
    correct = sum(float(metrics_lib.top_k_correct(labels[start:start + 10],
                                                  logits[start:start + 10],
                                                  mask[start:start + 10], k))
                  for start in (0, 10))
    np.testing.assert_allclose(correct / len(labels), official[key], rtol=1e-7)
  assert 0 < official['eval_top_1'] < official['eval_top_5'] < 1
