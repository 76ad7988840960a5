"""Per-CPU, per-layer-shape choice of our kernels vs stock TensorFlow/Keras, measured.

Our conv gradient (`fast_conv`: input gradient as forward convolutions) and fused batch
norm (`fast_batch_norm`) beat stock TF/Keras on an AVX2-only CPU, while on an AVX-512
CPU the same paths were measured slower for ResNet-50 (0.78x stock; docs/speed.md). Which
wins depends on the CPU, the layer's shape and the batch, so `choose_kernels` decides
per layer shape at start-up from timings on this CPU:

1. the model's conv and BN layer shapes are recorded from one small eager forward pass;
2. for each distinct shape, at the training batch (both views when pretraining), the
   forward + backward of our path and of the stock one are timed, alternating call by
   call (`repeats` each, median), in the run's compute dtype;
3. a shape gets our path where it was faster, else the stock one (`fast_conv.
   set_gradient_choices`, `fast_batch_norm.set_fused_choices`). Our path of a stride-2
   or 1 x 1 conv is timed with both of its kernel gradients (TF's, or: oneDNN's on the
   pre-padded input for a kernel > 1 x 1, a matmul of the subsampled input for 1 x 1)
   and takes the faster (`fast_conv.set_padded_filter_gradient_choices`). On output
   maps of at most 4 x 4 pixels the whole conv as one matmul of patches
   (`fast_conv.patches_conv2d`) is timed too, and taken where it beats every other
   side (`fast_conv.set_patches_choices`). Where the native batch norm
   (`native_batch_norm`) is usable, the fused side of a BN shape is timed with it and
   with TF's fused kernel, and takes the faster (`fast_batch_norm.set_native_choices`).

Timings are cached in a JSON file keyed by the CPU (model name and flags from
/proc/cpuinfo), the TensorFlow version, oneDNN on/off, the dtype, the batch and the
shape, so a machine measures each shape once. `--cpu_kernels=ours|stock` skips the
measurement and takes one side everywhere; `auto` measures. Both sides compute the same
gradient (to float32 rounding; tests/test_conv_gradient.py, tests/test_fast_batch_norm.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable, Optional, Sequence

import keras
import tensorflow as tf

from tf_simclr import precision
from tf_simclr.config import CPU_KERNELS
from tf_simclr.models import fast_batch_norm
from tf_simclr.models import fast_conv
from tf_simclr.models import native_batch_norm

CACHE_ENV = 'TF_SIMCLR_KERNEL_CACHE'
# Below this many pixels per step (batch x H x W) a layer's timing is mostly call
# overhead and the run is short: `auto` keeps our kernels without measuring.
MIN_PIXELS_TO_MEASURE = 32 * 32 * 32
# Measuring costs about as much as 5-10 training steps (every shape, both sides, a few
# calls each): `auto` measures only for runs of at least this many steps (<= ~2%);
# shorter runs (tests, smoke runs) keep our kernels unless the timings are cached.
MIN_STEPS_TO_MEASURE = 500
# Part of the cache key: bumped whenever our kernels change, so timings taken with older
# code are not reused (2: stride-2 pre-padded kernel gradient, one-pixel convs as matmuls;
# 3: the stock side's 1x1 strided kernel gradient; 4: the 1x1 strided kernel gradient
# as a matmul, timed on our side and taken in bf16; 5: in bf16 every stride-2 kernel
# gradient of ours is the pre-padded / matmul one; 6: the 1x1 kernel gradient as a
# matmul at stride 1 too; 7: in bf16 that one is timed against oneDNN's at stride 1;
# 8: the conv as a matmul of patches on small output maps; 9: those patches gathered
# by one matmul instead of slices; 10: the fused BN side is the native C++ kernel in
# float32; 11: TF's fused BN timed beside it).
KERNELS_VERSION = 11


@dataclasses.dataclass(frozen=True)
class KernelChoice:
  """What `choose_kernels` decided (and why)."""
  mode: str                                       # auto, ours or stock
  conv_choices: dict[tuple[int, ...], bool]       # conv_key -> ours
  batch_norm_choices: dict[tuple[int, ...], bool]  # BN shape -> fused
  default: bool                                   # shapes not listed
  timings: dict[str, dict[str, float]]            # shape name -> {'ours', 'stock'} seconds
  measured_seconds: float                         # spent measuring (0: cached / none)
  reason: str
  # conv_key -> our path's second kernel gradient (1x1: matmul; stride 2: pre-padded oneDNN).
  padded_filter_choices: dict[tuple[int, ...], bool] = dataclasses.field(default_factory=dict)
  # conv_key -> the whole conv as one matmul of patches (small output maps).
  patches_choices: dict[tuple[int, ...], bool] = dataclasses.field(default_factory=dict)
  # BN shape -> the native kernel (True) or TF's fused one, where the fused path is taken.
  native_batch_norm_choices: dict[tuple[int, ...], bool] = dataclasses.field(
      default_factory=dict)

  def summary(self) -> str:
    """One line: how many shapes take our path, per kind."""
    conv = sum(self.conv_choices.values())
    norm = sum(self.batch_norm_choices.values())
    if not self.conv_choices and not self.batch_norm_choices:
      return f'cpu kernels: {"ours" if self.default else "stock"} everywhere ({self.reason}).'
    padded = sum(self.padded_filter_choices.values())
    padded_text = (f' (pre-padded or matmul kernel gradient on {padded})' if padded else '')
    patches = sum(self.patches_choices.values())
    patches_text = f', a matmul of patches on {patches}' if patches else ''
    native = sum(native for shape, native in self.native_batch_norm_choices.items()
                 if self.batch_norm_choices.get(shape))
    native_text = (f' (the native kernel on {native})' if self.native_batch_norm_choices
                   else '')
    return (f'cpu kernels ({self.mode}): our conv gradient on {conv}/{len(self.conv_choices)} '
            f'conv shapes{padded_text}{patches_text}, fused BN on '
            f'{norm}/{len(self.batch_norm_choices)} BN shapes{native_text} ({self.reason}).')


def cpu_description(cpuinfo_path: str = '/proc/cpuinfo') -> dict[str, Any]:
  """{'model': ..., 'flags': sorted list, 'isa_limit': `precision.isa_limit()`} of
  the first processor (model and flags empty if unknown)."""
  model = platform.processor() or platform.machine()
  try:
    with open(cpuinfo_path, encoding='utf-8', errors='replace') as cpuinfo:
      for line in cpuinfo:
        key, _, value = line.partition(':')
        if key.strip() == 'model name' and model in ('', platform.machine()):
          model = value.strip()
          break
  except OSError:
    pass
  return {'model': model, 'flags': sorted(precision.read_cpu_flags(cpuinfo_path) or ()),
          'isa_limit': precision.isa_limit()}


def default_cache_path() -> str:
  """$TF_SIMCLR_KERNEL_CACHE, else ~/.cache/tf_simclr/cpu_kernels.json."""
  return os.environ.get(CACHE_ENV) or os.path.join(
      os.path.expanduser('~'), '.cache', 'tf_simclr', 'cpu_kernels.json')


def cpu_identity() -> str:
  """A short hash of what kernel speed depends on besides the shape: the CPU's model
  and flags, the TensorFlow version, whether oneDNN is on, KERNELS_VERSION and, where
  set, oneDNN's instruction-set cap (`precision.isa_limit`: other kernels, timings)."""
  from tensorflow.python.util import _pywrap_util_port  # pylint: disable=g-import-not-at-top
  cpu = cpu_description()
  facts = [cpu['model'], cpu['flags'], tf.__version__,
           bool(_pywrap_util_port.IsMklEnabled()), KERNELS_VERSION]
  if cpu['isa_limit']:  # Appended only when set: uncapped caches keep their keys.
    facts.append(cpu['isa_limit'])
  identity = json.dumps(facts)
  return hashlib.sha1(identity.encode()).hexdigest()[:16]


def _cache_prefix(dtype: tf.DType, batch: int, reused_gradient_kernels: bool = False) -> str:
  reused = 'reused/' if reused_gradient_kernels else ''
  return f'{cpu_identity()}/{dtype.name}/b{batch}/{reused}'


def measured_bfloat16_speedup(cache_path: Optional[str] = None, rounds: int = 5) -> float:
  """float32 time / bfloat16 time of a ResNet-sized 3x3 convolution's forward and
  backward pass (64 x 16 x 16 x 128 -> 128 channels, TF's kernels) on this CPU.

  The two dtypes alternate call by call after a warm-up, `rounds` calls each, median
  (about a second). Cached like the kernel timings (`cache_path`: None the default
  file, '' none). Above 1 bfloat16 is faster. CPUs with avx512_bf16 but no AMX can
  measure below 1: their bf16 dot product does as many multiply-adds per cycle as
  float32 FMAs, plus conversions (docs/speed.md).
  """
  cache_path = default_cache_path() if cache_path is None else cache_path
  cache = _load_cache(cache_path) if cache_path else {}
  key = f'{cpu_identity()}/bfloat16_speedup'
  if key not in cache:
    steps = []
    for dtype in (tf.float32, tf.bfloat16):
      images = tf.cast(tf.random.stateless_normal([64, 16, 16, 128], seed=[1, 2]), dtype)
      kernel = tf.cast(tf.random.stateless_normal([3, 3, 128, 128], seed=[3, 4]) * 0.05,
                       dtype)

      @tf.function
      def step(images: tf.Tensor = images, kernel: tf.Tensor = kernel) -> list[tf.Tensor]:
        with tf.GradientTape() as tape:
          tape.watch([images, kernel])
          loss = tf.reduce_sum(tf.cast(tf.nn.conv2d(images, kernel, 1, 'SAME'), tf.float32))
        return tape.gradient(loss, [images, kernel])

      steps.append(step)
    float32_seconds, bfloat16_seconds = _median_alternating(*steps, repeats=rounds)  # pylint: disable=unbalanced-tuple-unpacking
    cache[key] = {'float32': float32_seconds, 'bfloat16': bfloat16_seconds}
    if cache_path:
      _save_cache(cache_path, cache)
  return cache[key]['float32'] / cache[key]['bfloat16']


def _load_cache(path: str) -> dict[str, dict[str, float]]:
  try:
    with tf.io.gfile.GFile(path, 'r') as cache_file:
      loaded = json.load(cache_file)
    return loaded if isinstance(loaded, dict) else {}
  except (tf.errors.OpError, ValueError, OSError):
    return {}


def _save_cache(path: str, cache: dict[str, dict[str, float]]) -> None:
  """Written to a temporary file and renamed (never a half-written cache)."""
  try:
    directory = os.path.dirname(path)
    if directory:
      tf.io.gfile.makedirs(directory)
    temporary = f'{path}.tmp{os.getpid()}'
    with tf.io.gfile.GFile(temporary, 'w') as cache_file:
      json.dump(cache, cache_file, indent=1, sort_keys=True)
    tf.io.gfile.rename(temporary, path, overwrite=True)
  except (tf.errors.OpError, OSError) as error:
    print(f'note: kernel timings not cached ({error}).', file=sys.stderr, flush=True)


def layer_shapes(model: keras.Model, image_size: int) -> tuple[list[tuple[tuple[int, ...], tuple[int, ...], int]],
                            list[tuple[int, ...]]]:
  """Distinct (input shape, kernel shape, stride) of the convs and BN input shapes (batch
  axis 1) of `model`, from one eager forward pass of one image."""
  with fast_conv.recording_shapes() as convs, fast_batch_norm.recording_shapes() as norms:
    model(tf.zeros([1, image_size, image_size, 3]), training=False)
  return list(dict.fromkeys(convs)), list(dict.fromkeys(norms))


def _median_alternating(*functions: Callable[[], Any], repeats: int) -> tuple[float, ...]:
  """Median seconds of each of `functions`, called in turn (after one warm-up each)."""
  for function in functions:
    function()
  times: list[list[float]] = [[] for _ in functions]
  for _ in range(repeats):
    for function, function_times in zip(functions, times):
      start = time.perf_counter()
      function()
      function_times.append(time.perf_counter() - start)
  return tuple(statistics.median(function_times) for function_times in times)


def time_conv(input_shape: Sequence[int], kernel_shape: Sequence[int], stride: int,
              batch: int, dtype: tf.DType = tf.float32, repeats: int = 3,
              reused_gradient_kernels: bool = False) -> dict[str, float]:
  """Seconds of forward + both gradients of one conv layer: {'ours', 'stock'},
  'ours_padded' (our path with its second kernel gradient: oneDNN's on the pre-padded
  input, or a matmul for 1 x 1) where that applies
  (`fast_conv.padded_filter_gradient_applies`), and 'patches' (`fast_conv.
  patches_conv2d`) where that applies (`fast_conv.patches_applies`).

  With `reused_gradient_kernels` (gradient caching: one set of input-gradient kernels
  per step, reused by every micro-batch) ours is timed with them computed beforehand.
  """
  generator = tf.random.Generator.from_seed(0)
  inputs = tf.cast(generator.normal([batch, *input_shape[1:]]), dtype)
  kernel = tf.cast(generator.normal(list(kernel_shape)) * 0.05, dtype)
  reused = (fast_conv.gradient_kernels(kernel, stride) if reused_gradient_kernels
            else None)

  def ours(x: tf.Tensor, w: tf.Tensor, conv_stride: int) -> tf.Tensor:
    return fast_conv.conv2d_with_fast_gradient(x, w, conv_stride, reused, False)

  def ours_padded(x: tf.Tensor, w: tf.Tensor, conv_stride: int) -> tf.Tensor:
    return fast_conv.conv2d_with_fast_gradient(x, w, conv_stride, reused, True)

  def step_fn(convolve: Callable[..., tf.Tensor]) -> Callable[[], Any]:
    @tf.function
    def step():
      with tf.GradientTape() as tape:
        tape.watch([inputs, kernel])
        outputs = convolve(inputs, kernel, stride)
      return tape.gradient(outputs, [inputs, kernel], output_gradients=outputs)

    return lambda: [gradient.numpy() for gradient in step()]

  sides = {'ours': ours, 'stock': fast_conv.stock_conv2d}
  if fast_conv.padded_filter_gradient_applies(input_shape, kernel_shape, stride, dtype):
    sides['ours_padded'] = ours_padded
  if fast_conv.patches_applies(input_shape, kernel_shape, stride):
    sides['patches'] = fast_conv.patches_conv2d
  seconds = _median_alternating(*(step_fn(side) for side in sides.values()),
                                repeats=repeats)
  return dict(zip(sides, seconds))


def time_batch_norm(shape: Sequence[int], batch: int, dtype: tf.DType = tf.float32,
                    repeats: int = 3) -> dict[str, float]:
  """Seconds of training-mode forward + backward of one BN layer: {'ours': the fused
  path (the native kernel where `native_batch_norm.usable()`), 'stock': Keras}, and
  'tf_fused' (TF's fused kernel) where the native one is usable."""
  generator = tf.random.Generator.from_seed(0)
  inputs = tf.cast(generator.normal([batch, *shape]), dtype)
  policy = 'mixed_bfloat16' if dtype == tf.bfloat16 else 'float32'

  def step_fn(layer: keras.layers.Layer) -> Callable[[], Any]:
    layer.build(inputs.shape)

    @tf.function
    def step():
      with tf.GradientTape() as tape:
        tape.watch(inputs)
        outputs = layer(inputs, training=True)
      return tape.gradient(outputs, [inputs] + layer.trainable_variables,
                           output_gradients=outputs)

    return lambda: [gradient.numpy() for gradient in step()]

  fused = fast_batch_norm.FusedBatchNormalization(epsilon=1e-5, dtype=policy)
  stock = keras.layers.BatchNormalization(epsilon=1e-5, dtype=policy)
  previous = fast_batch_norm.fused_choices(), fast_batch_norm.native_choices()
  fast_batch_norm.set_fused_choices({}, default=True)  # These layers: the fused path,
  fast_batch_norm.set_native_choices({}, default=True)  # native where usable.
  try:
    steps = {'ours': step_fn(fused), 'stock': step_fn(stock)}
    if native_batch_norm.usable(dtype):
      steps['tf_fused'] = step_fn(
          fast_batch_norm.FusedBatchNormalization(epsilon=1e-5, dtype=policy))
      with native_batch_norm.disabled():
        steps['tf_fused']()  # Traced here: TF's fused kernel.
    return dict(zip(steps, _median_alternating(*steps.values(), repeats=repeats)))
  finally:
    fast_batch_norm.set_fused_choices(*previous[0])
    fast_batch_norm.set_native_choices(*previous[1])


def choose_kernels(model: keras.Model, *, mode: str, image_size: int, batch: int,
                   dtype: tf.DType = tf.float32, cache_path: Optional[str] = None,
                   repeats: int = 3, apply: bool = True,
                   total_steps: Optional[int] = None,
                   reused_gradient_kernels: bool = False) -> KernelChoice:
  """Decides ours vs stock per layer shape (see the module docstring); applies it.

  Args:
    model: the built model (its layer shapes are recorded with one eager forward pass).
    mode: 'ours' (our paths everywhere), 'stock' (TF's conv gradient and the Keras BN
      computation everywhere) or 'auto' (measured per shape; the default).
    image_size: the training image size.
    batch: images per replica per forward pass (both views when pretraining; the
      micro-batch's with --micro_batch_size).
    dtype: the compute dtype.
    cache_path: the timing cache; None: `default_cache_path()`; '' no cache.
    repeats: timed calls per side and shape.
    apply: set the choices in fast_conv / fast_batch_norm.
    total_steps: the run's length; below MIN_STEPS_TO_MEASURE `auto` only uses timings
      already cached (else our kernels). None: measure whatever the length.
    reused_gradient_kernels: the step reuses our input-gradient kernels across
      micro-batches (gradient caching): ours is timed (and cached) that way.

  Returns:
    The KernelChoice.
  """
  if mode not in CPU_KERNELS:
    raise ValueError(f'--cpu_kernels={mode!r} is unknown; use one of {CPU_KERNELS}.')
  if mode != 'auto':
    choice = KernelChoice(mode, {}, {}, mode == 'ours', {}, 0.0, f'--cpu_kernels={mode}')
  elif fast_conv._accelerator_present():  # pylint: disable=protected-access
    choice = KernelChoice(mode, {}, {}, True, {}, 0.0, 'GPU/TPU: their own kernels')
  elif batch * image_size * image_size < MIN_PIXELS_TO_MEASURE:
    choice = KernelChoice(mode, {}, {}, True, {}, 0.0,
                          f'batch {batch} at {image_size} px is too small to time')
  else:
    measure = total_steps is None or total_steps >= MIN_STEPS_TO_MEASURE
    choice = _measure(model, image_size, batch, dtype, cache_path, repeats, measure,
                      reused_gradient_kernels)
    if choice is None:
      choice = KernelChoice(mode, {}, {}, True, {}, 0.0,
                            f'a run of {total_steps} steps is too short to pay for timing')
  if apply:
    apply_choice(choice)
  return choice


def apply_choice(choice: KernelChoice) -> None:
  """Sets `choice` in fast_conv / fast_batch_norm (read when the step is traced)."""
  fast_conv.set_gradient_choices(choice.conv_choices, choice.default)
  fast_conv.set_padded_filter_gradient_choices(choice.padded_filter_choices)
  fast_conv.set_patches_choices(choice.patches_choices)
  fast_batch_norm.set_fused_choices(choice.batch_norm_choices, choice.default)
  fast_batch_norm.set_native_choices(choice.native_batch_norm_choices)


def _conv_name(key: tuple[int, ...]) -> str:
  return 'conv ' + 'x'.join(str(size) for size in key)


def _norm_name(shape: tuple[int, ...]) -> str:
  return 'bn ' + 'x'.join(str(size) for size in shape)


def _conv_timed(cache: dict[str, dict[str, float]], key: str, input_shape: Sequence[int],
                kernel_shape: Sequence[int], stride: int, dtype: tf.DType) -> bool:
  """Whether the cache holds every timing `time_conv` takes for this conv."""
  return key in cache and (
      'ours_padded' in cache[key] or
      not fast_conv.padded_filter_gradient_applies(input_shape, kernel_shape, stride, dtype)
  ) and ('patches' in cache[key] or
         not fast_conv.patches_applies(input_shape, kernel_shape, stride))


def _time_missing(convs: list, norms: list, batch: int, dtype: tf.DType, repeats: int,
                  cache: dict[str, dict[str, float]], prefix: str,
                  reused_gradient_kernels: bool = False) -> int:
  """Times the shapes the cache lacks (into `cache`); returns how many."""
  measured = 0
  for input_shape, kernel_shape, stride in convs:
    name = _conv_name(fast_conv.conv_key(input_shape, kernel_shape, stride))
    if not _conv_timed(cache, prefix + name, input_shape, kernel_shape, stride, dtype):
      cache[prefix + name] = time_conv(input_shape, kernel_shape, stride, batch, dtype,
                                       repeats, reused_gradient_kernels)
      measured += 1
  for shape in norms:
    name = _norm_name(shape)
    if prefix + name not in cache:
      cache[prefix + name] = time_batch_norm(shape, batch, dtype, repeats)
      measured += 1
  return measured


def _measure(model: keras.Model, image_size: int, batch: int, dtype: tf.DType,
             cache_path: Optional[str], repeats: int, measure: bool = True,
             reused_gradient_kernels: bool = False) -> Optional[KernelChoice]:
  """Timings (cached or new) -> choices; None when `measure` is False and some shape
  has no cached timing."""
  cache_path = default_cache_path() if cache_path is None else cache_path
  cache = _load_cache(cache_path) if cache_path else {}
  prefix = _cache_prefix(dtype, batch, reused_gradient_kernels)
  convs, norms = layer_shapes(model, image_size)
  if not measure:
    if (any(not _conv_timed(cache, prefix + _conv_name(fast_conv.conv_key(*conv)), *conv,
                            dtype)
            for conv in convs) or
        any(prefix + _norm_name(shape) not in cache for shape in norms)):
      return None
  timings: dict[str, dict[str, float]] = {}
  conv_choices: dict[tuple[int, ...], bool] = {}
  padded_choices: dict[tuple[int, ...], bool] = {}
  patches_choices: dict[tuple[int, ...], bool] = {}
  norm_choices: dict[tuple[int, ...], bool] = {}
  native_choices: dict[tuple[int, ...], bool] = {}
  start = time.perf_counter()
  # One small tf.function per shape and side: TF's retracing warning is expected here.
  logger = tf.get_logger()
  previous_level = logger.level
  logger.setLevel('ERROR')
  try:
    measured = _time_missing(convs, norms, batch, dtype, repeats, cache, prefix,
                             reused_gradient_kernels)
  finally:
    logger.setLevel(previous_level)
  for input_shape, kernel_shape, stride in convs:
    key = fast_conv.conv_key(input_shape, kernel_shape, stride)
    name = _conv_name(key)
    timings[name] = cache[prefix + name]
    ours = min(timings[name]['ours'], timings[name].get('ours_padded', float('inf')))
    conv_choices[key] = ours <= timings[name]['stock']
    if 'ours_padded' in timings[name]:
      padded_choices[key] = timings[name]['ours_padded'] < timings[name]['ours']
    if 'patches' in timings[name]:
      patches_choices[key] = timings[name]['patches'] < min(ours, timings[name]['stock'])
  for shape in norms:
    name = _norm_name(shape)
    timings[name] = cache[prefix + name]
    fused = min(timings[name]['ours'], timings[name].get('tf_fused', float('inf')))
    norm_choices[shape] = fused <= timings[name]['stock']
    if 'tf_fused' in timings[name]:
      native_choices[shape] = timings[name]['ours'] <= timings[name]['tf_fused']
  seconds = time.perf_counter() - start
  if measured and cache_path:
    _save_cache(cache_path, cache)
  reason = (f'measured {measured} shapes in {seconds:.0f} s' if measured else
            f'timings cached in {cache_path}')
  return KernelChoice('auto', conv_choices, norm_choices, True, timings,
                      seconds if measured else 0.0, reason, padded_choices, patches_choices,
                      native_choices)


def choose_for_run(config: Any, model: keras.Model, num_replicas: int,
                   apply: bool = True, total_steps: Optional[int] = None) -> KernelChoice:
  """`choose_kernels` for a run's config (`tf_simclr.config.Config`): --cpu_kernels, the
  image size, the per-replica images per forward pass (micro-batch with gradient caching,
  both views when pretraining; then our input-gradient kernels are reused across
  micro-batches) and the model's compute dtype."""
  from tf_simclr import grad_cache  # pylint: disable=g-import-not-at-top
  train_config = config.train
  examples = train_config.train_batch_size // max(1, num_replicas)
  micro_batches = grad_cache.uses_grad_cache(config, num_replicas)
  if micro_batches:
    examples = train_config.micro_batch_size
  views = 2 if train_config.train_mode == 'pretrain' else 1
  # The native BN kernels have no XLA kernel, and `stock` means TF's kernels everywhere.
  native_batch_norm.set_enabled(not train_config.jit_compile and
                                train_config.cpu_kernels != 'stock')
  # The model's compute dtype: `build_model_for` resolved --mixed_precision (bf16 runs
  # float32 where it does not pay on this CPU).
  return choose_kernels(model, mode=train_config.cpu_kernels,
                        image_size=config.data.image_size, batch=views * examples,
                        dtype=tf.bfloat16 if model.compute_dtype == 'bfloat16' else tf.float32,
                        apply=apply, total_steps=total_steps,
                        reused_gradient_kernels=micro_batches)
