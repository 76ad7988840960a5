"""fast_conv.conv2d: outputs and gradients equal a NumPy float64 reference and TF's own.

The float32 cases compare against NumPy, not against TensorFlow: with the oneDNN CPU
kernels on (tf_simclr turns them on), TF 2.21's own kernel gradient of a 1x1 stride-2
VALID convolution is wrong on some CPUs for some channel counts (e.g. 5 input channels
on an 8x8 map: off by up to 5.2 where values are ~10); ours and the stock side of the
kernel choice (`fast_conv.stock_conv2d`) are right.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_simclr.models import fast_conv
from tf_simclr.models import resnet


def _reference(inputs, kernel, stride):
  """The official conv with TF's registered gradients (tf.pad + VALID / SAME)."""
  if stride == 1:
    return tf.nn.conv2d(inputs, kernel, 1, 'SAME')
  pad_total = kernel.shape[0] - 1
  begin = pad_total // 2
  padded = tf.pad(inputs, [[0, 0], [begin, pad_total - begin], [begin, pad_total - begin],
                           [0, 0]])
  return tf.nn.conv2d(padded, kernel, stride, 'VALID')


def _numpy_reference(inputs, kernel, stride, upstream):
  """float64 (outputs, d_inputs, d_kernel) of the fixed-padding conv, tap by tap.

  Pads (k - 1) // 2 before and the rest after (TF's 'SAME' at stride 1), then for each
  kernel tap (i, j): outputs += patch_ij @ kernel[i, j], d_kernel[i, j] = patch_ij^T dy,
  d_padded[patch_ij positions] += dy @ kernel[i, j]^T.
  """
  inputs, kernel, upstream = (np.asarray(v, np.float64) for v in (inputs, kernel, upstream))
  kernel_height, kernel_width = kernel.shape[:2]
  top, left = (kernel_height - 1) // 2, (kernel_width - 1) // 2
  padded = np.pad(inputs, [(0, 0), (top, kernel_height - 1 - top),
                           (left, kernel_width - 1 - left), (0, 0)])
  out_height = (padded.shape[1] - kernel_height) // stride + 1
  out_width = (padded.shape[2] - kernel_width) // stride + 1
  outputs = np.zeros([inputs.shape[0], out_height, out_width, kernel.shape[3]])
  d_padded, d_kernel = np.zeros_like(padded), np.zeros_like(kernel)
  for i in range(kernel_height):
    for j in range(kernel_width):
      rows = slice(i, i + stride * (out_height - 1) + 1, stride)
      cols = slice(j, j + stride * (out_width - 1) + 1, stride)
      patch = padded[:, rows, cols, :]  # [B, Ho, Wo, C_in]
      outputs += np.einsum('nhwc,co->nhwo', patch, kernel[i, j])
      d_kernel[i, j] = np.einsum('nhwc,nhwo->co', patch, upstream)
      d_padded[:, rows, cols, :] += np.einsum('nhwo,co->nhwc', upstream, kernel[i, j])
  d_inputs = d_padded[:, top:top + inputs.shape[1], left:left + inputs.shape[2], :]
  return outputs, d_inputs, d_kernel


def _gradients(function, inputs, kernel, stride, upstream):
  with tf.GradientTape() as tape:
    tape.watch([inputs, kernel])
    outputs = function(inputs, kernel, stride)
    loss = tf.reduce_sum(tf.cast(outputs, tf.float32) * upstream)
  return (outputs,) + tuple(tape.gradient(loss, [inputs, kernel]))


# (height, width, kernel, stride): every conv of the ResNets (3x3 / 1x1 at stride 1 and 2,
# 7x7 stride-2 stem), odd and even sizes, spatial sizes down to 1, and other kernels.
CASES = [(8, 8, 3, 1), (5, 7, 3, 1), (1, 1, 3, 1), (6, 6, 1, 1), (8, 8, 3, 2), (7, 9, 3, 2),
         (8, 8, 1, 2), (5, 5, 1, 2), (2, 2, 3, 2), (1, 1, 3, 2), (12, 11, 7, 2), (9, 9, 5, 3),
         (6, 5, 2, 1), (7, 6, 4, 2),  # Even kernels: asymmetric padding.
         (4, 4, 3, 1), (2, 2, 3, 1), (1, 1, 1, 1), (2, 3, 2, 1),  # Small-map kernel gradient.
         (2, 1, 7, 2), (1, 2, 4, 2), (2, 2, 2, 2), (1, 1, 4, 1)]  # One-pixel outputs.


@pytest.mark.parametrize('height,width,kernel_size,stride', CASES)
def test_gradients_equal_numpy_reference_float32(height, width, kernel_size, stride):
  generator = tf.random.Generator.from_seed(kernel_size * 100 + height * 10 + stride)
  inputs = generator.normal([3, height, width, 5])
  kernel = generator.normal([kernel_size, kernel_size, 5, 4])
  upstream = generator.normal(_reference(inputs, kernel, stride).shape)
  expected = _numpy_reference(inputs, kernel, stride, upstream)
  assert fast_conv.uses_fast_gradient(inputs, stride)
  got = tf.function(lambda x, w: _gradients(fast_conv.conv2d, x, w, stride, upstream))(
      inputs, kernel)
  for name, value, reference in zip(('outputs', 'd_inputs', 'd_kernel'), got, expected):
    assert value.shape == reference.shape, name
    np.testing.assert_allclose(value.numpy(), reference, rtol=1e-5, atol=1e-4,
                               err_msg=name)


@pytest.mark.parametrize('height,width,kernel_size,stride,channels',
                         [case + (5,) for case in CASES if case[3] > 1] +
                         # The small channel counts where oneDNN's 1x1 one fails on an
                         # AVX2 EPYC (right there for these kernels), the RGB stem.
                         [(16, 16, 7, 2, 3), (8, 8, 3, 2, 4), (16, 16, 3, 2, 7)] +
                         # 1x1 at stride 1: the matmul, also on small maps.
                         [(6, 6, 1, 1, 5), (5, 7, 1, 1, 3), (2, 3, 1, 1, 4)])
def test_pre_padded_kernel_gradient_equals_numpy_reference(height, width, kernel_size,
                                                           stride, channels):
  """Our path's second kernel gradient: for 1x1 kernels a matmul of the (subsampled)
  input, for larger ones at stride > 1 oneDNN's on the pre-padded input."""
  generator = tf.random.Generator.from_seed(kernel_size * 100 + height * 10 + stride + 1)
  inputs = generator.normal([3, height, width, channels])
  kernel = generator.normal([kernel_size, kernel_size, channels, 4])
  upstream = generator.normal(_reference(inputs, kernel, stride).shape)
  expected = _numpy_reference(inputs, kernel, stride, upstream)

  def padded(x, w, conv_stride):
    return fast_conv.conv2d_with_fast_gradient(x, w, conv_stride, None, True)

  got = tf.function(lambda x, w: _gradients(padded, x, w, stride, upstream))(inputs, kernel)
  for name, value, reference in zip(('outputs', 'd_inputs', 'd_kernel'), got, expected):
    np.testing.assert_allclose(value.numpy(), reference, rtol=1e-5, atol=1e-4,
                               err_msg=name)


@pytest.mark.parametrize('height,width,kernel_size,stride,channels',
                         [case + (5,) for case in CASES] +
                         [(8, 8, 1, 2, 3), (16, 16, 1, 2, 4), (16, 16, 1, 2, 7),
                          (8, 8, 1, 2, 64)])
def test_stock_side_equals_numpy_reference(height, width, kernel_size, stride, channels):
  """The 'stock' side of the kernel choice (TF's gradients) is right too, including the
  1x1 strided convs where oneDNN's own 'VALID' kernel gradient is wrong on some CPUs
  (an AVX2 EPYC: 3, 4, 5, 7 input channels on 8x8 and 16x16 maps)."""
  generator = tf.random.Generator.from_seed(kernel_size * 100 + height * 10 + channels)
  inputs = generator.normal([3, height, width, channels])
  kernel = generator.normal([kernel_size, kernel_size, channels, 4])
  upstream = generator.normal(_reference(inputs, kernel, stride).shape)
  expected = _numpy_reference(inputs, kernel, stride, upstream)
  got = tf.function(lambda x, w: _gradients(fast_conv.stock_conv2d, x, w, stride,
                                            upstream))(inputs, kernel)
  for name, value, reference in zip(('outputs', 'd_inputs', 'd_kernel'), got, expected):
    np.testing.assert_allclose(value.numpy(), reference, rtol=1e-5, atol=1e-4,
                               err_msg=name)


def test_stock_side_is_what_conv2d_runs_where_stock_was_chosen():
  inputs, kernel = tf.ones([2, 8, 8, 5]), tf.ones([1, 1, 5, 4])
  key = fast_conv.conv_key(inputs.shape, kernel.shape, 2)
  previous = fast_conv.gradient_choices()
  try:
    fast_conv.set_gradient_choices({key: False})

    def gradient(x):
      with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(fast_conv.conv2d(x, kernel, 2))
      return tape.gradient(loss, x)

    graph = tf.function(gradient).get_concrete_function(tf.TensorSpec(inputs.shape)).graph
    types = {op.type for op in graph.get_operations()}
    for function in graph._functions.values():  # pylint: disable=protected-access
      types |= {node.op for node in function.definition.node_def}
    assert 'Conv2DBackpropInput' in types  # TF's input gradient: the stock side.
  finally:
    fast_conv.set_gradient_choices(*previous)


@pytest.mark.parametrize('kernel_size,stride', [(3, 1), (3, 2), (1, 2)])
def test_gradients_equal_tf_gradients_bfloat16(kernel_size, stride):
  generator = tf.random.Generator.from_seed(7)
  inputs = tf.cast(generator.normal([2, 8, 8, 16]), tf.bfloat16)
  kernel = tf.cast(generator.normal([kernel_size, kernel_size, 16, 8]), tf.bfloat16)
  upstream = generator.normal(_reference(inputs, kernel, stride).shape)
  expected = _gradients(_reference, inputs, kernel, stride, upstream)
  got = _gradients(fast_conv.conv2d, inputs, kernel, stride, upstream)
  for value, reference in zip(got, expected):
    assert value.dtype == tf.bfloat16
    # Both sum bf16 products; the order differs. bf16 keeps 8 bits of mantissa.
    scale = float(tf.reduce_max(tf.abs(tf.cast(reference, tf.float32))))
    np.testing.assert_allclose(tf.cast(value, tf.float32).numpy(),
                               tf.cast(reference, tf.float32).numpy(), atol=0.02 * scale)


@pytest.mark.parametrize('side', ['ours', 'ours_timed_tf', 'ours_timed_second', 'stock'])
@pytest.mark.parametrize('height,width,channels,kernel_size,stride',
                         [(8, 8, 5, 1, 2), (7, 9, 3, 1, 2), (16, 16, 64, 1, 2), (8, 8, 5, 3, 2),
                          (9, 7, 3, 7, 2), (8, 8, 5, 1, 1), (7, 5, 16, 1, 1)])
def test_kernel_gradient_bfloat16_equals_numpy_reference(
    side, height, width, channels, kernel_size, stride):
  """bf16: no explicit-padding (Eigen) Conv2DBackpropFilter, whatever the per-shape
  choice; on our side, untimed, no Conv2DBackpropFilter for 1x1 kernels (a matmul of
  the subsampled input; larger kernels at stride 2 oneDNN's on the padded input),
  while a timed choice of TF's kernel keeps oneDNN's at stride 1; the float64 gradient
  of the same bf16 values to bf16 rounding."""
  generator = tf.random.Generator.from_seed(channels * 10 + height)
  inputs = tf.cast(generator.normal([3, height, width, channels]), tf.bfloat16)
  kernel = tf.cast(generator.normal([kernel_size, kernel_size, channels, 4]) /
                   kernel_size, tf.bfloat16)
  upstream = tf.cast(tf.cast(generator.normal(_reference(inputs, kernel, stride).shape),
                             tf.bfloat16), tf.float32)
  expected = _numpy_reference(tf.cast(inputs, tf.float32), tf.cast(kernel, tf.float32),
                              stride, upstream)
  function = {
      'ours': fast_conv.conv2d_with_fast_gradient,  # No choice set: the default.
      'ours_timed_tf': lambda x, w, s: fast_conv.conv2d_with_fast_gradient(
          x, w, s, None, False),
      'ours_timed_second': lambda x, w, s: fast_conv.conv2d_with_fast_gradient(
          x, w, s, None, True),
      'stock': fast_conv.stock_conv2d}[side]
  traced = tf.function(lambda x, w: _gradients(function, x, w, stride, upstream))
  got = traced(inputs, kernel)
  for name, value, reference in zip(('outputs', 'd_inputs', 'd_kernel'), got, expected):
    assert value.dtype == tf.bfloat16, name
    scale = np.abs(reference).max()
    np.testing.assert_allclose(tf.cast(value, tf.float32).numpy(), reference,
                               atol=0.02 * scale, err_msg=name)
  graph = traced.get_concrete_function(inputs, kernel).graph
  paddings = [op.get_attr('padding') for op in graph.get_operations()
              if op.type == 'Conv2DBackpropFilter']
  for inner in graph._functions.values():  # pylint: disable=protected-access
    paddings += [node.attr['padding'].s for node in inner.definition.node_def
                 if node.op == 'Conv2DBackpropFilter']
  assert b'EXPLICIT' not in paddings, paddings
  if side == 'ours_timed_tf' and stride == 1:
    assert paddings == [b'SAME'], paddings  # oneDNN's, as timed.
  elif side != 'stock':
    assert (not paddings) if kernel_size == 1 else (paddings == [b'VALID']), paddings


def _gradient_op_types(spec, stride):
  kernel = tf.ones([3, 3, 3, 2])

  def gradient(x):
    with tf.GradientTape() as tape:
      tape.watch(x)
      loss = tf.reduce_sum(fast_conv.conv2d(x, kernel, stride))
    return tape.gradient(loss, x)

  graph = tf.function(gradient).get_concrete_function(spec).graph
  types = {op.type for op in graph.get_operations()}
  for function in graph._functions.values():  # pylint: disable=protected-access
    types |= {node.op for node in function.definition.node_def}
  return types


@pytest.mark.parametrize('height,width,kernel_size,stride',
                         [(1, 1, 3, 1), (1, 1, 1, 1), (2, 2, 3, 2), (2, 2, 1, 2), (2, 1, 7, 2)])
def test_one_pixel_outputs_are_one_matmul(height, width, kernel_size, stride):
  """The last ResNet stage at 32 px: no convolution op left, forward or backward."""
  kernel = tf.ones([kernel_size, kernel_size, 3, 2])
  assert fast_conv.output_is_one_pixel([4, height, width, 3], stride)

  def gradient(x):
    with tf.GradientTape() as tape:
      tape.watch(x)
      loss = tf.reduce_sum(fast_conv.conv2d(x, kernel, stride))
    return tape.gradient(loss, x)

  graph = tf.function(gradient).get_concrete_function(
      tf.TensorSpec([4, height, width, 3])).graph
  types = {op.type for op in graph.get_operations()}
  for function in graph._functions.values():  # pylint: disable=protected-access
    types |= {node.op for node in function.definition.node_def}
  assert 'MatMul' in types and not any(op.startswith('Conv2D') for op in types), types
  assert not fast_conv.output_is_one_pixel([4, 3, 2, 3], 2)
  assert not fast_conv.output_is_one_pixel([4, 2, 2, 3], 1)
  # Nothing to choose for the kernel gradient of a matmul: kernel_choice does not time it.
  assert not fast_conv.padded_filter_gradient_applies([4, 2, 2, 3], [3, 3, 3, 2], 2)
  assert fast_conv.padded_filter_gradient_applies([4, 4, 4, 3], [3, 3, 3, 2], 2)


@pytest.mark.parametrize('stride', [1, 2])
def test_backprop_input_kernel_is_gone_when_sizes_are_known(stride):
  assert 'Conv2DBackpropInput' not in _gradient_op_types(tf.TensorSpec([2, 8, 8, 3]), stride)


def test_unknown_spatial_size_at_stride_2_falls_back_to_tf_gradient():
  assert 'Conv2DBackpropInput' in _gradient_op_types(tf.TensorSpec([None, None, None, 3]), 2)
  # Stride 1 needs no sizes.
  assert 'Conv2DBackpropInput' not in _gradient_op_types(
      tf.TensorSpec([None, None, None, 3]), 1)


def test_switch_off_gives_plain_conv():
  inputs = tf.zeros([1, 4, 4, 3])
  try:
    fast_conv.set_fast_conv_gradient_enabled(False)
    assert not fast_conv.uses_fast_gradient(inputs, 1)
  finally:
    fast_conv.set_fast_conv_gradient_enabled(True)
  assert fast_conv.uses_fast_gradient(inputs, 1)


def _encoder_gradients(policy, weights, cifar_stem, images, fast):
  """Gradients of a ResNet-18 with these weights under `policy`, fast conv on/off."""
  previous = keras.config.dtype_policy()
  keras.config.set_dtype_policy(policy)
  fast_conv.set_fast_conv_gradient_enabled(fast)
  try:
    encoder = resnet.build_resnet(18, cifar_stem=cifar_stem)
    if weights is not None:
      encoder.set_weights(weights)

    @tf.function
    def gradients(x):
      with tf.GradientTape() as tape:
        features = encoder(x, training=True)['final_avg_pool']
        loss = tf.reduce_sum(tf.square(tf.cast(features, tf.float32)))
      return tape.gradient(loss, encoder.trainable_variables)

    values = gradients(images)
    return encoder.get_weights(), tf.concat([tf.reshape(v, [-1]) for v in values], 0)
  finally:
    fast_conv.set_fast_conv_gradient_enabled(True)
    keras.config.set_dtype_policy(previous)


@pytest.mark.parametrize('cifar_stem,size', [(True, 16), (False, 64)])
def test_resnet_gradients_with_and_without_fast_gradient(cifar_stem, size):
  """A whole ResNet-18: float32 gradients agree; bfloat16 ones are as close to them."""
  keras.utils.set_random_seed(1)
  images = tf.random.stateless_uniform([8, size, size, 3], seed=[1, 2])
  weights, plain = _encoder_gradients('float32', None, cifar_stem, images, fast=False)
  _, fast = _encoder_gradients('float32', weights, cifar_stem, images, fast=True)
  scale = float(tf.norm(plain))
  assert float(tf.norm(fast - plain)) <= 1e-5 * scale
  _, plain_bf16 = _encoder_gradients('mixed_bfloat16', weights, cifar_stem, images, fast=False)
  _, fast_bf16 = _encoder_gradients('mixed_bfloat16', weights, cifar_stem, images, fast=True)
  plain_error = float(tf.norm(plain_bf16 - plain)) / scale
  fast_error = float(tf.norm(fast_bf16 - plain)) / scale
  # bf16 rounding through 18 layers moves the gradient by 10-25% here (a random vector
  # would be off by ~140%); the fast gradient must not add to that.
  assert plain_error < 0.5 and fast_error < 1.25 * plain_error, (plain_error, fast_error)


@pytest.mark.parametrize('height,width,kernel_size,stride',
                         [(8, 8, 3, 1), (8, 8, 3, 2), (7, 9, 3, 2), (8, 8, 1, 2),
                          (12, 11, 7, 2), (9, 9, 5, 3), (7, 6, 4, 2)])
def test_reused_gradient_kernels_give_the_numpy_gradient(height, width, kernel_size, stride):
  """Gradient kernels computed once (`reusing_gradient_kernels`) and used by several
  backward passes give each pass the float64 reference gradient; replacing them by
  zeros zeroes the input gradient, so the reused tensors are the ones convolved."""
  generator = tf.random.Generator.from_seed(kernel_size * 31 + height + stride)
  variable = tf.Variable(generator.normal([kernel_size, kernel_size, 5, 4]))
  batches = [generator.normal([2, height, width, 5]) for _ in range(2)]

  def gradients_of_each(reused_value):
    @tf.function
    def run():
      kernels = [(variable, reused_value(variable), stride)]
      results = []
      with fast_conv.reusing_gradient_kernels(kernels):
        for inputs in batches:
          with tf.GradientTape() as tape:
            tape.watch(inputs)
            outputs = fast_conv.conv2d(inputs, tf.convert_to_tensor(variable), stride,
                                       kernel_variable=variable)
          upstream = tf.sin(outputs)  # Any fixed upstream gradient.
          results.append((upstream, tape.gradient(outputs, [inputs, variable],
                                                  output_gradients=upstream)))
      return results
    return run()

  for inputs, (upstream, (d_inputs, d_kernel)) in zip(
      batches, gradients_of_each(tf.convert_to_tensor)):
    _, expected_inputs, expected_kernel = _numpy_reference(inputs, variable, stride, upstream)
    np.testing.assert_allclose(d_inputs.numpy(), expected_inputs, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(d_kernel.numpy(), expected_kernel, rtol=1e-5, atol=1e-4)
  for _, (d_inputs, d_kernel) in gradients_of_each(tf.zeros_like):
    assert not np.any(d_inputs.numpy())
    assert np.any(d_kernel.numpy())


def test_resnet_reusing_gradient_kernels_covers_every_fixed_padding_conv():
  model = resnet.build_resnet(18, 1, cifar_stem=False)
  model(tf.zeros([1, 32, 32, 3]), training=False)
  convs = [layer for layer in model._flatten_layers()  # pylint: disable=protected-access
           if isinstance(layer, resnet.FixedPaddingConv2D)]
  # 17 convs of ResNet-18 plus the 1x1 shortcut of every group's first block (as official).
  assert len(convs) == 21
  with resnet.reusing_gradient_kernels(model):
    reused = fast_conv._reused_gradient_kernels  # pylint: disable=protected-access
    assert {id(layer.kernel) for layer in convs} == set(reused)
    for layer in convs:
      assert len(reused[id(layer.kernel)][1]) == layer.strides[0] ** 2
  assert fast_conv._reused_gradient_kernels is None  # pylint: disable=protected-access


@pytest.mark.parametrize('shape,stride', [([2, 8, 6, 3], 2), ([2, 9, 9, 4], 3), ([2, 7, 8, 3], 2),
                                          ([1, 4, 4, 5], 4)])
def test_subsample_equals_strided_slice(shape, stride):
  """The reshape-and-slice subsampling (multiples of the stride) and the strided slice
  (other sizes) both equal NumPy's x[:, ::s, ::s, :], also on a dynamic batch."""
  values = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
  expected = values[:, ::stride, ::stride, :]
  np.testing.assert_array_equal(fast_conv.subsample(tf.constant(values), stride).numpy(),
                                expected)
  traced = tf.function(lambda x: fast_conv.subsample(x, stride),
                       input_signature=[tf.TensorSpec([None, *shape[1:]])])
  np.testing.assert_array_equal(traced(tf.constant(values)).numpy(), expected)


def test_no_second_kernel_gradient_to_time_where_bfloat16_always_takes_it():
  """bf16 at stride 2: filter_gradient always takes the second kernel gradient, so the
  kernel choice does not time it twice; at stride 1 (1x1) it is still a choice."""
  assert fast_conv.padded_filter_gradient_applies([4, 8, 8, 3], [3, 3, 3, 2], 2)
  assert not fast_conv.padded_filter_gradient_applies([4, 8, 8, 3], [3, 3, 3, 2], 2,
                                                      tf.bfloat16)
  assert not fast_conv.padded_filter_gradient_applies([4, 8, 8, 3], [1, 1, 3, 2], 2,
                                                      tf.bfloat16)
  assert fast_conv.padded_filter_gradient_applies([4, 8, 8, 3], [1, 1, 3, 2], 1, tf.bfloat16)
  assert not fast_conv.padded_filter_gradient_applies([4, 8, 8, 3], [3, 3, 3, 2], 1,
                                                      tf.bfloat16)


# Small output maps where the kernel choice may take the conv as a matmul of patches:
# ResNet shapes (3x3 / 1x1 at stride 1 and 2 on 2x2 to 8x8 inputs), odd sizes, the 7x7
# stride-2 stem, stride 3, even (asymmetric) kernels and non-square maps.
PATCHES_CASES = [(4, 4, 3, 1), (3, 3, 3, 1), (2, 2, 3, 1), (8, 8, 3, 2), (6, 6, 3, 2),
                 (7, 7, 3, 2), (5, 5, 3, 2), (8, 8, 7, 2), (6, 6, 1, 2), (7, 5, 1, 2),
                 (4, 4, 1, 1), (2, 3, 1, 1), (9, 9, 5, 3), (4, 3, 2, 1), (7, 6, 4, 2)]


@pytest.mark.parametrize('height,width,kernel_size,stride', PATCHES_CASES)
def test_patches_conv_equals_numpy_reference(height, width, kernel_size, stride):
  generator = tf.random.Generator.from_seed(kernel_size * 100 + height * 10 + width + stride)
  inputs = generator.normal([3, height, width, 5])
  kernel = generator.normal([kernel_size, kernel_size, 5, 4])
  upstream = generator.normal(_reference(inputs, kernel, stride).shape)
  expected = _numpy_reference(inputs, kernel, stride, upstream)
  assert fast_conv.patches_applies(inputs.shape, kernel.shape, stride)
  got = tf.function(lambda x, w: _gradients(fast_conv.patches_conv2d, x, w, stride,
                                            upstream))(inputs, kernel)
  for name, value, reference in zip(('outputs', 'd_inputs', 'd_kernel'), got, expected):
    assert value.shape == reference.shape, name
    np.testing.assert_allclose(value.numpy(), reference, rtol=1e-5, atol=1e-4,
                               err_msg=name)


@pytest.mark.parametrize('kernel_size,stride', [(3, 1), (3, 2), (1, 2)])
def test_patches_conv_bfloat16_equals_numpy_reference(kernel_size, stride):
  generator = tf.random.Generator.from_seed(7 + kernel_size + stride)
  inputs = tf.cast(generator.normal([4, 6, 6, 16]), tf.bfloat16)
  kernel = tf.cast(generator.normal([kernel_size, kernel_size, 16, 8]), tf.bfloat16)
  upstream = generator.normal([4, 6 // stride, 6 // stride, 8])
  expected = _numpy_reference(tf.cast(inputs, tf.float32), tf.cast(kernel, tf.float32),
                              stride, upstream)
  got = tf.function(lambda x, w: _gradients(fast_conv.patches_conv2d, x, w, stride,
                                            upstream))(inputs, kernel)
  for name, value, reference in zip(('outputs', 'd_inputs', 'd_kernel'), got, expected):
    value = tf.cast(value, tf.float32).numpy()
    # bf16 keeps 8 significant bits: relative to the largest value of the result.
    assert np.max(np.abs(value - reference)) <= 0.02 * np.max(np.abs(reference)), name


def test_patches_apply_to_small_outputs_and_chosen_shapes_have_no_conv_op():
  assert fast_conv.patches_applies([4, 4, 4, 8], [3, 3, 8, 8], 1)      # 16 pixels out.
  assert fast_conv.patches_applies([4, 8, 8, 8], [3, 3, 8, 8], 2)      # 4 x 4 out.
  assert not fast_conv.patches_applies([4, 5, 4, 8], [3, 3, 8, 8], 1)  # 20 pixels out.
  assert not fast_conv.patches_applies([4, 2, 2, 8], [3, 3, 8, 8], 2)  # One pixel.
  assert not fast_conv.patches_applies([4, None, None, 8], [3, 3, 8, 8], 1)
  key = fast_conv.conv_key([4, 8, 8, 3], [3, 3, 3, 2], 2)
  try:
    fast_conv.set_patches_choices({key: True})
    types = _gradient_op_types(tf.TensorSpec([4, 8, 8, 3]), 2)
    assert 'MatMul' in types and not any(op.startswith('Conv2D') for op in types), types
    # Another shape, not chosen: a convolution as before.
    assert 'Conv2D' in _gradient_op_types(tf.TensorSpec([4, 6, 6, 3]), 2)
    # Switched off for comparison (bench/train_step.py --bench_compare_patches).
    fast_conv.set_patches_enabled(False)
    assert 'Conv2D' in _gradient_op_types(tf.TensorSpec([4, 8, 8, 3]), 2)
    fast_conv.set_patches_enabled(True)
    # Off where our kernels are off (GPU/TPU hosts, or switched off).
    fast_conv.set_fast_conv_gradient_enabled(False)
    assert 'Conv2D' in _gradient_op_types(tf.TensorSpec([4, 8, 8, 3]), 2)
  finally:
    fast_conv.set_fast_conv_gradient_enabled(True)
    fast_conv.set_patches_enabled(True)
    fast_conv.set_patches_choices({})
