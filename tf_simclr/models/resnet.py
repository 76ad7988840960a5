"""ResNet encoders (v1 post-activation) as in google-research/simclr `tf2/resnet.py`.

Depths 18/34 use basic blocks, 50/101/152/200 bottleneck blocks; widths scale all
channels. `sk_ratio > 0` gives the SimCLRv2 variant: selective-kernel 3x3 convs in
bottleneck blocks, a ResNet-D stem (three 3x3 convs) and ResNet-D projection shortcuts
(average pool, then a stride-1 1x1 conv). `se_ratio > 0` adds squeeze-and-excitation.

`build_resnet` returns a functional `keras.Model` mapping images [B, H, W, 3] to a dict
of endpoints. Every BatchNormalization comes from `batch_norm`, so a faster BN can be
swapped in at one place.
"""

from __future__ import annotations

import math
from typing import ContextManager, Sequence

import keras
import tensorflow as tf

from tf_simclr.models import fast_conv

BATCH_NORM_EPSILON = 1e-5
SK_MIN_DIM = 32

# depth -> (block kind, blocks per group).
RESNET_SPECS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ('basic', (2, 2, 2, 2)),
    34: ('basic', (3, 4, 6, 3)),
    50: ('bottleneck', (3, 4, 6, 3)),
    101: ('bottleneck', (3, 4, 23, 3)),
    152: ('bottleneck', (3, 8, 36, 3)),
    200: ('bottleneck', (3, 24, 36, 3)),
}

ENDPOINT_NAMES = ('initial_conv', 'initial_max_pool', 'block_group1', 'block_group2',
                  'block_group3', 'block_group4', 'final_avg_pool')


def track_for_checkpoints(owner: keras.layers.Layer,
                          layers: Sequence[keras.layers.Layer]) -> None:
  """Makes sublayers held in a list visible to `tf.train.Checkpoint`.

  Keras 3 wraps list attributes in its own TrackedList, which TensorFlow's object-based
  checkpointing does not follow; an attribute per sublayer (named after it) is followed.
  """
  for layer in layers:
    setattr(owner, layer.name, layer)


def batch_norm(*,
               momentum: float,
               synchronized: bool,
               center: bool = True,
               zero_init: bool = False,
               name: str = 'batch_normalization') -> keras.layers.Layer:
  """The one BatchNormalization constructor of the models (epsilon 1e-5, last axis).

  Args:
    momentum: moving-average decay (`--batch_norm_decay`).
    synchronized: compute batch statistics over all replicas (`--global_bn`).
    center: whether to learn a beta offset.
    zero_init: start gamma at 0 (last BN of a residual branch).
    name: layer name; must contain 'batch_normalization' so optimizers can exclude its
      variables from weight decay by `.path`.
  """
  if 'batch_normalization' not in name:
    raise ValueError(f'BN layer name {name!r} must contain "batch_normalization".')
  # A keras.layers.BatchNormalization computed with fused kernels (bench/, issue 6).
  from tf_simclr.models.fast_batch_norm import FusedBatchNormalization  # pylint: disable=g-import-not-at-top
  return FusedBatchNormalization(
      axis=-1,
      momentum=momentum,
      epsilon=BATCH_NORM_EPSILON,
      center=center,
      scale=True,
      gamma_initializer='zeros' if zero_init else 'ones',
      synchronized=synchronized,
      name=name)


class FixedPaddingConv2D(keras.layers.Conv2D):
  """Bias-free conv with the official padding: 'same' at stride 1, else pad + 'valid'.

  With stride > 1 the input is zero-padded by (k - 1) // 2 before and the rest after,
  independent of the input size (unlike 'same', whose split depends on it). On CPU the
  input gradient is computed by forward convolutions (`fast_conv.conv2d`).
  """

  def __init__(self, filters: int, kernel_size: int, strides: int = 1, **kwargs):
    super().__init__(
        filters=filters,
        kernel_size=kernel_size,
        strides=strides,
        padding='same' if strides == 1 else 'valid',
        use_bias=False,
        kernel_initializer=keras.initializers.VarianceScaling(),
        **kwargs)
    pad_total = kernel_size - 1
    self._pad_begin = pad_total // 2
    self._pad_end = pad_total - self._pad_begin

  def call(self, inputs):
    # tf.pad + conv (or 'same'), with a faster input gradient on CPU (fast_conv).
    return fast_conv.conv2d(tf.convert_to_tensor(inputs), tf.convert_to_tensor(self.kernel),
                            self.strides[0], kernel_variable=self.kernel)

  def compute_output_shape(self, input_shape):
    batch, height, width, _ = input_shape
    if self.strides[0] == 1:
      return (batch, height, width, self.filters)
    stride, kernel = self.strides[0], self.kernel_size[0]
    pad_total = self._pad_begin + self._pad_end

    def out(size):
      return None if size is None else (size + pad_total - kernel) // stride + 1

    return (batch, out(height), out(width), self.filters)


def reusing_gradient_kernels(model: keras.layers.Layer) -> ContextManager[None]:
  """`fast_conv.reusing_gradient_kernels` for every `FixedPaddingConv2D` of `model`.

  Enter it where the weights are final for the step (before a loop over micro-batches):
  their input-gradient kernels are computed there once, in each layer's compute dtype.
  """
  layers = [layer for layer in model._flatten_layers(include_self=True, recursive=True)  # pylint: disable=protected-access
            if isinstance(layer, FixedPaddingConv2D)]
  return fast_conv.reusing_gradient_kernels(
      [(layer.kernel, tf.cast(layer.kernel, layer.compute_dtype), layer.strides[0])
       for layer in layers])


def _conv1x1(filters: int, name: str, use_bias: bool = False) -> keras.layers.Conv2D:
  return keras.layers.Conv2D(
      filters, 1, use_bias=use_bias, kernel_initializer=keras.initializers.VarianceScaling(),
      name=name)


class SelectiveKernelConv2D(keras.layers.Layer):
  """Selective-kernel 3x3 conv (arXiv:1903.06586) as in SimCLRv2: two 3x3 streams.

  One conv makes both streams (2 * filters channels, then BN + ReLU); a squeeze of their
  sum gives per-channel softmax weights over the two streams.
  """

  def __init__(self, filters: int, strides: int, sk_ratio: float, *, batch_norm_decay: float,
               global_bn: bool, **kwargs):
    super().__init__(**kwargs)
    self.filters = filters
    self.conv = FixedPaddingConv2D(2 * filters, 3, strides, name='conv2d')
    self.bn = batch_norm(momentum=batch_norm_decay, synchronized=global_bn,
                         name='batch_normalization')
    mid_dim = max(int(filters * sk_ratio), SK_MIN_DIM)
    self.squeeze_conv = _conv1x1(mid_dim, name='squeeze_conv2d')
    self.squeeze_bn = batch_norm(momentum=batch_norm_decay, synchronized=global_bn,
                                 name='squeeze_batch_normalization')
    self.mixing_conv = _conv1x1(2 * filters, name='mixing_conv2d')

  def build(self, input_shape):
    self.conv.build(input_shape)
    self.bn.build(self.conv.compute_output_shape(input_shape))
    pooled_shape = (input_shape[0], 1, 1, self.filters)
    self.squeeze_conv.build(pooled_shape)
    self.squeeze_bn.build(self.squeeze_conv.compute_output_shape(pooled_shape))
    self.mixing_conv.build(self.squeeze_conv.compute_output_shape(pooled_shape))

  def call(self, inputs, training=None):
    streams = tf.nn.relu(self.bn(self.conv(inputs), training=training))
    stream_0, stream_1 = tf.split(streams, 2, axis=-1)  # 2 x [B, H, W, filters]
    pooled = tf.reduce_mean(stream_0 + stream_1, axis=[1, 2], keepdims=True)  # [B, 1, 1, f]
    squeezed = tf.nn.relu(self.squeeze_bn(self.squeeze_conv(pooled), training=training))
    logit_0, logit_1 = tf.split(self.mixing_conv(squeezed), 2, axis=-1)  # 2 x [B, 1, 1, f]
    # Softmax over the two streams: weight_0 = e^l0 / (e^l0 + e^l1) = sigmoid(l0 - l1).
    weight_0 = tf.sigmoid(logit_0 - logit_1)
    return stream_1 + weight_0 * (stream_0 - stream_1)

  def compute_output_shape(self, input_shape):
    shape = self.conv.compute_output_shape(input_shape)
    return shape[:-1] + (self.filters,)


class SqueezeExcitation(keras.layers.Layer):
  """Squeeze-and-excitation (arXiv:1709.01507); convs with biases, as the official."""

  def __init__(self, filters: int, se_ratio: float, **kwargs):
    super().__init__(**kwargs)
    self.reduce_conv = _conv1x1(max(1, int(filters * se_ratio)), name='se_reduce', use_bias=True)
    self.expand_conv = None

  def build(self, input_shape):
    pooled_shape = (input_shape[0], 1, 1, input_shape[-1])
    self.reduce_conv.build(pooled_shape)
    self.expand_conv = _conv1x1(input_shape[-1], name='se_expand', use_bias=True)
    self.expand_conv.build(self.reduce_conv.compute_output_shape(pooled_shape))

  def call(self, inputs):
    squeezed = tf.reduce_mean(inputs, axis=[1, 2], keepdims=True)  # [B, 1, 1, C]
    excitation = self.expand_conv(tf.nn.relu(self.reduce_conv(squeezed)))
    return tf.sigmoid(excitation) * inputs

  def compute_output_shape(self, input_shape):
    return input_shape


class _ResidualBlockBase(keras.layers.Layer):
  """Shared shortcut / SE / output logic of basic and bottleneck blocks."""

  expansion = 1

  def __init__(self, filters: int, strides: int, use_projection: bool, *, sk_ratio: float,
               se_ratio: float, batch_norm_decay: float, global_bn: bool, **kwargs):
    super().__init__(**kwargs)
    self.filters = filters
    self.strides = strides
    self._bn_args = dict(momentum=batch_norm_decay, synchronized=global_bn)
    self.shortcut_layers: list[keras.layers.Layer] = []
    filters_out = self.expansion * filters
    if use_projection:
      if sk_ratio > 0:  # ResNet-D shortcut (arXiv:1812.01187): average pool, 1x1 conv.
        if strides > 1:
          self.shortcut_layers.append(keras.layers.ZeroPadding2D(((0, 1), (0, 1)),
                                                                 name='shortcut_padding'))
        self.shortcut_layers.append(
            keras.layers.AveragePooling2D(2, strides, padding='same' if strides == 1 else 'valid',
                                          name='shortcut_average_pooling'))
        self.shortcut_layers.append(FixedPaddingConv2D(filters_out, 1, 1, name='shortcut_conv2d'))
      else:
        self.shortcut_layers.append(
            FixedPaddingConv2D(filters_out, 1, strides, name='shortcut_conv2d'))
      self.shortcut_layers.append(batch_norm(name='shortcut_batch_normalization', **self._bn_args))
    self.se = SqueezeExcitation(filters, se_ratio, name='se') if se_ratio > 0 else None
    self.residual_layers: list[keras.layers.Layer] = []  # Filled by subclasses.
    self.relu_after: set[int] = set()  # Indices of residual layers followed by ReLU.

  def build(self, input_shape):
    track_for_checkpoints(self, self.shortcut_layers + self.residual_layers)
    shape = input_shape
    for layer in self.shortcut_layers:
      layer.build(shape)
      shape = layer.compute_output_shape(shape)
    shape = input_shape
    for layer in self.residual_layers:
      layer.build(shape)
      shape = layer.compute_output_shape(shape)
    if self.se is not None:
      self.se.build(shape)

  def call(self, inputs, training=None):
    shortcut = inputs
    for layer in self.shortcut_layers:
      if isinstance(layer, keras.layers.BatchNormalization):
        shortcut = layer(shortcut, training=training)
      else:
        shortcut = layer(shortcut)
    net = inputs
    for index, layer in enumerate(self.residual_layers):
      if isinstance(layer, (keras.layers.BatchNormalization, SelectiveKernelConv2D)):
        net = layer(net, training=training)
      else:
        net = layer(net)
      if index in self.relu_after:
        net = tf.nn.relu(net)
    if self.se is not None:
      net = self.se(net)
    return tf.nn.relu(net + shortcut)

  def compute_output_shape(self, input_shape):
    shape = input_shape
    for layer in self.residual_layers:
      shape = layer.compute_output_shape(shape)
    return shape


class ResidualBlock(_ResidualBlockBase):
  """Basic block: 3x3 conv, BN, ReLU, 3x3 conv, BN (gamma 0), add, ReLU."""

  expansion = 1

  def __init__(self, filters: int, strides: int, use_projection: bool = False, **kwargs):
    super().__init__(filters, strides, use_projection, **kwargs)
    self.residual_layers = [
        FixedPaddingConv2D(filters, 3, strides, name='conv2d_0'),
        batch_norm(name='batch_normalization_0', **self._bn_args),
        FixedPaddingConv2D(filters, 3, 1, name='conv2d_1'),
        batch_norm(name='batch_normalization_1', zero_init=True, **self._bn_args),
    ]
    self.relu_after = {1}


class BottleneckBlock(_ResidualBlockBase):
  """Bottleneck: 1x1, 3x3 (selective kernel when sk_ratio > 0), 1x1 (4x filters)."""

  expansion = 4

  def __init__(self, filters: int, strides: int, use_projection: bool = False, *,
               sk_ratio: float, **kwargs):
    super().__init__(filters, strides, use_projection, sk_ratio=sk_ratio, **kwargs)
    layers = [
        FixedPaddingConv2D(filters, 1, 1, name='conv2d_0'),
        batch_norm(name='batch_normalization_0', **self._bn_args),
    ]
    relu_after = {1}
    if sk_ratio > 0:
      # Includes its own BN + ReLU.
      layers.append(SelectiveKernelConv2D(filters, strides, sk_ratio, name='sk_conv2d_1',
                                          batch_norm_decay=self._bn_args['momentum'],
                                          global_bn=self._bn_args['synchronized']))
    else:
      layers += [
          FixedPaddingConv2D(filters, 3, strides, name='conv2d_1'),
          batch_norm(name='batch_normalization_1', **self._bn_args),
      ]
      relu_after.add(3)
    layers += [
        FixedPaddingConv2D(4 * filters, 1, 1, name='conv2d_2'),
        batch_norm(name='batch_normalization_2', zero_init=True, **self._bn_args),
    ]
    self.residual_layers = layers
    self.relu_after = relu_after


class BlockGroup(keras.layers.Layer):
  """A stage of residual blocks; the first one projects the shortcut and strides."""

  def __init__(self, block_kind: str, filters: int, num_blocks: int, strides: int, *,
               sk_ratio: float, se_ratio: float, batch_norm_decay: float, global_bn: bool,
               stop_input_gradient: bool = False, **kwargs):
    super().__init__(**kwargs)
    # Inside the layer rather than a `keras.ops.stop_gradient` node in the functional
    # graph: such a node shifts the model's tracked layer indices, and a pretraining
    # checkpoint would then no longer restore into a `--fine_tune_after_block` model.
    self.stop_input_gradient = stop_input_gradient
    block_class = BottleneckBlock if block_kind == 'bottleneck' else ResidualBlock
    block_args = dict(sk_ratio=sk_ratio, se_ratio=se_ratio, batch_norm_decay=batch_norm_decay,
                      global_bn=global_bn)
    self.blocks = [
        block_class(filters, strides if index == 0 else 1, use_projection=index == 0,
                    name=f'block_{index}', **block_args)
        for index in range(num_blocks)
    ]
    track_for_checkpoints(self, self.blocks)

  def build(self, input_shape):
    shape = input_shape
    for block in self.blocks:
      block.build(shape)
      shape = block.compute_output_shape(shape)

  def call(self, inputs, training=None):
    if self.stop_input_gradient:
      inputs = tf.stop_gradient(inputs)
    for block in self.blocks:
      inputs = block(inputs, training=training)
    return inputs

  def compute_output_shape(self, input_shape):
    shape = input_shape
    for block in self.blocks:
      shape = block.compute_output_shape(shape)
    return shape


def build_resnet(depth: int,
                 width_multiplier: int = 1,
                 *,
                 sk_ratio: float = 0.0,
                 se_ratio: float = 0.0,
                 cifar_stem: bool = False,
                 batch_norm_decay: float = 0.9,
                 global_bn: bool = True,
                 fine_tune_after_block: int = -1,
                 name: str = 'resnet') -> keras.Model:
  """Builds a SimCLR ResNet encoder.

  Args:
    depth: 18, 34, 50, 101, 152 or 200.
    width_multiplier: channel multiplier (1x, 2x, 3x, 4x).
    sk_ratio: selective-kernel squeeze ratio; > 0 also selects the ResNet-D stem and
      shortcuts (SimCLRv2 uses 0.0625).
    se_ratio: squeeze-and-excitation ratio; 0 disables it.
    cifar_stem: 3x3 stride-1 stem conv without max-pool (small images).
    batch_norm_decay: BN moving-average momentum.
    global_bn: synchronize BN statistics across replicas.
    fine_tune_after_block: -1 trains everything; k in 0..4 freezes the stem and block
      groups 1..k (non-trainable, BN in inference mode) and stops gradients after them.
    name: model name.

  Returns:
    A functional model: images [B, H, W, 3] -> dict with 'initial_conv',
    'initial_max_pool', 'block_group1'..'block_group4' (feature maps) and
    'final_avg_pool' [B, C], C = 512 * width (basic) or 2048 * width (bottleneck).
  """
  if depth not in RESNET_SPECS:
    raise ValueError(f'--resnet_depth={depth} is not supported; use one of '
                     f'{tuple(RESNET_SPECS)}.')
  if width_multiplier < 1:
    raise ValueError(f'--width_multiplier={width_multiplier} must be >= 1.')
  if not -1 <= fine_tune_after_block <= 4:
    raise ValueError(f'--fine_tune_after_block={fine_tune_after_block} must be in -1..4.')
  # Variable paths start with the model name, e.g. 'resnet/block_group1/block_0/...'.
  with keras.name_scope(name):
    block_kind, blocks_per_group = RESNET_SPECS[depth]
    bn_args = dict(momentum=batch_norm_decay, synchronized=global_bn)
    width = 64 * width_multiplier

    images = keras.Input(shape=(None, None, 3), name='images')
    endpoints = {}
    stem_layers: list[keras.layers.Layer] = []
    if cifar_stem:
      stem_conv = FixedPaddingConv2D(width, 3, 1, name='stem_conv2d')
      stem_layers.append(stem_conv)
      net = stem_conv(images)
    elif sk_ratio > 0:  # ResNet-D stem: three 3x3 convs.
      stem_layers += [
          FixedPaddingConv2D(width // 2, 3, 2, name='stem_conv2d_0'),
          batch_norm(name='stem_batch_normalization_0', **bn_args),
          FixedPaddingConv2D(width // 2, 3, 1, name='stem_conv2d_1'),
          batch_norm(name='stem_batch_normalization_1', **bn_args),
          FixedPaddingConv2D(width, 3, 1, name='stem_conv2d_2'),
      ]
      net = images
      for layer in stem_layers:
        net = layer(net)
        if isinstance(layer, keras.layers.BatchNormalization):
          net = keras.layers.ReLU(name=layer.name.replace('batch_normalization', 'relu'))(net)
    else:
      stem_conv = FixedPaddingConv2D(width, 7, 2, name='stem_conv2d')
      stem_layers.append(stem_conv)
      net = stem_conv(images)
    endpoints['initial_conv'] = net
    stem_bn = batch_norm(name='stem_batch_normalization', **bn_args)
    stem_layers.append(stem_bn)
    net = keras.layers.ReLU(name='stem_relu')(stem_bn(net))
    if not cifar_stem:
      net = keras.layers.MaxPooling2D(3, 2, padding='same', name='stem_max_pool')(net)
    endpoints['initial_max_pool'] = net

    groups = []
    for index, num_blocks in enumerate(blocks_per_group):
      # Frozen below: no gradient flows into the stem / earlier groups.
      group = BlockGroup(block_kind, width * 2**index, num_blocks, 1 if index == 0 else 2,
                         sk_ratio=sk_ratio, se_ratio=se_ratio, batch_norm_decay=batch_norm_decay,
                         global_bn=global_bn, stop_input_gradient=fine_tune_after_block == index,
                         name=f'block_group{index + 1}')
      groups.append(group)
      net = group(net)
      endpoints[f'block_group{index + 1}'] = net
    if fine_tune_after_block == 4:  # After the last layer with weights: no index shift.
      net = keras.ops.stop_gradient(net)
      endpoints['block_group4'] = net
    endpoints['final_avg_pool'] = keras.layers.GlobalAveragePooling2D(name='final_avg_pool')(net)

    if fine_tune_after_block >= 0:
      for layer in stem_layers + groups[:fine_tune_after_block]:
        layer.trainable = False
    return keras.Model(images, endpoints, name=name)


def output_channels(depth: int, width_multiplier: int = 1) -> int:
  """Channels of 'final_avg_pool' for a depth and width."""
  block_kind, _ = RESNET_SPECS[depth]
  return 512 * width_multiplier * (4 if block_kind == 'bottleneck' else 1)


def count_params(model: keras.Model, trainable_only: bool = True) -> int:
  """Number of (trainable) scalars in a model's variables."""
  variables = model.trainable_variables if trainable_only else model.variables
  return sum(math.prod(int(dim) for dim in variable.shape) for variable in variables)


def count_encoder_params(depth: int,
                         width_multiplier: int = 1,
                         *,
                         sk_ratio: float = 0.0,
                         se_ratio: float = 0.0,
                         cifar_stem: bool = False,
                         trainable_only: bool = True) -> int:
  """Parameter count of `build_resnet(...)` without allocating its weights.

  Builds the very same model inside a `keras.StatelessScope` that defers variable
  initialization, counts the variables' shapes, then drops the deferred initializers so
  the weights are never allocated (R152-3x+SK, 795M parameters, counts in ~1 s).
  """
  with keras.StatelessScope(initialize_variables=False):
    model = build_resnet(depth, width_multiplier, sk_ratio=sk_ratio, se_ratio=se_ratio,
                         cifar_stem=cifar_stem)
  total = count_params(model, trainable_only)
  # Keras keeps deferred variables in a global list and would initialize (allocate) them
  # at the next top-level StatelessScope exit (e.g. any functional-model construction).
  from keras.src.backend.common import global_state  # pylint: disable=g-import-not-at-top
  pending = global_state.get_global_attribute('uninitialized_variables') or []
  own = {id(variable) for variable in model.variables}
  pending[:] = [variable for variable in pending if id(variable) not in own]
  return total
