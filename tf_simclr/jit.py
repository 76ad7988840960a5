"""XLA compilation of the training step (`--jit_compile`) under every strategy.

What XLA can own depends on where the cross-replica communication runs:

- one replica without merge calls (OneDeviceStrategy, the default strategy): the whole
  replica step, optimizer update included, is one `tf.function(jit_compile=True)`;
- TPUStrategy: XLA compiles the whole replica step anyway (the flag changes nothing);
- MirroredStrategy and MultiWorkerMirroredStrategy (CPUs and GPUs): the ops the replica
  step creates for forward, losses and backward on its own device are marked for XLA
  (`_XlaCompile`, as `tf.xla.experimental.jit_scope` does), so XLA compiles them into
  clusters on that device. The cross-replica collectives (synchronized batch norm's
  all-reduce, NT-Xent's all-gather) and the optimizer update (gradient all-reduce,
  then the per-device update in a merge call) stay TensorFlow ops between clusters.

Why not `strategy.run(tf.function(step, jit_compile=True))` there: on non-GPU devices
MirroredStrategy lifts such a function around all replicas, so one XLA cluster on
device 0 reads the other devices' variables ("Trying to access resource ... located
in device CPU:1 from device CPU:0"); called per replica, the function cannot hold
merge calls (all-gather, all-reduce, `apply_gradients`); XLA compiles collectives only
on GPUs. `jit_scope` itself is not used: its attribute scope belongs to the graph, and
MirroredStrategy's replica threads interleave at merge calls, which would leave the
scope on (or off) for the wrong ops.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import tensorflow as tf
from tensorflow.core.framework import attr_value_pb2

# Op types that stay TensorFlow ops between XLA clusters (cross-device communication).
_NOT_COMPILED_PREFIXES = ('Collective', 'Nccl', '_Send', '_Recv', '_HostSend', '_HostRecv')


def whole_step_compiles(strategy: tf.distribute.Strategy) -> bool:
  """Whether the whole replica step (optimizer update included) is one XLA function."""
  return (strategy.num_replicas_in_sync == 1 and
          not isinstance(strategy, (tf.distribute.MirroredStrategy,
                                    tf.distribute.MultiWorkerMirroredStrategy,
                                    tf.distribute.TPUStrategy)))


def marks_replica_ops(strategy: tf.distribute.Strategy) -> bool:
  """Whether `--jit_compile` marks the replica's compute ops (see module docstring)."""
  return isinstance(strategy, (tf.distribute.MirroredStrategy,
                               tf.distribute.MultiWorkerMirroredStrategy))


def compile_step(step_fn: Callable[..., Any], strategy: tf.distribute.Strategy
                 ) -> Callable[..., Any]:
  """`step_fn` as `strategy.run` should call it under `--jit_compile`.

  One device: `tf.function(step_fn, jit_compile=True)`. Elsewhere `step_fn` itself
  (it marks its own compute ops with `compiled_ops`, or TPUStrategy compiles it).
  """
  if whole_step_compiles(strategy):
    return tf.function(step_fn, jit_compile=True)
  return step_fn


@contextlib.contextmanager
def compiled_ops(enabled: bool = True, scope: str = 'replica_step') -> Iterator[None]:
  """Marks the ops created inside the block on the current device for XLA.

  Inside a `tf.function` graph, every op created in the block whose device is the
  device current at entry (the replica's device under `strategy.run`) gets
  `_XlaCompile=True` and `_XlaScope=<scope>/<device>`; TensorFlow's XLA clustering
  then compiles connected compilable ops into clusters on that device. Ops of other
  devices (another replica's, a merge call's reduction) and collectives are left
  alone; ops XLA cannot compile stay outside the clusters. Eagerly (or with
  `enabled=False`) this does nothing.

  Args:
    enabled: mark the ops (False: a plain block).
    scope: clusters of different scopes are never merged.
  """
  if not enabled or tf.executing_eagerly():
    yield
    return
  graph = tf.compat.v1.get_default_graph()
  first = len(graph.get_operations())
  device = tf.no_op(name='xla_device_probe').device  # The replica's device scope.
  yield
  marked = 0
  scope_value = attr_value_pb2.AttrValue(s=f'{scope}/{device}'.encode())
  compile_value = attr_value_pb2.AttrValue(b=True)
  for op in graph.get_operations()[first:]:
    if op.device != device or op.type.startswith(_NOT_COMPILED_PREFIXES):
      continue
    op._set_attr('_XlaCompile', compile_value)  # pylint: disable=protected-access
    op._set_attr('_XlaScope', scope_value)  # pylint: disable=protected-access
    marked += 1
  if not marked:
    raise RuntimeError(f'--jit_compile: no op on {device!r} was marked for XLA.')
