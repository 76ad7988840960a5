"""Checks that a traced training step has the shape TPUs need.

A TPU runs the replica step as one XLA program compiled for fixed shapes: every
tensor's shape must be static (a dynamic dimension means a recompile per new shape,
or no compile at all), and nothing in it may need the host (Python callbacks,
printing, string tensors, summaries): such ops need outside compilation, a round trip
to the host in every step. `step_problems` lists what breaks those rules in a traced
`tf.function`, nested function bodies (cond/while branches, called functions)
included.
"""

from __future__ import annotations

from typing import Any, Iterator

import tensorflow as tf

# Op types that run on the host (or cannot run inside a TPU program at all).
HOST_OP_TYPES = frozenset({
    'PyFunc', 'PyFuncStateless', 'EagerPyFunc', 'Print', 'PrintV2', 'StringFormat',
    'AsString', 'StringJoin', 'RegexReplace', 'Assert', 'WriteSummary',
    'WriteScalarSummary', 'WriteImageSummary', 'WriteHistogramSummary',
    'WriteAudioSummary', 'WriteRawProtoSummary', 'ScalarSummary', 'ImageSummary',
    'HistogramSummary', 'MergeSummary', 'IteratorGetNext', 'IteratorGetNextSync',
    'IteratorGetNextAsOptional', 'ReadFile', 'WriteFile', 'DecodeJpeg', 'DecodeImage',
    'DecodePng', 'SaveV2', 'RestoreV2'})


def _opaque(tensor: tf.Tensor) -> bool:
  """A kernel's scratch output whose shape TF leaves unknown by design: the
  `reserve_space_3` of FusedBatchNormV3 (cuDNN workspace; XLA gives it a fixed shape)
  and the zeros its gradient builds for it."""
  op = tensor.op
  if op.type == 'FusedBatchNormV3' and tensor.value_index == 5:
    return True
  return op.type == 'ZerosLike' and _opaque(op.inputs[0])


def _graphs(graph: Any, seen: set[int]) -> Iterator[Any]:
  """`graph` and the graphs of the functions it calls, each once."""
  if id(graph) in seen:
    return
  seen.add(id(graph))
  yield graph
  for function in getattr(graph, '_functions', {}).values():  # pylint: disable=protected-access
    body = getattr(function, 'graph', None)
    if body is not None:
      yield from _graphs(body, seen)


def step_problems(concrete_function: Any) -> list[str]:
  """What keeps a traced step from compiling as one static-shape TPU program.

  Args:
    concrete_function: `tf.function(...).get_concrete_function(specs)` of the step,
      traced with fully defined input shapes.

  Returns:
    One line per problem, e.g. "dynamic shape (None, 16) of `resnet/.../Conv2D:0`
    (Conv2D)" or "host op PrintV2 `PrintV2`"; [] when the step is TPU-shaped.
  """
  problems = []
  for graph in _graphs(concrete_function.graph, set()):
    for op in graph.get_operations():
      if op.type in HOST_OP_TYPES:
        problems.append(f'host op {op.type} `{op.name}`')
        continue
      for tensor in op.outputs:
        if tensor.dtype == tf.string:
          problems.append(f'string tensor `{tensor.name}` ({op.type})')
        elif tensor.dtype != tf.resource and tensor.dtype != tf.variant and (
            not tensor.shape.is_fully_defined()) and not _opaque(tensor):
          problems.append(f'dynamic shape {tensor.shape} of `{tensor.name}` ({op.type})')
  return problems
