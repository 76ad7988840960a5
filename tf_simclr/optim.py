"""LARS optimizer, warmup + cosine learning-rate schedule, step counts, weight decay.

Semantics of google-research/simclr `tf2/lars_optimizer.py` and `tf2/model.py`
(`build_optimizer`, `add_weight_decay`, `get_train_steps`, `WarmUpAndCosineDecay`),
ported to Keras 3 and taking typed config instead of absl FLAGS.
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable, Optional, Sequence, Union

import keras
import tensorflow as tf

from tf_simclr import config as config_lib

LearningRate = Union[float, keras.optimizers.schedules.LearningRateSchedule]


def variable_path(variable: Any) -> str:
  """Keras 3 variables carry the layer in `.path`; plain tf.Variables in `.name`."""
  return getattr(variable, 'path', None) or variable.name


def _matches_any(path: str, patterns: Sequence[str]) -> bool:
  # re.search as the official code, so plain substrings and regexes both work.
  return any(re.search(pattern, path) is not None for pattern in patterns)


def _resource_handle(variable: Any) -> tf.Tensor:
  """The resource handle of a Keras or tf.Variable; of a distributed one, this
  replica's or this update's copy (`strategy.extended.update` calls update_step)."""
  if isinstance(variable, keras.Variable):
    variable = variable.value
  return variable.handle


@keras.saving.register_keras_serializable(package='tf_simclr')
class LARS(keras.optimizers.Optimizer):
  """Layer-wise Adaptive Rate Scaling (You et al. 2017), official SimCLR variant.

  Classic momentum, no Nesterov, per variable w with gradient g and momentum v:

    g <- g + weight_decay * w                   (unless w is excluded from decay)
    trust_ratio = eeta * ||w|| / ||g||  if ||w|| > 0 and ||g|| > 0, else 1
                                                 (1 if w is excluded from adaptation)
    v <- momentum * v + learning_rate * trust_ratio * g
    w <- w - v

  Exclusions match `re.search(pattern, variable.path)` and are decided once in
  `build()`. Keras' own decoupled `weight_decay` is not applied: the decay above is
  the only one. Build it inside `strategy.scope()` (`opt.build(variables)`) before
  the first step.
  """

  def __init__(
      self,
      learning_rate: LearningRate,
      momentum: float = 0.9,
      weight_decay: float = 0.0,
      eeta: float = 0.001,
      exclude_from_weight_decay: Optional[Sequence[str]] = config_lib.DEFAULT_LARS_EXCLUDES,
      exclude_from_layer_adaptation: Optional[Sequence[str]] = None,
      name: str = 'LARS',
      **kwargs: Any,
  ):
    """Creates the optimizer.

    Args:
      learning_rate: float or `keras.optimizers.schedules.LearningRateSchedule`.
      momentum: classic momentum coefficient.
      weight_decay: L2 coefficient added to the gradient of non-excluded variables.
      eeta: trust coefficient of the layer-wise adaptation.
      exclude_from_weight_decay: patterns of variable paths that get no weight decay.
      exclude_from_layer_adaptation: patterns of variable paths that get no trust
        ratio; None: the same as `exclude_from_weight_decay`.
      name: optimizer name.
      **kwargs: other `keras.optimizers.Optimizer` arguments (e.g. clipnorm); its
        decoupled `weight_decay` is not supported here.
    """
    super().__init__(learning_rate=learning_rate, name=name, **kwargs)
    self.momentum = float(momentum)
    # Kept under the Keras attribute name so get_config/from_config round-trip it;
    # _apply_weight_decay is overridden so Keras does not also apply it decoupled.
    self.weight_decay = float(weight_decay)
    self.eeta = float(eeta)
    self.weight_decay_excludes = tuple(exclude_from_weight_decay or ())
    if exclude_from_layer_adaptation is None:
      self.layer_adaptation_excludes = self.weight_decay_excludes
    else:
      self.layer_adaptation_excludes = tuple(exclude_from_layer_adaptation)

  def build(self, variables: Sequence[keras.Variable]) -> None:
    """Creates the momentum slots and decides each variable's exclusions by path."""
    if self.built:
      return
    super().build(variables)
    self.momentums = self.add_optimizer_variables(variables, 'momentum')
    paths = [variable_path(variable) for variable in variables]
    # Stored by variable index: inside update_step under a strategy the variable is a
    # per-replica tf.Variable without `.path`.
    self._decay_flags = tuple(
        bool(self.weight_decay) and not _matches_any(path, self.weight_decay_excludes)
        for path in paths)
    self._adaptation_flags = tuple(
        not _matches_any(path, self.layer_adaptation_excludes) for path in paths)

  def uses_weight_decay(self, variable: Any) -> bool:
    """Whether `variable` (one the optimizer was built with) gets weight decay."""
    return self._decay_flags[self._get_variable_index(variable)]

  def uses_layer_adaptation(self, variable: Any) -> bool:
    """Whether `variable` (one the optimizer was built with) gets a trust ratio."""
    return self._adaptation_flags[self._get_variable_index(variable)]

  def _apply_weight_decay(self, variables: Any) -> None:
    """No decoupled Keras weight decay: LARS adds its decay to the gradient."""
    del variables

  def update_step(self, gradient: tf.Tensor, variable: Any, learning_rate: tf.Tensor) -> None:
    """One LARS update of `variable`."""
    index = self._get_variable_index(variable)
    momentum_slot = self.momentums[index]
    dtype = variable.dtype
    learning_rate = tf.cast(learning_rate, dtype)
    gradient = tf.cast(tf.convert_to_tensor(gradient), dtype)
    parameter = tf.convert_to_tensor(variable)

    if self._decay_flags[index]:
      gradient = gradient + tf.cast(self.weight_decay, dtype) * parameter

    scaled_learning_rate = learning_rate
    if self._adaptation_flags[index]:
      # ||x|| = sqrt(2 * l2_loss(x)): one fused pass over x (tf.norm takes three ops).
      weight_norm = tf.sqrt(2 * tf.nn.l2_loss(parameter))
      gradient_norm = tf.sqrt(2 * tf.nn.l2_loss(gradient))
      trust_ratio = tf.where(
          weight_norm > 0,
          tf.where(gradient_norm > 0,
                   tf.cast(self.eeta, dtype) * tf.math.divide_no_nan(weight_norm, gradient_norm),
                   tf.ones_like(weight_norm)),
          tf.ones_like(weight_norm))
      scaled_learning_rate = learning_rate * trust_ratio

    # v <- momentum * v + (scaled_learning_rate * g); w <- w - 1 * v: TF's fused
    # momentum kernel, one pass over w and v (five element-wise ops otherwise).
    tf.raw_ops.ResourceApplyMomentum(
        var=_resource_handle(variable), accum=_resource_handle(momentum_slot),
        lr=tf.ones([], dtype), grad=scaled_learning_rate * gradient,
        momentum=tf.cast(self.momentum, dtype), use_locking=False, use_nesterov=False)

  def get_config(self) -> dict[str, Any]:
    config = super().get_config()
    config.update({
        'momentum': self.momentum,
        'weight_decay': self.weight_decay,
        'eeta': self.eeta,
        'exclude_from_weight_decay': list(self.weight_decay_excludes),
        'exclude_from_layer_adaptation': list(self.layer_adaptation_excludes),
    })
    return config


def scaled_learning_rate(base_learning_rate: float, train_batch_size: int,
                         learning_rate_scaling: str = 'linear') -> float:
  """lr * B / 256 ('linear') or lr * sqrt(B) ('sqrt'), as the official code."""
  if learning_rate_scaling == 'linear':
    return base_learning_rate * train_batch_size / 256.0
  if learning_rate_scaling == 'sqrt':
    return base_learning_rate * math.sqrt(train_batch_size)
  raise ValueError(f'--learning_rate_scaling={learning_rate_scaling!r} is unknown; '
                   'use linear or sqrt.')


@keras.saving.register_keras_serializable(package='tf_simclr')
class WarmUpAndCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
  """Linear warmup to the scaled learning rate, then cosine decay to 0.

  With S = scaled learning rate, W = warmup_steps, T = total_steps:
  lr(step) = S * step / W for step < W, else
  S * 0.5 * (1 + cos(pi * min(step - W, T - W) / (T - W))).
  """

  def __init__(self, base_learning_rate: float, num_examples: int, train_batch_size: int,
               warmup_epochs: float, total_steps: int,
               learning_rate_scaling: str = 'linear', name: Optional[str] = None):
    """Creates the schedule.

    Args:
      base_learning_rate: `--learning_rate` (per 256 examples with linear scaling).
      num_examples: number of training examples (one epoch).
      train_batch_size: global batch size B.
      warmup_epochs: warmup length in epochs (may be fractional).
      total_steps: total training steps (see `total_train_steps`).
      learning_rate_scaling: 'linear' (lr * B / 256) or 'sqrt' (lr * sqrt(B)).
      name: name scope.
    """
    super().__init__()
    self.base_learning_rate = base_learning_rate
    self.num_examples = num_examples
    self.train_batch_size = train_batch_size
    self.warmup_epochs = warmup_epochs
    self.total_steps = total_steps
    self.learning_rate_scaling = learning_rate_scaling
    self.name = name
    self.scaled_learning_rate = scaled_learning_rate(
        base_learning_rate, train_batch_size, learning_rate_scaling)
    self.warmup_steps = int(round(warmup_epochs * num_examples // train_batch_size))
    # Official: CosineDecay(S, T - W), which is NaN when T <= W; the decay branch is
    # never reached then (step < T <= W), so a floor of 1 changes no used value.
    self.decay_steps = max(total_steps - self.warmup_steps, 1)

  def __call__(self, step: Any) -> tf.Tensor:
    with tf.name_scope(self.name or 'WarmUpAndCosineDecay'):
      step = tf.cast(step, tf.float32)
      scaled = tf.constant(self.scaled_learning_rate, tf.float32)
      if self.warmup_steps:
        warmup_learning_rate = step / float(self.warmup_steps) * scaled
      else:
        warmup_learning_rate = scaled
      decay_step = tf.minimum(step - float(self.warmup_steps), float(self.decay_steps))
      cosine = 0.5 * (1.0 + tf.cos(math.pi * decay_step / float(self.decay_steps)))
      return tf.where(step < float(self.warmup_steps), warmup_learning_rate, scaled * cosine)

  def get_config(self) -> dict[str, Any]:
    return {
        'base_learning_rate': self.base_learning_rate,
        'num_examples': self.num_examples,
        'train_batch_size': self.train_batch_size,
        'warmup_epochs': self.warmup_epochs,
        'total_steps': self.total_steps,
        'learning_rate_scaling': self.learning_rate_scaling,
        'name': self.name,
    }


def total_train_steps(train_config: config_lib.TrainConfig, num_train_examples: int) -> int:
  """`train_steps`, else num_train_examples * train_epochs // train_batch_size + 1."""
  return train_config.train_steps or (
      num_train_examples * train_config.train_epochs // train_config.train_batch_size + 1)


def checkpoint_interval_steps(train_config: config_lib.TrainConfig,
                              num_train_examples: int) -> int:
  """Steps between checkpoints: `checkpoint_steps`, else epochs * steps per epoch.

  Steps per epoch are round(num_train_examples / train_batch_size) as the official
  run.py; the result is at least 1 (the official code can get 0 on tiny data sets and
  then loops forever).
  """
  if train_config.checkpoint_steps:
    return train_config.checkpoint_steps
  epoch_steps = int(round(num_train_examples / train_config.train_batch_size))
  return max(1, train_config.checkpoint_epochs * epoch_steps)


def build_optimizer(optim_config: config_lib.OptimConfig,
                    learning_rate: LearningRate) -> keras.optimizers.Optimizer:
  """lars -> LARS, momentum -> SGD with Nesterov momentum, adam -> Adam.

  Only LARS applies `weight_decay` itself; for the others add `weight_decay_loss`.
  """
  if optim_config.optimizer == 'lars':
    return LARS(learning_rate, momentum=optim_config.momentum,
                weight_decay=optim_config.weight_decay,
                exclude_from_weight_decay=config_lib.DEFAULT_LARS_EXCLUDES)
  if optim_config.optimizer == 'momentum':
    return keras.optimizers.SGD(learning_rate, momentum=optim_config.momentum, nesterov=True)
  if optim_config.optimizer == 'adam':
    return keras.optimizers.Adam(learning_rate)
  raise ValueError(f'--optimizer={optim_config.optimizer!r} is unknown; '
                   f'use one of {config_lib.OPTIMIZERS}.')


def weight_decay_loss(model_or_variables: Union[keras.Model, Iterable[Any]],
                      optim_config: config_lib.OptimConfig,
                      adjust_per_optimizer: bool = True) -> tf.Tensor:
  """L2 weight-decay term added to the loss, as official `add_weight_decay`.

  With LARS (and `adjust_per_optimizer`) the optimizer decays everything else, so only
  the supervised head's non-bias variables (path contains `head_supervised`, not
  `bias`) get weight_decay * sum(l2_loss). Otherwise all variables whose path does not
  contain `batch_normalization` do. tf.nn.l2_loss(w) = sum(w ** 2) / 2.

  Args:
    model_or_variables: a model (its trainable_variables are used) or the variables.
    optim_config: supplies `optimizer` and `weight_decay`.
    adjust_per_optimizer: False: the non-LARS rule whatever the optimizer (the
      official code passes True in training and eval).

  Returns:
    float32 scalar (0.0 when no variable qualifies).
  """
  if hasattr(model_or_variables, 'trainable_variables'):
    variables = list(model_or_variables.trainable_variables)
  else:
    variables = list(model_or_variables)
  if adjust_per_optimizer and optim_config.optimizer == 'lars':
    selected = [v for v in variables
                if 'head_supervised' in variable_path(v) and 'bias' not in variable_path(v)]
  else:
    selected = [v for v in variables if 'batch_normalization' not in variable_path(v)]
  if not selected:
    return tf.constant(0.0, tf.float32)
  l2_losses = [tf.nn.l2_loss(tf.cast(tf.convert_to_tensor(v), tf.float32)) for v in selected]
  return optim_config.weight_decay * tf.add_n(l2_losses)
