"""Shared benchmark helpers: matmul FLOP/s, peak RSS, FLOP counting, the timed train step.

FLOP convention (stated in every benchmark's output): one multiply-add = 2 FLOPs; only
convolutions and matrix multiplications are counted (BN, ReLU, pooling, adds are
memory-bound and left out); a training step costs 3x the forward FLOPs (forward, plus
backward for the input gradient and for the weight gradient).
"""

from __future__ import annotations

import collections
import os
import resource
import tempfile
import sys
import time
from typing import Any, Callable, Iterable, Sequence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # `python bench/x.py` from anywhere.
  sys.path.insert(0, REPO_ROOT)

import tf_simclr  # pylint: disable=g-import-not-at-top  (before TF: oneDNN kernels)
import tensorflow as tf  # pylint: disable=g-import-not-at-top

from tf_simclr import config as config_lib  # pylint: disable=g-import-not-at-top
from tf_simclr import train as train_lib  # pylint: disable=g-import-not-at-top
from tf_simclr.models import kernel_choice  # pylint: disable=g-import-not-at-top
from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=g-import-not-at-top

TRAIN_FLOPS_PER_FORWARD_FLOP = 3


def matmul_flops_per_sec(size: int, dtype: tf.DType = tf.float32, *, repeats: int = 5,
                         min_seconds: float = 0.2) -> float:
  """Best observed FLOP/s of a [size, size] x [size, size] `tf.linalg.matmul`.

  Args:
    size: matrix side n; one product is 2 n^3 FLOPs.
    dtype: tf.float32 or tf.bfloat16.
    repeats: timed samples; the best one is returned (the least disturbed by other
      processes on a shared machine).
    min_seconds: each sample chains enough products to last at least this long.
  """
  a = tf.random.uniform([size, size], dtype=tf.float32)
  b = tf.random.uniform([size, size], dtype=tf.float32)
  a, b = tf.cast(a, dtype), tf.cast(b, dtype)

  @tf.function
  def products(count: tf.Tensor) -> tf.Tensor:
    total = tf.zeros([], tf.float32)
    for _ in tf.range(count):
      total += tf.cast(tf.linalg.matmul(a, b)[0, 0], tf.float32)
    return total

  products(tf.constant(1)).numpy()  # Trace and warm up.
  start = time.perf_counter()
  products(tf.constant(1)).numpy()
  count = max(1, int(min_seconds / max(time.perf_counter() - start, 1e-6)))
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    products(tf.constant(count)).numpy()
    best = min(best, (time.perf_counter() - start) / count)
  return 2.0 * size ** 3 / best


def best_matmul_flops_per_sec(sizes: Iterable[int], dtype: tf.DType = tf.float32,
                              **kwargs: Any) -> float:
  """The highest `matmul_flops_per_sec` over matrix sizes (the attainable peak)."""
  return max(matmul_flops_per_sec(size, dtype, **kwargs) for size in sizes)


def reset_peak_rss() -> bool:
  """Resets the kernel's peak-RSS mark (VmHWM) of this process; False if unsupported."""
  try:
    with open('/proc/self/clear_refs', 'w', encoding='ascii') as clear_refs:
      clear_refs.write('5')
    return True
  except OSError:
    return False


def peak_rss_mb() -> float:
  """Peak resident memory of this process in MiB (since `reset_peak_rss`, if it worked).

  Reads VmHWM from /proc/self/status; falls back to getrusage's ru_maxrss (the
  lifetime peak) elsewhere.
  """
  try:
    with open('/proc/self/status', encoding='ascii') as status:
      for line in status:
        if line.startswith('VmHWM:'):
          return int(line.split()[1]) / 1024.0  # kB -> MiB.
  except OSError:
    pass
  max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return max_rss / (1024.0 * 1024.0 if sys.platform == 'darwin' else 1024.0)


def _op_flops(op: tf.Operation) -> int:
  """Multiply-add FLOPs (x2) of one conv / matmul op from its static shapes; else 0."""
  def dims(tensor: tf.Tensor) -> list[int]:
    shape = tensor.shape
    if shape.rank is None or any(d is None for d in shape.as_list()):
      raise ValueError(f'FLOP counting needs static shapes; {op.name} has {shape}. '
                       'Trace with a fixed batch and image size.')
    return shape.as_list()

  if op.type == 'Conv2D':
    kernel_height, kernel_width, in_channels, _ = dims(op.inputs[1])
    batch, out_height, out_width, out_channels = dims(op.outputs[0])
    return 2 * batch * out_height * out_width * out_channels * (
        kernel_height * kernel_width * in_channels)
  if op.type == 'DepthwiseConv2dNative':
    kernel_height, kernel_width, _, _ = dims(op.inputs[1])
    batch, out_height, out_width, out_channels = dims(op.outputs[0])
    return 2 * batch * out_height * out_width * out_channels * kernel_height * kernel_width
  if op.type in ('MatMul', 'BatchMatMulV2', 'BatchMatMulV3'):
    out_shape = dims(op.outputs[0])
    a_shape = dims(op.inputs[0])
    transpose_a = op.get_attr('transpose_a' if op.type == 'MatMul' else 'adj_x')
    inner = a_shape[-2] if transpose_a else a_shape[-1]
    count = 1
    for dim in out_shape:
      count *= dim
    return 2 * count * inner
  return 0


def forward_flops(function: Callable[..., Any], *example_inputs: tf.Tensor) -> int:
  """Conv + matmul FLOPs of one call of `function` on inputs of these static shapes.

  Traces `function` (e.g. `lambda x: model(x, training=False)`) into a graph, walks its
  ops, nested function bodies included, and sums 2 * multiply-adds per Conv2D,
  DepthwiseConv2dNative and MatMul from the static shapes.
  """
  specs = [tf.TensorSpec(x.shape, x.dtype) for x in example_inputs]
  graph = tf.function(function).get_concrete_function(*specs).graph
  total = 0
  seen: set[int] = set()

  def walk(current: tf.Graph) -> None:
    nonlocal total
    if id(current) in seen:
      return
    seen.add(id(current))
    for op in current.get_operations():
      total += _op_flops(op)
    for function_graph in getattr(current, '_functions', {}).values():
      inner = getattr(function_graph, 'graph', None)
      if inner is not None:
        walk(inner)

  walk(graph)
  return total


def time_calls(call: Callable[[], Any], num_calls: int) -> list[float]:
  """Seconds taken by each of `num_calls` calls of `call` (which must block)."""
  durations = []
  for _ in range(num_calls):
    start = time.perf_counter()
    call()
    durations.append(time.perf_counter() - start)
  return durations


def median(values: Sequence[float]) -> float:
  ordered = sorted(values)
  middle = len(ordered) // 2
  return ordered[middle] if len(ordered) % 2 else 0.5 * (ordered[middle - 1] + ordered[middle])


def load_average() -> float:
  """1-minute load average (how busy the shared machine was), or -1."""
  try:
    return os.getloadavg()[0]
  except OSError:
    return -1.0


def onednn_enabled() -> bool:
  """Whether TensorFlow runs its oneDNN CPU kernels in this process."""
  from tensorflow.python.util import _pywrap_util_port  # pylint: disable=g-import-not-at-top
  return bool(_pywrap_util_port.IsMklEnabled())


def fill_run_flags(flag_values: Any, model_dir_prefix: str, default_train_steps: int) -> None:
  """Defaults for run.py flags a benchmark leaves unset: a temporary --model_dir
  (required by the config; nothing is written there) and --train_steps."""
  if not flag_values.model_dir:
    flag_values.model_dir = tempfile.mkdtemp(prefix=model_dir_prefix)
  if not flag_values.train_steps:
    flag_values.train_steps = default_train_steps


def random_batch(config: config_lib.Config, batch_size: int, num_classes: int,
                 seed: int = 0) -> dict[str, tf.Tensor]:
  """One per-replica batch as the data module yields it (random pixels and labels)."""
  size = config.data.image_size
  views = 2 if config.train.train_mode == 'pretrain' else 1
  generator = tf.random.Generator.from_seed(seed)
  images = generator.uniform([views * batch_size, size, size, 3])  # [2b, H, W, 3]
  labels = tf.one_hot(generator.uniform([batch_size], 0, num_classes, tf.int32), num_classes)
  return {'image': images, 'label': labels, 'mask': tf.ones([batch_size])}


def build_train_loop(config: config_lib.Config, strategy: tf.distribute.Strategy,
                     num_classes: int) -> tuple[Callable[..., tf.Tensor], Any, Any]:
  """Model, optimizer and the `train_loop(iterator, num_steps)` of tf_simclr.train.

  The model builder, schedule and optimizer are `train.train`'s; the step and loop are
  `train.build_train_step` and `train.build_train_loop` themselves.

  Returns:
    (train_loop, model, optimizer).
  """
  train_config = config.train
  total_steps = max(1, train_config.train_steps)
  model, optimizer, _ = train_lib.build_model_and_optimizer(
      config, strategy, num_classes, total_steps * train_config.train_batch_size, total_steps)
  metric_names = train_lib.train_metric_names(config, train_config.train_mode == 'pretrain',
                                              model.supervised_head is not None)
  step_fn = train_lib.build_train_step(config, model, optimizer, strategy, metric_names)
  train_loop = train_lib.build_train_loop(strategy, step_fn, len(metric_names))
  return train_loop, model, optimizer


def timed_step_fn(config: config_lib.Config, strategy: tf.distribute.Strategy,
                   num_classes: int, warmup_steps: int) -> tuple[Callable[[], Any], Any]:
  """Builds the loop, runs the warm-up steps (tracing); returns (one_step, model).

  `one_step.tracing_count()` tells how often the loop function was traced (1 when
  nothing retraces).
  """
  train_lib.keep_nan_propagation()  # As tf_simclr.train.train does.
  train_loop, model, _ = build_train_loop(config, strategy, num_classes)
  # --cpu_kernels, as tf_simclr.train.train chooses them (before the step is traced).
  kernels = kernel_choice.choose_for_run(config, model, strategy.num_replicas_in_sync)
  per_replica_batch = config.train.train_batch_size // strategy.num_replicas_in_sync
  batch = random_batch(config, per_replica_batch, num_classes, config.train.seed)
  dataset = strategy.distribute_datasets_from_function(
      lambda context: tf.data.Dataset.from_tensors(batch).repeat())
  iterator = iter(dataset)
  train_loop(iterator, tf.constant(max(1, warmup_steps), tf.int32)).numpy()
  num_steps = tf.constant(1, tf.int32)

  def one_step() -> Any:
    return train_loop(iterator, num_steps).numpy()

  one_step.tracing_count = train_loop.experimental_get_tracing_count  # type: ignore[attr-defined]
  one_step.kernels = kernels  # type: ignore[attr-defined]
  return one_step, model


# Events of the executor and thread pools that wrap op executions (not ops).
EXECUTOR_EVENTS = frozenset({'Process', 'Run', 'ParallelFor', 'DoCompute', 'Start', 'Root',
                             'Generator', 'RunWithBorrowedArgs'})


def op_seconds_by_type(trace_dir: str) -> dict[str, list[float]]:
  """{op type: [summed seconds, calls]} over the host's TF op events of the trace."""
  totals: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
  paths = tf.io.gfile.glob(os.path.join(trace_dir, 'plugins', 'profile', '*', '*.xplane.pb'))
  if not paths:
    raise RuntimeError(f'the profiler wrote no *.xplane.pb under {trace_dir}')
  for path in paths:
    space = xplane_pb2.XSpace()
    with tf.io.gfile.GFile(path, 'rb') as file:
      space.ParseFromString(file.read())
    for plane in space.planes:
      if not plane.name.startswith('/host:CPU'):
        continue
      for line in plane.lines:
        # Executor threads: TF op events are named '<node name>:<op type>'.
        for event in line.events:
          name = plane.event_metadata[event.metadata_id].name
          if ':' not in name or name.startswith(('$', '::')):
            continue
          op_type = name.rsplit(':', 1)[1].lstrip('_')  # '_MklNativeConv2D' too.
          if (not op_type or not op_type[0].isupper() or ' ' in op_type
              or op_type in EXECUTOR_EVENTS):
            continue
          totals[op_type][0] += event.duration_ps * 1e-12
          totals[op_type][1] += 1
  return totals


def profile_op_types(call: Callable[[], Any], num_calls: int, top: int = 25) -> dict[str, Any]:
  """Traces `num_calls` calls with TF's profiler; prints and returns time per op type.

  Returns {'wall_seconds_per_step', 'op_seconds_per_step', 'op_types': {type:
  {'seconds_per_step', 'calls_per_step'}}}, "step" meaning one call.
  """
  trace_dir = tempfile.mkdtemp(prefix='bench_op_profile_')
  tf.profiler.experimental.start(trace_dir)
  start = time.perf_counter()
  for _ in range(num_calls):
    call()
  wall = (time.perf_counter() - start) / num_calls
  tf.profiler.experimental.stop()
  totals = op_seconds_by_type(trace_dir)
  summed = sum(seconds for seconds, _ in totals.values()) / num_calls
  ranked = sorted(totals.items(), key=lambda item: -item[1][0])
  print(f'wall {wall:.3f} s per step; op time summed {summed:.3f} s per step '
        '(more than the wall time when ops run in parallel)')
  print(f"{'op type':32s} {'s/step':>8s} {'share':>6s} {'calls/step':>10s}")
  for op_type, (seconds, calls) in ranked[:top]:
    print(f'{op_type:32s} {seconds / num_calls:8.3f} {seconds / num_calls / summed:6.1%} '
          f'{calls / num_calls:10.0f}')
  return {'wall_seconds_per_step': wall, 'op_seconds_per_step': summed,
          'op_types': {op_type: {'seconds_per_step': seconds / num_calls,
                                 'calls_per_step': calls / num_calls}
                       for op_type, (seconds, calls) in ranked}}
