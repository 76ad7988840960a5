"""Projection head and supervised (linear) head, as in google-research/simclr tf2."""

from __future__ import annotations

import keras
import tensorflow as tf

from tf_simclr.config import PROJ_HEAD_MODES
from tf_simclr.models.resnet import batch_norm, track_for_checkpoints


class ProjectionHead(keras.layers.Layer):
  """The contrastive projection head g(.).

  Modes (official semantics; its `linear` and `none` crash, here they work):
    none: the encoder output is the projection.
    linear: dense(out_dim, no bias) + BN(center=False).
    nonlinear: num_layers dense layers: the middle ones dense(input width, no bias) +
      BN(center=True) + ReLU, the last dense(out_dim, no bias) + BN(center=False).

  Calling it returns `(projection, hiddens)`: `hiddens[0]` is the input (encoder output)
  and `hiddens[j]` the output of layer j, so `hiddens[ft_proj_selector]` is the layer that
  fine-tuning reads (0 = encoder output, -1 = last).
  """

  def __init__(self,
               mode: str = 'nonlinear',
               num_layers: int = 3,
               out_dim: int = 128,
               batch_norm_decay: float = 0.9,
               global_bn: bool = True,
               name: str = 'projection_head',
               **kwargs):
    super().__init__(name=name, **kwargs)
    if mode not in PROJ_HEAD_MODES:
      raise ValueError(f'--proj_head_mode={mode!r} is unknown; use one of {PROJ_HEAD_MODES}.')
    if mode == 'nonlinear' and num_layers < 1:
      raise ValueError(f'--num_proj_layers={num_layers} must be >= 1 with '
                       '--proj_head_mode=nonlinear.')
    if out_dim < 1:
      raise ValueError(f'--proj_out_dim={out_dim} must be > 0.')
    self.mode = mode
    self.num_layers = num_layers
    self.out_dim = out_dim
    self.batch_norm_decay = batch_norm_decay
    self.global_bn = global_bn
    self.dense_layers: list[keras.layers.Dense] = []
    self.bn_layers: list[keras.layers.Layer] = []

  @property
  def num_hiddens(self) -> int:
    """Length of the returned `hiddens` list (valid ft_proj_selector: -n..n-1)."""
    return 1 + {'none': 0, 'linear': 1, 'nonlinear': self.num_layers}[self.mode]

  def hidden_dims(self, input_dim: int) -> list[int]:
    """Width of each entry of `hiddens` for an input of width `input_dim`."""
    return [input_dim] + [input_dim] * (self.num_hiddens - 2) + (
        [self.out_dim] if self.num_hiddens > 1 else [])

  def build(self, input_shape):
    input_dim = int(input_shape[-1])
    if self.mode == 'linear':
      specs = [('linear', self.out_dim, False)]
    elif self.mode == 'nonlinear':
      specs = [(f'nonlinear_{j}', input_dim if j < self.num_layers - 1 else self.out_dim,
                j < self.num_layers - 1) for j in range(self.num_layers)]
    else:
      specs = []
    width = input_dim
    for prefix, units, center in specs:
      dense = keras.layers.Dense(
          units, use_bias=False,
          kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
          name=f'{prefix}_dense')
      dense.build((None, width))
      bn = batch_norm(momentum=self.batch_norm_decay, synchronized=self.global_bn,
                      center=center, name=f'{prefix}_batch_normalization')
      bn.build((None, units))
      self.dense_layers.append(dense)
      self.bn_layers.append(bn)
      width = units
    track_for_checkpoints(self, self.dense_layers + self.bn_layers)

  def call(self, inputs, training=None):
    hiddens = [inputs]
    for j, (dense, bn) in enumerate(zip(self.dense_layers, self.bn_layers)):
      hidden = bn(dense(hiddens[-1]), training=training)
      if self.mode == 'nonlinear' and j < self.num_layers - 1:
        hidden = tf.nn.relu(hidden)
      hiddens.append(hidden)
    return hiddens[-1], hiddens

  def compute_output_shape(self, input_shape):
    dims = self.hidden_dims(int(input_shape[-1]))
    hidden_shapes = [(input_shape[0], dim) for dim in dims]
    return hidden_shapes[-1], hidden_shapes

  def get_config(self):
    return {**super().get_config(), 'mode': self.mode, 'num_layers': self.num_layers,
            'out_dim': self.out_dim, 'batch_norm_decay': self.batch_norm_decay,
            'global_bn': self.global_bn}


class SupervisedHead(keras.layers.Layer):
  """Linear classifier: dense(num_classes) with bias, N(0, 0.01) or zero kernel init.

  Its variable paths contain 'head_supervised', which optimizers use to give it plain L2
  weight decay and no LARS adaptation.
  """

  def __init__(self, num_classes: int, zero_init: bool = False, name: str = 'head_supervised',
               **kwargs):
    if 'head_supervised' not in name:
      raise ValueError(f'SupervisedHead name {name!r} must contain "head_supervised".')
    super().__init__(name=name, **kwargs)
    if num_classes < 1:
      raise ValueError(f'The supervised head needs num_classes >= 1, got {num_classes}.')
    self.num_classes = num_classes
    self.zero_init = zero_init
    self.dense = keras.layers.Dense(
        num_classes,
        kernel_initializer=('zeros' if zero_init else
                            keras.initializers.RandomNormal(stddev=0.01)),
        name='dense')

  def build(self, input_shape):
    self.dense.build(input_shape)

  def call(self, inputs):
    return self.dense(inputs)

  def reset_to_zeros(self) -> None:
    """Sets kernel and bias to 0 (`--zero_init_logits_layer` after a checkpoint restore)."""
    for variable in self.dense.weights:
      variable.assign(tf.zeros(variable.shape, variable.dtype))

  def compute_output_shape(self, input_shape):
    return tuple(input_shape[:-1]) + (self.num_classes,)

  def get_config(self):
    return {**super().get_config(), 'num_classes': self.num_classes,
            'zero_init': self.zero_init}
