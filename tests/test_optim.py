"""LARS, the warmup + cosine schedule, step counts, build_optimizer, weight_decay_loss.

References are independent: a NumPy float64 LARS written from the update rule of
You et al. (2017) as in the official SimCLR code, learning rates computed by hand, and
weight-decay sums in NumPy.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_simclr import config as config_lib
from tf_simclr import optim


def numpy_lars_step(weight, velocity, gradient, learning_rate, *, momentum, weight_decay,
                    eeta, decay, adapt):
  """One float64 LARS step; returns (new weight, new velocity)."""
  weight = np.asarray(weight, np.float64)
  gradient = np.asarray(gradient, np.float64)
  if decay:
    gradient = gradient + weight_decay * weight
  trust_ratio = 1.0
  if adapt:
    weight_norm, gradient_norm = np.linalg.norm(weight), np.linalg.norm(gradient)
    if weight_norm > 0 and gradient_norm > 0:
      trust_ratio = eeta * weight_norm / gradient_norm
  velocity = momentum * velocity + learning_rate * trust_ratio * gradient
  return weight - velocity, velocity


def numpy_schedule(step, *, scaled_learning_rate, warmup_steps, total_steps):
  """The official warmup + cosine formula, in Python floats."""
  if step < warmup_steps:
    return step / warmup_steps * scaled_learning_rate
  decay_steps = total_steps - warmup_steps
  progress = min(step - warmup_steps, decay_steps) / decay_steps
  return scaled_learning_rate * 0.5 * (1 + math.cos(math.pi * progress))


def build_layers():
  """Variables with Keras 3 paths: dense/kernel, dense/bias, batch_normalization/*, ..."""
  dense = keras.layers.Dense(4, name='dense')
  dense.build((None, 3))
  batch_norm = keras.layers.BatchNormalization(name='batch_normalization')
  batch_norm.build((None, 4))
  nodecay = keras.layers.Dense(2, use_bias=False, name='nodecay_dense',
                               kernel_initializer='zeros')  # ||w|| = 0 at first
  nodecay.build((None, 4))
  head = keras.layers.Dense(3, name='head_supervised')
  head.build((None, 2))
  return [dense, batch_norm, nodecay, head]


def test_lars_matches_numpy_over_several_steps_with_schedule():
  keras.utils.set_random_seed(0)
  layers = build_layers()
  variables = [v for layer in layers for v in layer.trainable_variables]
  paths = [v.path for v in variables]
  assert paths == ['dense/kernel', 'dense/bias', 'batch_normalization/gamma',
                   'batch_normalization/beta', 'nodecay_dense/kernel',
                   'head_supervised/kernel', 'head_supervised/bias']
  momentum, weight_decay, eeta = 0.9, 1e-2, 0.01
  schedule = optim.WarmUpAndCosineDecay(
      base_learning_rate=1.0, num_examples=512, train_batch_size=256, warmup_epochs=1.0,
      total_steps=6)  # warmup 2 steps, scaled lr 1.0
  optimizer = optim.LARS(
      schedule, momentum=momentum, weight_decay=weight_decay, eeta=eeta,
      exclude_from_weight_decay=('batch_normalization', 'bias', 'head_supervised', 'nodecay'),
      exclude_from_layer_adaptation=('batch_normalization', 'bias', 'head_supervised'))
  optimizer.build(variables)
  decay = [optimizer.uses_weight_decay(v) for v in variables]
  adapt = [optimizer.uses_layer_adaptation(v) for v in variables]
  assert decay == [True, False, False, False, False, False, False]
  assert adapt == [True, False, False, False, True, False, False]

  rng = np.random.default_rng(1)
  weights = [v.numpy().astype(np.float64) for v in variables]
  velocities = [np.zeros_like(w) for w in weights]

  @tf.function
  def apply(gradient_list):
    optimizer.apply_gradients(zip(gradient_list, variables))

  for step in range(5):
    gradients = [rng.normal(size=w.shape) for w in weights]
    if step == 3:
      gradients[0] = np.zeros_like(gradients[0])  # decay alone: ||g|| = wd ||w|| > 0
      gradients[4] = np.zeros_like(gradients[4])  # no decay: ||g|| = 0 -> trust 1
    learning_rate = numpy_schedule(step, scaled_learning_rate=1.0, warmup_steps=2,
                                   total_steps=6)
    for index in range(len(weights)):
      weights[index], velocities[index] = numpy_lars_step(
          weights[index], velocities[index], gradients[index], learning_rate,
          momentum=momentum, weight_decay=weight_decay, eeta=eeta,
          decay=decay[index], adapt=adapt[index])
    apply([tf.constant(g, tf.float32) for g in gradients])
    for index, variable in enumerate(variables):
      np.testing.assert_allclose(variable.numpy(), weights[index], rtol=1e-5, atol=1e-6,
                                 err_msg=f'step {step} {variable.path}')
      np.testing.assert_allclose(optimizer.momentums[index].numpy(), velocities[index],
                                 rtol=1e-5, atol=1e-6, err_msg=f'step {step} {variable.path}')
  assert int(optimizer.iterations.numpy()) == 5
  # The zero-initialised kernel moved (trust ratio 1 at ||w|| = 0).
  assert np.abs(variables[4].numpy()).max() > 0


def test_lars_default_exclusions_and_zero_weight_decay():
  layers = build_layers()
  variables = [v for layer in layers for v in layer.trainable_variables]
  optimizer = optim.LARS(0.1, weight_decay=1e-6)
  optimizer.build(variables)
  assert [optimizer.uses_weight_decay(v) for v in variables] == [
      True, False, False, False, True, False, False]
  assert [optimizer.uses_layer_adaptation(v) for v in variables] == [
      True, False, False, False, True, False, False]
  no_decay = optim.LARS(0.1, weight_decay=0.0)
  no_decay.build(variables)
  assert not any(no_decay.uses_weight_decay(v) for v in variables)
  assert no_decay.uses_layer_adaptation(variables[0])


def test_lars_config_round_trip_with_schedule():
  schedule = optim.WarmUpAndCosineDecay(0.3, 1000, 256, 2.0, 20, 'sqrt')
  optimizer = optim.LARS(schedule, momentum=0.8, weight_decay=1e-5, eeta=0.002,
                         exclude_from_weight_decay=('bias',))
  restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
  assert isinstance(restored, optim.LARS)
  assert (restored.momentum, restored.weight_decay, restored.eeta) == (0.8, 1e-5, 0.002)
  assert restored.weight_decay_excludes == ('bias',)
  assert restored.layer_adaptation_excludes == ('bias',)
  assert restored.learning_rate is not None
  restored_schedule = restored._learning_rate  # pylint: disable=protected-access
  assert isinstance(restored_schedule, optim.WarmUpAndCosineDecay)
  assert restored_schedule.get_config() == schedule.get_config()


def test_schedule_hand_computed_values():
  # N=1000, B=256, warmup 2 epochs: warmup = int(round(2 * 1000 // 256)) = 7 steps;
  # linear scaling: 0.3 * 256 / 256 = 0.3; cosine over 20 - 7 = 13 steps.
  schedule = optim.WarmUpAndCosineDecay(0.3, 1000, 256, 2.0, 20)
  assert schedule.warmup_steps == 7
  expected = {0: 0.0, 3: 3 / 7 * 0.3, 6: 6 / 7 * 0.3, 7: 0.3,
              10: 0.3 * 0.5 * (1 + math.cos(math.pi * 3 / 13)),
              13: 0.3 * 0.5 * (1 + math.cos(math.pi * 6 / 13)),
              19: 0.3 * 0.5 * (1 + math.cos(math.pi * 12 / 13)), 20: 0.0, 25: 0.0}
  for step, value in expected.items():
    np.testing.assert_allclose(float(schedule(step)), value, rtol=1e-6, atol=1e-7,
                               err_msg=f'step {step}')
  # Literal numbers, not the formula: 0.3 * 0.5 * (1 + cos(3 pi / 13)) = 0.26228.
  np.testing.assert_allclose(float(schedule(10)), 0.26228, atol=1e-5)

  # sqrt scaling: 0.3 * sqrt(256) = 4.8; B=4096 linear: 0.3 * 16 = 4.8 as well.
  sqrt_schedule = optim.WarmUpAndCosineDecay(0.3, 1000, 256, 0.0, 10, 'sqrt')
  assert sqrt_schedule.warmup_steps == 0
  np.testing.assert_allclose(float(sqrt_schedule(0)), 4.8, rtol=1e-6)
  np.testing.assert_allclose(float(sqrt_schedule(5)), 2.4, rtol=1e-6)
  assert optim.scaled_learning_rate(0.3, 4096, 'linear') == pytest.approx(4.8)

  # Fractional epochs floor-divide before rounding: 0.5 * 1000 // 300 = 1.0 -> 1 step.
  assert optim.WarmUpAndCosineDecay(0.1, 1000, 300, 0.5, 10).warmup_steps == 1
  # Total steps not above warmup: the official CosineDecay(S, 0) would give NaN.
  short = optim.WarmUpAndCosineDecay(0.1, 1000, 100, 10.0, 50)
  assert short.warmup_steps == 100
  assert all(np.isfinite(float(short(step))) for step in (0, 49, 100, 150))
  with pytest.raises(ValueError, match='learning_rate_scaling'):
    optim.WarmUpAndCosineDecay(0.1, 1000, 100, 1.0, 50, 'cubic')


def test_total_and_checkpoint_steps():
  train = config_lib.TrainConfig(train_batch_size=512, train_epochs=100)
  assert optim.total_train_steps(train, 50000) == 9766  # 5000000 // 512 + 1
  assert optim.total_train_steps(config_lib.TrainConfig(train_steps=123), 50000) == 123
  # Official run.py: checkpoint_epochs * round(N / B) = round(97.66) = 98.
  assert optim.checkpoint_interval_steps(train, 50000) == 98
  assert optim.checkpoint_interval_steps(
      config_lib.TrainConfig(train_batch_size=512, checkpoint_epochs=3), 50000) == 294
  assert optim.checkpoint_interval_steps(config_lib.TrainConfig(checkpoint_steps=10), 50000) == 10
  assert optim.checkpoint_interval_steps(config_lib.TrainConfig(train_batch_size=512), 10) == 1


def test_build_optimizer():
  lars = optim.build_optimizer(
      config_lib.OptimConfig(optimizer='lars', momentum=0.8, weight_decay=1e-4), 0.5)
  assert isinstance(lars, optim.LARS)
  assert (lars.momentum, lars.weight_decay) == (0.8, 1e-4)
  assert lars.weight_decay_excludes == config_lib.DEFAULT_LARS_EXCLUDES
  sgd = optim.build_optimizer(config_lib.OptimConfig(optimizer='momentum', momentum=0.7), 0.5)
  assert isinstance(sgd, keras.optimizers.SGD)
  assert sgd.nesterov and sgd.momentum == 0.7 and sgd.weight_decay is None
  adam = optim.build_optimizer(config_lib.OptimConfig(optimizer='adam'), 0.5)
  assert isinstance(adam, keras.optimizers.Adam)
  np.testing.assert_allclose(float(adam.learning_rate), 0.5)
  with pytest.raises(ValueError, match='--optimizer'):
    optim.build_optimizer(config_lib.OptimConfig(optimizer='rmsprop'), 0.5)


def test_weight_decay_loss_matches_numpy():
  keras.utils.set_random_seed(2)
  layers = build_layers()
  for layer in layers:  # non-trivial values everywhere, including BN and biases
    for variable in layer.trainable_variables:
      variable.assign(np.random.default_rng(len(variable.path)).normal(size=variable.shape))
  variables = [v for layer in layers for v in layer.trainable_variables]
  squares = {v.path: 0.5 * float(np.sum(v.numpy().astype(np.float64) ** 2)) for v in variables}

  lars_config = config_lib.OptimConfig(optimizer='lars', weight_decay=1e-3)
  np.testing.assert_allclose(optim.weight_decay_loss(variables, lars_config).numpy(),
                             1e-3 * squares['head_supervised/kernel'], rtol=1e-5)
  all_but_bn = sum(value for path, value in squares.items()
                   if 'batch_normalization' not in path)
  momentum_config = config_lib.OptimConfig(optimizer='momentum', weight_decay=1e-3)
  np.testing.assert_allclose(optim.weight_decay_loss(variables, momentum_config).numpy(),
                             1e-3 * all_but_bn, rtol=1e-5)
  np.testing.assert_allclose(
      optim.weight_decay_loss(variables, lars_config, adjust_per_optimizer=False).numpy(),
      1e-3 * all_but_bn, rtol=1e-5)

  # A model is accepted too (its trainable_variables are used).
  inputs = keras.Input((3,))
  outputs = layers[3](layers[2](layers[1](layers[0](inputs))))
  model = keras.Model(inputs, outputs)
  np.testing.assert_allclose(optim.weight_decay_loss(model, momentum_config).numpy(),
                             1e-3 * all_but_bn, rtol=1e-5)
  # LARS without a supervised head: 0.
  assert float(optim.weight_decay_loss(variables[:2], lars_config)) == 0.0
