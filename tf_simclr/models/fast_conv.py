"""A 2-D convolution whose input gradient is computed as forward convolutions (CPU).

On this CPU TensorFlow's `Conv2DBackpropInput` kernel is several times slower than a
forward `Conv2D` of the same FLOPs when the feature maps are small (e.g. 4.4x on
[128, 4, 4, 512] with a 3x3 kernel, 4x for 1x1 kernels and for stride 2). The gradient
with respect to the input of a convolution is itself a correlation of the output
gradient with the spatially flipped, in/out-transposed kernel:

- stride 1: dx = conv(dy, flip(w)^T) with padding (k - 1 - pad_begin, k - 1 - pad_end);
- stride s > 1: the input positions split into s x s phases (n mod s per axis); each
  phase is a stride-1 correlation of dy with the kernel taps of that phase (every s-th
  tap, flipped), and `depth_to_space` interleaves the phases. The phases together do
  the forward convolution's FLOPs, no zero-stuffing.

`conv2d` computes the same forward ops as the plain convolution and registers this
gradient with `tf.custom_gradient`; the kernel gradient is TensorFlow's
`Conv2DBackpropFilter`, except at stride 1 on maps of at most 4 x 4 pixels, where a
forward convolution over the batch computes it (up to 4x faster there). At stride 2 it
takes the explicit padding (TF's own kernel) or, where `kernel_choice` measured it
faster for the shape, oneDNN's kernel on the pre-padded input (1.0-3.0x faster on an
AVX-512 Xeon on 2026-12-02, 0.74-1.18x on an AVX2 EPYC on 2026-12-01). A conv whose
output is one pixel (the last ResNet stage on 32 px images) is one matmul of the input
pixels under the window with the kernel taps that meet them, gradients included (3-8x
faster on the Xeon, 2026-12-02). Where it does not pay off (GPU/TPU present, or
switched off with `set_fast_conv_gradient_enabled(False)`) or cannot apply (spatial
size unknown at trace time with stride > 1), `conv2d` is `stock_conv2d`: the plain
convolution with TF's gradient (but never oneDNN's wrong kernel gradient of 1 x 1
strided convs). On output maps of at most 4 x 4 pixels, where `kernel_choice` measured it
faster for the shape, the whole conv is one matmul of the input's patches
(`patches_conv2d`; on an AMX Xeon, 2026-12-02, 1.3-1.8x faster than the best other path
on ResNet-50's 3x3 maps at 96 px).
"""

from __future__ import annotations

import contextlib
import functools
from typing import ContextManager, Iterator, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

from tf_simclr.models import shape_choices

_enabled = True
# Feature maps up to this many pixels (4 x 4) get the kernel gradient by a conv over
# the batch (measured here: 1x1 maps 2-4x faster; 8x8 and larger mixed, so not there).
SMALL_MAP_PIXELS = 16


# While `reusing_gradient_kernels` is active: id(kernel variable) -> (the variable, its
# `gradient_kernels`), computed once outside a loop of micro-batches.
_reused_gradient_kernels: Optional[dict[int, tuple[object, list[Optional[tf.Tensor]]]]] = None

# Per-layer-shape choices (tf_simclr/models/kernel_choice.py): conv_key -> our gradient
# (True) or TensorFlow's (False); while recording, conv2d records (input shape, kernel
# shape, stride) of each call.
_choices = shape_choices.ShapeChoices()
# conv_key -> kernel gradient of a stride > 1 conv with kernel > 1 x 1 by oneDNN on the
# pre-padded input (True) or TF's kernel with explicit padding (False, the default).
# Never for 1 x 1 kernels: TF's oneDNN kernel gradient of a 1x1 stride-2 VALID conv was
# measured wrong for some channel counts on an AVX2 CPU (docs/speed.md).
_padded_filter_choices = shape_choices.ShapeChoices()
_padded_filter_choices.set({}, default=False)
# conv_key -> the whole conv (forward and both gradients) as one matmul of patches
# (`patches_conv2d`, True) on small output maps; unlisted shapes: False.
_patches_choices = shape_choices.ShapeChoices()
_patches_choices.set({}, default=False)
_patches_enabled = True
# Output maps up to this many pixels (4 x 4) may be computed as a matmul of patches:
# there oneDNN's convolutions run far below the matmul rate (forward + gradients on an
# AMX Xeon, 2026-12-02: patches 1.3-1.8x faster on ResNet-50's 3x3 maps at 96 px,
# 1.0-1.6x on its 2x2 and 4x4 maps at 32 px, timed per shape); on 8x8 and larger maps
# they cost more than that (gathered by one matmul, AMD EPYC with avx512_bf16,
# 2026-12-03: 3x3 kernels 1.1-1.8x slower on 8x8 and 12x12 outputs). On 6x6 outputs the patches
# gathered by one matmul won some shapes (AMD EPYC with avx512_bf16, 2026-12-03: a 3x3
# stride-2 conv 1.08x faster in fp32, 1.56x in bf16) but not the step (ResNet-50, 96 px,
# a limit of 36 pixels against 16: 1.00x in bf16, 0.99x in fp32, 8 rounds each).
PATCHES_MAX_OUTPUT_PIXELS = 16


def conv_key(input_shape: Sequence[Optional[int]], kernel_shape: Sequence[int],
             stride: int) -> tuple[int, ...]:
  """(H, W, C_in, kh, kw, C_out, stride): what a per-shape choice is keyed by."""
  return (*(-1 if size is None else int(size) for size in input_shape[1:]),
          *(int(size) for size in kernel_shape[:2]), int(kernel_shape[3]), int(stride))


def set_gradient_choices(choices: Mapping[tuple[int, ...], bool],
                         default: bool = True) -> None:
  """Per-shape choice of the input/kernel gradient: ours (True) or TensorFlow's.

  Read when a layer is called (traced), so set it before building the step function.
  """
  _choices.set(choices, default)


def gradient_choices() -> tuple[dict[tuple[int, ...], bool], bool]:
  """(per-shape choices, default) currently set."""
  return _choices.get()


def set_padded_filter_gradient_choices(choices: Mapping[tuple[int, ...], bool]) -> None:
  """Per-shape choice of our path's second kernel gradient (True): a matmul for a
  1 x 1 kernel, oneDNN's on the pre-padded input for a larger one at stride > 1; or
  TF's Conv2DBackpropFilter (with explicit padding at stride > 1) (False; unlisted
  shapes in float32). Outside float32 (bf16) unlisted shapes take the second one, and
  at stride > 1 it is always taken there (`filter_gradient`).

  Read when a layer is called (traced), so set it before building the step function.
  """
  _padded_filter_choices.set(choices, default=False)


def padded_filter_gradient_choices() -> dict[tuple[int, ...], bool]:
  """The per-shape choices currently set (see `set_padded_filter_gradient_choices`)."""
  return _padded_filter_choices.get()[0]


def set_patches_choices(choices: Mapping[tuple[int, ...], bool]) -> None:
  """Per-shape choice of `patches_conv2d` for the whole conv (True), where it applies
  (`patches_applies`); unlisted shapes: False. Read when a layer is called (traced)."""
  _patches_choices.set(choices, default=False)


def set_patches_enabled(enabled: bool) -> None:
  """Lets the per-shape patches choices take effect (default) or not (for comparison).

  Read when a layer is called (traced), so set it before building the step function.
  """
  global _patches_enabled
  _patches_enabled = bool(enabled)


def patches_enabled() -> bool:
  return _patches_enabled


def patches_choices() -> dict[tuple[int, ...], bool]:
  """The per-shape choices currently set (see `set_patches_choices`)."""
  return _patches_choices.get()[0]


def conv_output_size(input_size: int, stride: int) -> int:
  """Output size of one axis of `_plain_conv2d`: ceil(size / stride) (the fixed padding
  pads k - 1 in all, 'SAME' at stride 1)."""
  return -(-input_size // stride)


def patches_applies(input_shape: Sequence[Optional[int]], kernel_shape: Sequence[int],
                    stride: int) -> bool:
  """Whether `patches_conv2d` is a candidate for this conv: static H, W and an output
  of 2 to PATCHES_MAX_OUTPUT_PIXELS pixels (one pixel: `one_pixel_conv2d` already)."""
  height, width = input_shape[1], input_shape[2]
  if height is None or width is None or output_is_one_pixel(input_shape, stride):
    return False
  pixels = conv_output_size(height, stride) * conv_output_size(width, stride)
  return pixels <= PATCHES_MAX_OUTPUT_PIXELS


@functools.lru_cache(maxsize=None)
def _patch_gather_matrix(height: int, width: int, kernel_height: int, kernel_width: int,
                         stride: int) -> np.ndarray:
  """0/1 matrix [Ho * Wo * kh * kw, H * W]: row ((r * Wo + c) * kh + i) * kw + j picks
  the input pixel that tap (i, j) of output pixel (r, c) reads under the fixed padding
  (an all-zero row where the tap falls on the padding)."""
  (top, _), (left, _) = _paddings((kernel_height, kernel_width), stride)
  out_height, out_width = conv_output_size(height, stride), conv_output_size(width, stride)
  gather = np.zeros([out_height * out_width * kernel_height * kernel_width, height * width],
                    np.float32)
  for row in range(out_height):
    for col in range(out_width):
      for tap_row in range(kernel_height):
        for tap_col in range(kernel_width):
          source_row = row * stride + tap_row - top
          source_col = col * stride + tap_col - left
          if 0 <= source_row < height and 0 <= source_col < width:
            tap = ((row * out_width + col) * kernel_height + tap_row) * kernel_width + tap_col
            gather[tap, source_row * width + source_col] = 1.0
  return gather


def patches_conv2d(inputs: tf.Tensor, kernel: tf.Tensor, stride: int) -> tf.Tensor:
  """`_plain_conv2d` as one matmul of the input's patches (im2col), gradients included.

  A 1 x 1 conv is `x[:, ::s, ::s] @ w` over pixels. A larger kernel's patches
  [B * Ho * Wo, kh * kw * C_in] are one matmul too: a constant 0/1 gather matrix
  [Ho * Wo * kh * kw, H * W] (`_patch_gather_matrix`: the padding, the stride and
  every tap) times each image's pixels [H * W, C_in]; they are then multiplied by the
  kernel as [kh * kw * C_in, C_out]. The gradients are the matmuls': for the input, the
  gather matrix transposed sums every tap's gradient back onto its pixel (col2im in one
  op). The kh * kw slices and concatenation this replaces, whose gradient was kh * kw
  pads and their sum, made the conv (forward + both gradients) 1.2-2.2x slower on
  small maps (AMD EPYC with avx512_bf16, 2026-12-03, fp32 and bf16). Exact in float32 (each patch entry is one input value or
  zero; the sums are the same products in another order). The patches and the gather
  matrix grow with kh * kw and with the map, so use it on small output maps
  (`patches_applies`), where the kernel choice times it per shape.

  Args:
    inputs: [B, H, W, C_in], H and W static.
    kernel: [kh, kw, C_in, C_out].
    stride: both axes.

  Returns:
    [B, Ho, Wo, C_out].
  """
  _, height, width, channels = inputs.shape
  kernel_height, kernel_width, _, filters = kernel.shape
  out_height, out_width = conv_output_size(height, stride), conv_output_size(width, stride)
  batch = tf.shape(inputs)[0]
  if kernel_height == 1 and kernel_width == 1:
    pixels = subsample(inputs, stride) if stride > 1 else inputs          # [B, Ho, Wo, C_in]
    outputs = tf.matmul(tf.reshape(pixels, [-1, channels]),               # [B*Ho*Wo, C_in]
                        tf.reshape(kernel, [channels, filters]))          # [B*Ho*Wo, C_out]
    return tf.reshape(outputs, [batch, out_height, out_width, filters])
  gather = tf.constant(_patch_gather_matrix(height, width, kernel_height, kernel_width,
                                            stride), inputs.dtype)
  pixels = tf.reshape(inputs, [-1, height * width, channels])            # [B, H*W, C_in]
  patches = tf.matmul(gather, pixels)                                  # [B, Ho*Wo*kh*kw, C_in]
  patches = tf.reshape(patches, [-1, kernel_height * kernel_width * channels])  # [B*Ho*Wo, kh*kw*C_in]
  outputs = tf.matmul(patches, tf.reshape(kernel, [-1, filters]))      # [B*Ho*Wo, C_out]
  return tf.reshape(outputs, [batch, out_height, out_width, filters])


def padded_filter_gradient_applies(input_shape: Sequence[Optional[int]],
                                   kernel_shape: Sequence[int], stride: int,
                                   dtype: tf.DType = tf.float32) -> bool:
  """Whether our path of this conv has a second kernel gradient to time: a 1 x 1
  kernel (a matmul of the, at stride > 1 subsampled, input) or stride > 1 (oneDNN's on
  the pre-padded input), with an output of more than one pixel (one-pixel outputs are
  matmuls anyway). Not at stride > 1 outside float32, where `filter_gradient` always
  takes the second one (nothing to choose)."""
  if stride > 1 and dtype != tf.float32:
    return False
  pointwise = kernel_shape[0] == 1 and kernel_shape[1] == 1
  return (stride > 1 or pointwise) and not output_is_one_pixel(input_shape, stride)


def subsample(inputs: tf.Tensor, stride: int) -> tf.Tensor:
  """`inputs[:, ::stride, ::stride, :]` of [B, H, W, C].

  Where H and W are static multiples of `stride`, as two slices of contiguous blocks
  (rows, then pixels) of reshapes: 6-9x faster than TF's strided slice on ResNet maps
  (12 ms -> 1.3-2.1 ms on 64 x 24 x 24 x 256, AMX Xeon, 2026-12-02).
  """
  _, height, width, channels = inputs.shape
  if (height is None or width is None or channels is None or height % stride or
      width % stride):
    return inputs[:, ::stride, ::stride, :]
  batch = tf.shape(inputs)[0]
  rows = tf.reshape(inputs, [batch, height // stride, stride * width * channels])
  rows = rows[:, :, :width * channels]               # [B, H/s, W*C]: rows 0, s, 2s, ...
  pixels = tf.reshape(rows, [-1, stride * channels])[:, :channels]  # [B*H/s*W/s, C]
  return tf.reshape(pixels, [batch, height // stride, width // stride, channels])


def pointwise_filter_gradient(inputs: tf.Tensor, output_gradient: tf.Tensor,
                              stride: int) -> tf.Tensor:
  """d loss / d kernel of a 1 x 1 conv at `stride` (no padding) as one matmul.

  Such a conv is `inputs[:, ::s, ::s, :] @ kernel`, so its kernel gradient is
  `x_sub^T dy` summed over batch and pixels: exact. In bf16 on an AMX Xeon 1.6-7.6x
  faster than oneDNN's Conv2DBackpropFilter at stride 1 (ResNet-50 shapes, 2026-12-02),
  and at stride 2 10-45x faster than TF's explicit-padding one (an Eigen kernel;
  oneDNN's 'VALID' one is wrong for small channel counts on some CPUs, see
  `stock_conv2d`). In float32 0.86-1.54x: timed per shape.

  Args:
    inputs: [B, H, W, C_in].
    output_gradient: [B, ceil(H / s), ceil(W / s), C_out].
    stride: both axes.

  Returns:
    [1, 1, C_in, C_out].
  """
  channels, filters = inputs.shape[-1], output_gradient.shape[-1]
  subsampled = subsample(inputs, stride) if stride > 1 else inputs    # [B, Ho, Wo, C_in]
  gradient = tf.matmul(tf.reshape(subsampled, [-1, channels]),         # [B*Ho*Wo, C_in]
                       tf.reshape(output_gradient, [-1, filters]),     # [B*Ho*Wo, C_out]
                       transpose_a=True)                               # [C_in, C_out]
  return tf.reshape(gradient, [1, 1, channels, filters])


def recording_shapes(
) -> ContextManager[list[tuple[tuple[int, ...], tuple[int, ...], int]]]:
  """Collects (input shape, kernel shape, stride) of every conv2d call inside."""
  return _choices.recording()


def set_fast_conv_gradient_enabled(enabled: bool) -> None:
  """Turns the forward-conv input gradient on (default, CPU only) or off.

  Read when a layer is called (traced), so set it before building the step function.
  """
  global _enabled
  _enabled = bool(enabled)


def fast_conv_gradient_enabled() -> bool:
  return _enabled


@functools.lru_cache(maxsize=None)
def _accelerator_visible() -> bool:
  """True when this host has a GPU or TPU (physical devices: no runtime start-up)."""
  return bool(tf.config.list_physical_devices('GPU') or tf.config.list_physical_devices('TPU'))


def _accelerator_present() -> bool:
  """True on GPU / TPU hosts or under a TPUStrategy (their backprop kernels are fine)."""
  return (_accelerator_visible() or
          isinstance(tf.distribute.get_strategy(), tf.distribute.TPUStrategy))


def _our_paths_active() -> bool:
  """Our conv paths are on (`set_fast_conv_gradient_enabled`) and this is a CPU run."""
  return _enabled and not _accelerator_present()


def uses_patches(input_shape: Sequence[Optional[int]], kernel_shape: Sequence[int],
                 stride: int) -> bool:
  """Whether `conv2d` computes this conv by `patches_conv2d` (its per-shape choice,
  see `set_patches_choices`, and `set_patches_enabled`)."""
  return (_our_paths_active() and _patches_enabled and
          _patches_choices.ours(conv_key(input_shape, kernel_shape, stride)) and
          patches_applies(input_shape, kernel_shape, stride))


def uses_fast_gradient(inputs: tf.Tensor, stride: int,
                       kernel_shape: Optional[Sequence[int]] = None) -> bool:
  """Whether `conv2d` takes the custom-gradient path for this input (and kernel: its
  per-shape choice, see `set_gradient_choices`)."""
  if not _our_paths_active():
    return False
  if kernel_shape is not None and not _choices.ours(
      conv_key(inputs.shape, kernel_shape, stride)):
    return False
  if stride == 1:
    return True
  return inputs.shape[1] is not None and inputs.shape[2] is not None


def _paddings(kernel_size: Sequence[int], stride: int) -> list[tuple[int, int]]:
  """(begin, end) zero padding per spatial axis: 'same' at stride 1, else fixed.

  Fixed padding (the official ResNet's) pads (k - 1) // 2 before and the rest after at
  every stride; at stride 1 this is exactly TensorFlow's 'SAME'.
  """
  return [((size - 1) // 2, size - 1 - (size - 1) // 2) for size in kernel_size]


def _plain_conv2d(inputs: tf.Tensor, kernel: tf.Tensor, stride: int) -> tf.Tensor:
  """The official convolution: 'SAME' at stride 1, else pad + 'VALID'."""
  if stride == 1:
    return tf.nn.conv2d(inputs, kernel, 1, 'SAME')
  (top, bottom), (left, right) = _paddings(kernel.shape[:2], stride)
  if top or bottom or left or right:
    inputs = tf.pad(inputs, [[0, 0], [top, bottom], [left, right], [0, 0]])
  return tf.nn.conv2d(inputs, kernel, stride, 'VALID')


def stock_conv2d(inputs: tf.Tensor, kernel: tf.Tensor, stride: int) -> tf.Tensor:
  """`_plain_conv2d` with TensorFlow's gradients (the 'stock' side of the kernel choice).

  One exception, on CPUs: the kernel gradient of a 1 x 1 strided conv is TF's
  explicit-padding kernel (zero padding) instead of oneDNN's 'VALID' one, which was
  wrong on an AVX2 CPU (2026-12-02, TF 2.21: off by 20-65% of the largest value for 3,
  4, 5 and 7 input channels on 8x8 and 16x16 maps; right for the ResNets' 64 and more).
  On 7 ResNet shapes there the explicit one was 0.65-1.33x as fast, 1.13x in sum.
  In other dtypes than float32 (bf16) that explicit one is an Eigen kernel 10-45x
  slower than a matmul: there it is `pointwise_filter_gradient`.
  """
  if (kernel.shape[0] != 1 or kernel.shape[1] != 1 or stride == 1 or
      _accelerator_present()):
    return _plain_conv2d(inputs, kernel, stride)
  kernel_shape = kernel.shape.as_list()

  @tf.custom_gradient
  def convolve(x: tf.Tensor, w: tf.Tensor):
    def gradient(dy: tf.Tensor):
      dx = tf.raw_ops.Conv2DBackpropInput(
          input_sizes=tf.shape(x), filter=w, out_backprop=dy,
          strides=[1, stride, stride, 1], padding='VALID')
      dw = filter_gradient(x, dy, kernel_shape, stride)
      return dx, dw

    return _plain_conv2d(x, w, stride), gradient

  return convolve(inputs, kernel)


def _phase_taps(kernel_size: int, stride: int, phase: int, pad_begin: int, input_size: int,
                output_size: int) -> tuple[int, int, int, int]:
  """One axis of one phase: (first tap, number of taps, dy pad before, dy pad after).

  Input position n = s * m + phase (m = 0 .. ceil(size / s) - 1) reads padded position
  r = n + pad_begin = s * i + tap, so its taps are tap = first + s * t and
  dx[n] = sum_t dy[m + offset - t] * w[first + s * t]; as a correlation of dy with the
  reversed taps this needs dy padded by (taps - 1 - offset) before and enough after to
  give ceil(size / s) outputs. Negative paddings mean cropping.
  """
  first = (phase + pad_begin) % stride
  taps = len(range(first, kernel_size, stride))
  offset = (phase + pad_begin - first) // stride
  num_out = -(-input_size // stride)  # ceil: the size every phase is computed at.
  before = taps - 1 - offset
  after = num_out + taps - 1 - output_size - before
  return first, taps, before, after


def _pad_or_crop(values: tf.Tensor, axis: int, before: int, after: int) -> tf.Tensor:
  """Zero-pads (positive) or crops (negative) `values` along `axis` at both ends."""
  if before < 0 or after < 0:
    size = values.shape[axis]
    begin, end = max(-before, 0), size - max(-after, 0)
    values = values[:, begin:end] if axis == 1 else values[:, :, begin:end]
  if before > 0 or after > 0:
    paddings = [[0, 0]] * 4
    paddings[axis] = [max(before, 0), max(after, 0)]
    values = tf.pad(values, paddings)
  return values


def gradient_kernels(kernel: tf.Tensor, stride: int) -> list[Optional[tf.Tensor]]:
  """The kernels `input_gradient` convolves the output gradient with (weights only).

  Stride 1: [flip(w)^T], [kh, kw, C_out, C_in]. Stride s > 1: one per phase (p, q) in
  row-major order, the taps first, first + s, ... of that phase reversed and in/out-
  transposed (None for a phase without taps). They depend on the weights alone, so a
  step that backpropagates several micro-batches through the same weights computes
  them once (`reusing_gradient_kernels`) instead of once per micro-batch.
  """
  kernel_height, kernel_width = kernel.shape[0], kernel.shape[1]
  if stride == 1:
    return [tf.reverse(tf.transpose(kernel, [0, 1, 3, 2]), [0, 1])]
  (top, _), (left, _) = _paddings((kernel_height, kernel_width), stride)
  kernels = []
  for row_phase in range(stride):
    row_first = (row_phase + top) % stride
    for col_phase in range(stride):
      col_first = (col_phase + left) % stride
      if row_first >= kernel_height or col_first >= kernel_width:
        kernels.append(None)
        continue
      kernels.append(tf.reverse(tf.transpose(
          kernel[row_first::stride, col_first::stride], [0, 1, 3, 2]), [0, 1]))
  return kernels


@contextlib.contextmanager
def reusing_gradient_kernels(kernels: Sequence[tuple[object, tf.Tensor, int]]
                             ) -> Iterator[None]:
  """Inside, `conv2d(..., kernel_variable=v)` reuses the gradient kernels of v.

  Computes `gradient_kernels` of each kernel here, once, and every backward pass traced
  inside (e.g. each micro-batch of a gradient-caching loop) convolves with those
  tensors instead of transposing, flipping and slicing the weights again. The kernels
  must not change inside (they are the step's weights, before its update).

  Args:
    kernels: (kernel variable, its value in the compute dtype, the conv's stride).
  """
  global _reused_gradient_kernels
  previous = _reused_gradient_kernels
  _reused_gradient_kernels = {id(variable): (variable, gradient_kernels(value, stride))
                              for variable, value, stride in kernels}
  try:
    yield
  finally:
    _reused_gradient_kernels = previous


def input_gradient(output_gradient: tf.Tensor, kernel: tf.Tensor, stride: int,
                   input_shape: Sequence[int],
                   reused_kernels: Optional[Sequence[Optional[tf.Tensor]]] = None
                   ) -> tf.Tensor:
  """d loss / d inputs of `_plain_conv2d` by forward convolutions.

  Args:
    output_gradient: dy, [B, Ho, Wo, C_out].
    kernel: w, [kh, kw, C_in, C_out].
    stride: the convolution's stride (both axes).
    input_shape: [B, H, W, C_in] (H, W static when stride > 1).
    reused_kernels: `gradient_kernels(kernel, stride)` computed earlier, or None.

  Returns:
    dx, [B, H, W, C_in].
  """
  kernel_height, kernel_width = kernel.shape[0], kernel.shape[1]
  (top, bottom), (left, right) = _paddings((kernel_height, kernel_width), stride)
  sub_kernels = (gradient_kernels(kernel, stride) if reused_kernels is None
                 else list(reused_kernels))
  if stride == 1:
    # [kh, kw, C_out, C_in], flipped: the correlation kernel of the transposed conv.
    return tf.nn.conv2d(output_gradient, sub_kernels[0], 1,
                        [[0, 0], [kernel_height - 1 - top, kernel_height - 1 - bottom],
                         [kernel_width - 1 - left, kernel_width - 1 - right], [0, 0]])
  _, height, width, in_channels = input_shape
  out_height, out_width = output_gradient.shape[1], output_gradient.shape[2]
  if out_height is None or out_width is None:
    out_height = (height + top + bottom - kernel_height) // stride + 1
    out_width = (width + left + right - kernel_width) // stride + 1
  rows, cols = -(-height // stride), -(-width // stride)
  batch_size = tf.shape(output_gradient)[0]
  phases = []
  for row_phase in range(stride):
    _, row_taps, row_before, row_after = _phase_taps(
        kernel_height, stride, row_phase, top, height, out_height)
    for col_phase in range(stride):
      _, col_taps, col_before, col_after = _phase_taps(
          kernel_width, stride, col_phase, left, width, out_width)
      sub_kernel = sub_kernels[row_phase * stride + col_phase]
      if not row_taps or not col_taps:
        phases.append(tf.zeros(tf.stack([batch_size, rows, cols, in_channels]),
                               output_gradient.dtype))
        continue
      padded = _pad_or_crop(output_gradient, 1, row_before, row_after)
      padded = _pad_or_crop(padded, 2, col_before, col_after)
      phases.append(tf.nn.conv2d(padded, sub_kernel, 1, 'VALID'))  # [B, rows, cols, C_in]
  # Channel block (p * s + q) holds phase (p, q): depth_to_space interleaves them.
  interleaved = tf.nn.depth_to_space(tf.concat(phases, axis=-1), stride)
  return interleaved[:, :height, :width, :]


def filter_gradient(inputs: tf.Tensor, output_gradient: tf.Tensor, kernel_shape: Sequence[int],
                    stride: int, padded: Optional[bool] = False) -> tf.Tensor:
  """d loss / d kernel of `_plain_conv2d`.

  With `padded`, a 1 x 1 kernel's is one matmul (`pointwise_filter_gradient`) and a
  larger kernel's at stride > 1 is oneDNN's Conv2DBackpropFilter on the padded input
  with 'VALID'. `padded=None` (a shape not timed) means True outside float32 (bf16),
  False in float32; at stride > 1 outside float32 it is always True. Otherwise: stride
  1 on maps of at most SMALL_MAP_PIXELS pixels, a forward convolution over the batch
  (inputs as [C_in, H, W, B] images, dy as a [H, W, B, C_out] kernel), up to 4x faster
  there than Conv2DBackpropFilter; elsewhere TensorFlow's Conv2DBackpropFilter, at
  stride > 1 with explicit padding.
  """
  # Outside float32 (bf16) TF's explicit-padding kernel is an Eigen one, 10-45x slower
  # than oneDNN's: never taken at stride > 1. At stride 1 the matmul is the untimed
  # default (1.6-7.6x faster than oneDNN's 1 x 1 kernel gradient on an AMX Xeon); a
  # timed choice may still take oneDNN's.
  low_precision = inputs.dtype != tf.float32
  if padded is None:
    padded = low_precision
  padded = padded or (low_precision and stride > 1)
  if kernel_shape[0] == 1 and kernel_shape[1] == 1 and padded:
    return pointwise_filter_gradient(inputs, output_gradient, stride)
  height, width = inputs.shape[1], inputs.shape[2]
  if (stride == 1 and height is not None and width is not None and
      height * width <= SMALL_MAP_PIXELS):
    (top, bottom), (left, right) = _paddings(kernel_shape[:2], stride)
    images = tf.transpose(inputs, [3, 1, 2, 0])            # [C_in, H, W, B]
    kernel = tf.transpose(output_gradient, [1, 2, 0, 3])   # [H, W, B, C_out]
    gradient = tf.nn.conv2d(images, kernel, 1,
                            [[0, 0], [top, bottom], [left, right], [0, 0]])  # [C_in, kh, kw, C_out]
    return tf.transpose(gradient, [1, 2, 0, 3])            # [kh, kw, C_in, C_out]
  if stride == 1:
    return tf.raw_ops.Conv2DBackpropFilter(
        input=inputs, filter_sizes=tf.constant(list(kernel_shape), tf.int32),
        out_backprop=output_gradient, strides=[1, 1, 1, 1], padding='SAME')
  (top, bottom), (left, right) = _paddings(kernel_shape[:2], stride)
  if padded:
    return tf.raw_ops.Conv2DBackpropFilter(
        input=tf.pad(inputs, [[0, 0], [top, bottom], [left, right], [0, 0]]),
        filter_sizes=tf.constant(list(kernel_shape), tf.int32),
        out_backprop=output_gradient, strides=[1, stride, stride, 1], padding='VALID')
  return tf.raw_ops.Conv2DBackpropFilter(
      input=inputs, filter_sizes=tf.constant(list(kernel_shape), tf.int32),
      out_backprop=output_gradient, strides=[1, stride, stride, 1], padding='EXPLICIT',
      explicit_paddings=[0, 0, top, bottom, left, right, 0, 0])


def output_is_one_pixel(input_shape: Sequence[Optional[int]], stride: int) -> bool:
  """Whether the fixed-padding conv of an input [B, H, W, C] outputs 1 x 1 (H, W <=
  stride; static sizes only)."""
  height, width = input_shape[1], input_shape[2]
  return (height is not None and width is not None and
          (height - 1) // stride == 0 and (width - 1) // stride == 0)


def one_pixel_conv2d(inputs: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
  """`_plain_conv2d` where the output is one pixel (`output_is_one_pixel`), as a matmul.

  The single window covers padded rows [0, kh) = input rows [-top, kh - top), so only
  input rows [0, min(H, kh - top)) and kernel rows [top, top + that) meet (columns
  alike); the rest multiplies padding. Its gradients are the matmul's.
  """
  height, width, channels = inputs.shape[1], inputs.shape[2], inputs.shape[3]
  kernel_height, kernel_width, _, filters = kernel.shape
  (top, _), (left, _) = _paddings([kernel_height, kernel_width], 1)
  rows, cols = min(height, kernel_height - top), min(width, kernel_width - left)
  batch = tf.shape(inputs)[0]
  # tf.slice, not [a:b] indexing: its gradient is a Pad, 1.6-2.9x faster than
  # StridedSliceGrad here (one per micro-batch with gradient caching).
  pixels = tf.reshape(tf.slice(inputs, [0, 0, 0, 0], [-1, rows, cols, -1]),
                      [batch, rows * cols * channels])
  taps = tf.reshape(tf.slice(kernel, [top, left, 0, 0], [rows, cols, -1, -1]),
                    [rows * cols * channels, filters])
  return tf.reshape(tf.matmul(pixels, taps), [batch, 1, 1, filters])  # [B, 1, 1, C_out]


def conv2d(inputs: tf.Tensor, kernel: tf.Tensor, stride: int,
           kernel_variable: Optional[object] = None) -> tf.Tensor:
  """The official ResNet convolution ('SAME' at stride 1, else fixed pad + 'VALID').

  Args:
    inputs: [B, H, W, C_in].
    kernel: [kh, kw, C_in, C_out], same dtype as inputs.
    stride: both axes.
    kernel_variable: the variable `kernel` was read from: inside
      `reusing_gradient_kernels`, its gradient kernels computed there are reused.

  Returns:
    [B, Ho, Wo, C_out]; its input gradient by forward convolutions on CPU.
  """
  input_shape, kernel_shape = inputs.shape.as_list(), kernel.shape.as_list()
  _choices.record((tuple(input_shape), tuple(kernel_shape), stride))
  if uses_patches(input_shape, kernel_shape, stride):
    return patches_conv2d(inputs, kernel, stride)
  if not uses_fast_gradient(inputs, stride, kernel_shape):
    return stock_conv2d(inputs, kernel, stride)
  reused = None
  if _reused_gradient_kernels is not None and kernel_variable is not None:
    reused = _reused_gradient_kernels.get(id(kernel_variable), (None, None))[1]
  return conv2d_with_fast_gradient(inputs, kernel, stride, reused)


def conv2d_with_fast_gradient(inputs: tf.Tensor, kernel: tf.Tensor, stride: int,
                              reused_kernels: Optional[Sequence[Optional[tf.Tensor]]] = None,
                              padded_filter_gradient: Optional[bool] = None) -> tf.Tensor:
  """`conv2d` with our gradient, whatever the choices (stride > 1: static H, W);
  `reused_kernels` as in `input_gradient`; `padded_filter_gradient` as `padded` in
  `filter_gradient` (None: this shape's choice, `set_padded_filter_gradient_choices`,
  or for an unlisted shape `filter_gradient`'s default).
  A one-pixel output is `one_pixel_conv2d` (a matmul; those options do not apply)."""
  input_shape = inputs.shape.as_list()
  kernel_shape = kernel.shape.as_list()
  if output_is_one_pixel(input_shape, stride):
    return one_pixel_conv2d(inputs, kernel)
  if padded_filter_gradient is None:
    padded_filter_gradient = padded_filter_gradient_choices().get(
        conv_key(input_shape, kernel_shape, stride))
  if reused_kernels is not None and any(
      reused is not None and reused.dtype != kernel.dtype for reused in reused_kernels):
    reused_kernels = [None if reused is None else tf.cast(reused, kernel.dtype)
                      for reused in reused_kernels]

  @tf.custom_gradient
  def convolve(x: tf.Tensor, w: tf.Tensor):
    outputs = _plain_conv2d(x, w, stride)

    def gradient(dy: tf.Tensor):
      dx = input_gradient(dy, w, stride, input_shape, reused_kernels)
      dw = filter_gradient(x, dy, kernel_shape, stride, padded_filter_gradient)
      return dx, dw

    return outputs, gradient

  return convolve(inputs, kernel)
