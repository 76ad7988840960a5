"""Checkpoints of a run (the other files of model_dir: tf_simclr/run_dir.py).

A training checkpoint holds the model, the optimizer (its slots and `iterations`,
which is the global step) and the input iterators, in a `tf.train.CheckpointManager`
under `model_dir`, so a restarted run continues at the same step, learning rate and
data position. Under MultiWorkerMirroredStrategy every worker must take part in
`save` (it runs collectives); only the chief writes to `model_dir`, the others to a
temporary directory that is deleted.

A save is never seen half-written: TensorFlow writes the data files under
`ckpt-N_temp/`, then the `ckpt-N.index` file (atomically, by rename), then the
`checkpoint` state file (atomically). A run killed mid-save leaves the previous state
file; `latest_complete_checkpoint` also skips any listed checkpoint whose index or
data shards are missing, and `remove_partial_saves` deletes the leftovers.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from typing import Any, Iterator, Optional

import tensorflow as tf

from tf_simclr import config as config_lib
from tf_simclr import run_dir
from tf_simclr.strategy import is_chief

# Flags that change variable shapes or the model structure; a checkpoint written
# with other values cannot be loaded.
MODEL_STRUCTURE_FLAGS = ('resnet_depth', 'width_multiplier', 'sk_ratio', 'se_ratio',
                         'proj_head_mode', 'proj_out_dim', 'num_proj_layers')
# Flags that cannot change when a run resumes from its own checkpoint: the model
# structure, the optimizer's variables and the saved input position depend on them.
RESUME_FIXED_FLAGS = MODEL_STRUCTURE_FLAGS + (
    'train_mode', 'lineareval_while_pretraining', 'fine_tune_after_block', 'optimizer',
    'train_batch_size', 'dataset', 'train_split', 'image_size', 'cifar_stem')


def resolve_checkpoint(path: str, flag_name: str = '--checkpoint') -> str:
  """A checkpoint file prefix from a prefix or a directory holding checkpoints.

  Raises:
    FileNotFoundError: nothing loadable at `path`.
  """
  if tf.io.gfile.exists(path + '.index'):  # A prefix (tested first: see `checkpoint_reader`).
    prefix = path
  elif tf.io.gfile.isdir(path):
    prefix = tf.train.latest_checkpoint(path)
    if prefix is None:
      raise FileNotFoundError(
          f'{flag_name}={path} is a directory without checkpoints; pass a model_dir '
          f'that holds ckpt-* files or a checkpoint file prefix such as {path}/ckpt-100.')
  elif path.endswith('.index') and tf.io.gfile.exists(path):
    prefix = path[:-len('.index')]
  else:
    raise FileNotFoundError(
        f'{flag_name}={path} does not exist; pass a checkpoint file prefix '
        f'(e.g. model_dir/ckpt-100) or a directory holding checkpoints.')
  try:
    checkpoint_reader(prefix)
  except (tf.errors.OpError, *_UNREADABLE) as error:
    raise ValueError(f'{flag_name}={path}: {prefix} is not a readable checkpoint '
                     f'({_first_line(error)}); pass another checkpoint.') from None
  return prefix


def checkpoint_of_run(model_dir: str, checkpoint: str = 'latest') -> str:
  """The checkpoint prefix to read from a training run: its newest one for 'latest',
  else `checkpoint` (a prefix or a directory) resolved.

  Raises:
    FileNotFoundError: `model_dir` is missing or holds no checkpoint.
  """
  if not tf.io.gfile.isdir(model_dir):
    raise FileNotFoundError(f'--model_dir={model_dir} does not exist; pass the directory '
                            'of a training run.')
  if checkpoint != 'latest':
    return resolve_checkpoint(checkpoint, '--checkpoint')
  checkpoint_path = tf.train.latest_checkpoint(model_dir)
  if checkpoint_path is None:
    raise FileNotFoundError(f'--model_dir={model_dir} holds no checkpoint (ckpt-*); '
                            'train first or pass --checkpoint=PATH.')
  return checkpoint_path


def checkpoint_reader(checkpoint_path: str) -> Any:
  """`tf.train.load_checkpoint` of a checkpoint prefix or a directory of checkpoints.

  A prefix is opened directly: `load_checkpoint` first asks `gfile.isdir(prefix)`,
  which TF's ram:// file system (the tests' stand-in for gs://) answers True for
  `dir/ckpt-2` because `dir/ckpt-2.index` starts with it.
  """
  if tf.io.gfile.exists(checkpoint_path + '.index'):
    return tf.compat.v1.train.NewCheckpointReader(checkpoint_path)
  return tf.train.load_checkpoint(checkpoint_path)


def checkpoint_step(checkpoint_path: str) -> int:
  """The global step stored in a training checkpoint (0 when it has none)."""
  reader = checkpoint_reader(checkpoint_path)
  for key in ('global_step/.ATTRIBUTES/VARIABLE_VALUE',
              'optimizer/iterations/.ATTRIBUTES/VARIABLE_VALUE'):
    if reader.has_tensor(key):
      return int(reader.get_tensor(key))
  return 0


def checkpoint_keys(checkpoint_path: str) -> dict[str, list[int]]:
  """{variable key: shape} of a checkpoint."""
  shapes = checkpoint_reader(checkpoint_path).get_variable_to_shape_map()
  return {key: list(shape) for key, shape in sorted(shapes.items())}


def _object_graph_node(checkpoint_path: str, object_path: tuple[str, ...]) -> Any:
  """(object graph, node id of `object_path`) of a checkpoint; node id None if absent."""
  from tensorflow.core.protobuf import trackable_object_graph_pb2  # pylint: disable=g-import-not-at-top
  reader = checkpoint_reader(checkpoint_path)
  graph = trackable_object_graph_pb2.TrackableObjectGraph()
  graph.ParseFromString(reader.get_tensor('_CHECKPOINTABLE_OBJECT_GRAPH'))
  node_id = 0
  for name in object_path:
    children = {child.local_name: child.node_id for child in graph.nodes[node_id].children}
    if name not in children:
      return graph, None
    node_id = children[name]
  return graph, node_id


def checkpoint_has_object(checkpoint_path: str, object_path: tuple[str, ...]) -> bool:
  """Whether the checkpoint's object graph has `object_path` (e.g. ('model', 'encoder')).

  Variable keys alone cannot tell: a variable reachable along several paths (model
  and optimizer) is stored under one of them only.
  """
  return _object_graph_node(checkpoint_path, object_path)[1] is not None


def object_variable_shapes(checkpoint_path: str,
                           object_path: tuple[str, ...]) -> dict[str, list[int]]:
  """{path below `object_path`: shape} of the variables of one object of a checkpoint.

  Found through the checkpoint's object graph, so a variable counts wherever its
  value is stored: training checkpoints store the trainable ones under
  `optimizer/_trainable_variables/N`, not under `model/...`. E.g.
  `object_variable_shapes(path, ('model', 'supervised_head'))` ->
  {'dense/_kernel': [512, 10], 'dense/bias': [10]}; {} when the object is absent.
  """
  graph, node_id = _object_graph_node(checkpoint_path, object_path)
  if node_id is None:
    return {}
  shapes_by_key = checkpoint_reader(checkpoint_path).get_variable_to_shape_map()
  shapes: dict[str, list[int]] = {}
  pending, seen = [(node_id, '')], {node_id}
  while pending:
    current, path = pending.pop()
    for attribute in graph.nodes[current].attributes:
      if attribute.name == 'VARIABLE_VALUE' and attribute.checkpoint_key in shapes_by_key:
        shapes[path] = list(shapes_by_key[attribute.checkpoint_key])
    for child in graph.nodes[current].children:
      if child.node_id not in seen:
        seen.add(child.node_id)
        pending.append((child.node_id, f'{path}/{child.local_name}'.lstrip('/')))
  return shapes


def check_compatible(checkpoint_path: str, config: config_lib.Config) -> None:
  """Raises ValueError when the run that wrote the checkpoint built another model.

  Compares the model-structure flags of the `flags.json` next to the checkpoint
  (when present) with `config`, e.g. 'checkpoint X has resnet_depth 50 but
  --resnet_depth=18'.
  """
  run_flags = run_dir.read_flags(os.path.dirname(checkpoint_path))
  if run_flags is None:
    return
  ours = config.flat_dict()
  for name in MODEL_STRUCTURE_FLAGS:
    if name in run_flags and run_flags[name] != ours[name]:
      raise ValueError(
          f'checkpoint {checkpoint_path} has {name} {run_flags[name]} but '
          f'--{name}={ours[name]}; use --{name}={run_flags[name]} or another checkpoint.')


def check_resume_flags(checkpoint_path: str, config: config_lib.Config) -> list[str]:
  """Compares `config` with the `flags.json` of the run that wrote `checkpoint_path`.

  Call it before anything is written to model_dir when a run resumes there.

  Returns:
    Notes (one line each) on changed flags that may change on resume, e.g. that
    --data_dir changed; [] when nothing changed or the run has no flags.json.

  Raises:
    ValueError: one line naming each changed flag of `RESUME_FIXED_FLAGS` with the
      run's value and the new one.
  """
  run_flags = run_dir.read_flags(os.path.dirname(checkpoint_path))
  if run_flags is None:
    return []
  ours = run_dir.to_json_compatible(config.flat_dict())
  changed = sorted(name for name in ours
                   if name in run_flags and run_flags[name] != ours[name])
  fixed = [name for name in changed if name in RESUME_FIXED_FLAGS]
  if fixed:
    listed = ', '.join(f'--{name}={_flag_text(run_flags[name])} (now '
                       f'{_flag_text(ours[name])})' for name in fixed)
    raise ValueError(
        f'--model_dir={os.path.dirname(checkpoint_path)} holds a run (checkpoint '
        f'{os.path.basename(checkpoint_path)}) started with {listed}; these flags cannot '
        'change when a run resumes: pass the run\'s values, or a new --model_dir to start '
        'another run (--train_steps, --train_epochs, --learning_rate, --eval_* and the '
        'checkpoint/export flags may change).')
  notes = []
  if 'data_dir' in changed:
    notes.append(f'warning: --data_dir changed from {run_flags["data_dir"]} to '
                 f'{ours["data_dir"]} since this run started; resuming with the new one '
                 '(its input position assumes the same data).')
  others = [name for name in changed if name not in ('data_dir', 'model_dir', 'checkpoint')]
  if others:
    notes.append('note: resuming with changed ' + ', '.join(
        f'--{name}={_flag_text(ours[name])} (was {_flag_text(run_flags[name])})'
        for name in others) + '.')
  return notes


def _flag_text(value: Any) -> str:
  return 'None' if value is None else str(value)


class UnreadableCheckpointError(ValueError):
  """A checkpoint's files are truncated or corrupt (its index reads, its data not)."""


# What reading a truncated or garbled checkpoint raises (TF 2.21: IndexError "Read
# less bytes than requested" for a short data file; OpError "not an sstable").
_UNREADABLE = (IndexError, tf.errors.DataLossError, tf.errors.OutOfRangeError)


def _first_line(error: BaseException) -> str:
  text = str(error).strip()
  return (text.splitlines()[0] if text else repr(error))[:300]


def restore_or_explain(checkpoint: tf.train.Checkpoint, checkpoint_path: str) -> Any:
  """`checkpoint.restore(path)`; a shape mismatch becomes one clear ValueError line.

  Raises:
    UnreadableCheckpointError: the checkpoint's files are truncated or corrupt.
    ValueError: it was written for another model.
  """
  try:
    status = checkpoint.restore(checkpoint_path)
    status.assert_existing_objects_matched()
    return status.expect_partial()
  except _UNREADABLE as error:
    raise UnreadableCheckpointError(
        f'checkpoint {checkpoint_path} is truncated or corrupt ({_first_line(error)}); '
        'pass another checkpoint.') from None
  except (ValueError, AssertionError, tf.errors.OpError) as error:
    raise ValueError(
        f'checkpoint {checkpoint_path} does not match this model ({_first_line(error)}); '
        f'check --{", --".join(MODEL_STRUCTURE_FLAGS)} against the run that wrote it.'
    ) from None


def restore_training_state(checkpoint: tf.train.Checkpoint, checkpoint_path: str) -> Any:
  """Restores a run's own checkpoint (model, optimizer, step, input position).

  Raises:
    UnreadableCheckpointError: the checkpoint's files are truncated or corrupt.
    ValueError: one line when the checkpoint was written for another model or input
      pipeline (e.g. model_dir holds a run with another --resnet_depth).
  """
  try:
    return checkpoint.restore(checkpoint_path).expect_partial()
  except _UNREADABLE as error:
    raise UnreadableCheckpointError(
        f'checkpoint {checkpoint_path} is truncated or corrupt ({_first_line(error)})'
    ) from None
  except (ValueError, AssertionError, tf.errors.OpError) as error:
    model_dir = os.path.dirname(checkpoint_path)
    raise ValueError(
        f'--model_dir={model_dir} holds checkpoint {checkpoint_path} of another run that '
        f'does not fit this one ({_first_line(error)}); use a new --model_dir or the flags '
        'of that run.') from None


def iterator_trackables(iterator: Any) -> dict[str, Any]:
  """The checkpointable per-replica input iterators inside `iterator`.

  `tf.distribute` iterators are not checkpointable themselves in TF 2.21, but with
  `InputReplicationMode.PER_REPLICA` and `experimental_fetch_to_device=False` each
  replica reads its own `tf.data` iterator, which is. Returns {} when the iterator
  layout is unknown (the data then restart from the beginning on resume).
  """
  if isinstance(iterator, tf.data.Iterator):
    return {'replica_0': iterator}
  inner = []
  for worker_iterator in getattr(iterator, '_iterators', ()) or ():
    data_iterator = getattr(worker_iterator, '_iterator', None)
    if not isinstance(data_iterator, tf.data.Iterator):
      return {}
    inner.append(data_iterator)
  return {f'replica_{index}': data_iterator for index, data_iterator in enumerate(inner)}


class CheckpointSaver:
  """A `tf.train.CheckpointManager` under `model_dir` that every worker may call.

  On the chief it saves to `model_dir`; on other MultiWorkerMirroredStrategy workers
  it saves to a temporary directory (the save runs collectives, so all must call)
  that `close` deletes.
  """

  def __init__(self, checkpoint: tf.train.Checkpoint, model_dir: str,
               keep_checkpoint_max: int, strategy: tf.distribute.Strategy) -> None:
    self.chief = is_chief(strategy)
    if self.chief:
      self.directory = model_dir
      self._temp_dir = None
    else:
      self._temp_dir = tempfile.mkdtemp(prefix='tf_simclr_worker_ckpt_')
      self.directory = self._temp_dir
    self.checkpoint = checkpoint
    self.manager = tf.train.CheckpointManager(
        checkpoint, directory=self.directory,
        max_to_keep=keep_checkpoint_max if self.chief else 1)
    # Non-chief workers resume from the chief's checkpoints.
    self._read_manager = self.manager if self.chief else tf.train.CheckpointManager(
        checkpoint, directory=model_dir, max_to_keep=keep_checkpoint_max)

  @property
  def latest_checkpoint(self) -> Optional[str]:
    """The newest complete checkpoint of `model_dir` (None when there is none)."""
    return latest_complete_checkpoint(self._read_manager.directory)

  def restore_latest(self) -> tuple[Optional[str], list[str]]:
    """Restores the newest readable checkpoint of `model_dir` into the checkpoint.

    Returns:
      (the checkpoint restored or None when there is none, notes on newer checkpoints
      skipped because they are incomplete or unreadable).

    Raises:
      ValueError: the checkpoints belong to another run, or none of them reads.
    """
    directory = self._read_manager.directory
    listed = tf.train.latest_checkpoint(directory)
    notes, unreadable = [], []
    for path in complete_checkpoints(directory):
      try:
        restore_training_state(self.checkpoint, path)
      except UnreadableCheckpointError as error:
        unreadable.append(path)
        notes.append(f'note: {error}; trying an older checkpoint.')
        continue
      if listed and listed != path and listed not in unreadable:
        notes.insert(0, f'note: checkpoint {listed} is incomplete; resuming from {path}.')
      return path, notes
    if unreadable:
      raise ValueError(f'--model_dir={directory}: no readable checkpoint (tried '
                       f'{", ".join(unreadable)}); restore the files or use a new --model_dir.')
    return None, notes

  def save(self, step: int) -> str:
    """Saves as `ckpt-<step>`; returns the path (a temporary one off the chief)."""
    return self.manager.save(checkpoint_number=step)

  def close(self) -> None:
    if self._temp_dir is not None:
      shutil.rmtree(self._temp_dir, ignore_errors=True)
      self._temp_dir = None


_DATA_SHARD = re.compile(r'\.data-(\d{5})-of-(\d{5})$')


def is_complete_checkpoint(prefix: str) -> bool:
  """Whether `prefix.index` and all of its `prefix.data-*-of-N` shards exist and read."""
  if not tf.io.gfile.exists(prefix + '.index'):
    return False
  directory, base = os.path.split(prefix)
  shards = [name for name in run_dir.list_names(directory)
            if name.startswith(base + '.data-') and _DATA_SHARD.search(name)]
  counts = {int(_DATA_SHARD.search(name).group(2)) for name in shards}
  if len(counts) != 1 or len(shards) != counts.pop():
    return False
  try:
    checkpoint_reader(prefix)
  except (tf.errors.OpError, ValueError):
    return False
  return True


def latest_complete_checkpoint(directory: str) -> Optional[str]:
  """The newest complete checkpoint in `directory`, or None.

  Candidates, newest first: those the `checkpoint` state file lists, then any other
  `ckpt-<N>.index` in the directory (by N). A checkpoint with a missing index or data
  shard (a save killed midway, a file lost) is skipped. Any tf.io.gfile path.
  """
  return next(complete_checkpoints(directory), None)


def complete_checkpoints(directory: str) -> Iterator[str]:
  """The complete checkpoints of `directory`, newest first (see
  `latest_complete_checkpoint`), checked one at a time as they are asked for."""
  if not directory or not tf.io.gfile.isdir(directory):
    return
  candidates: list[str] = []
  try:
    state = tf.train.get_checkpoint_state(directory)
  except (tf.errors.OpError, ValueError):  # A garbled `checkpoint` state file.
    state = None
  if state is not None:
    listed = list(state.all_model_checkpoint_paths) or [state.model_checkpoint_path]
    if state.model_checkpoint_path and state.model_checkpoint_path not in listed:
      listed.append(state.model_checkpoint_path)
    for path in reversed(listed):
      candidates.append(path if os.path.isabs(path) or '://' in path
                        else os.path.join(directory, path))
  found = []
  for name in run_dir.list_names(directory):
    match = re.fullmatch(r'ckpt-(\d+)\.index', name)
    if match:
      found.append((int(match.group(1)), os.path.join(directory, name[:-len('.index')])))
  candidates += [prefix for _, prefix in sorted(found, reverse=True)]
  for prefix in dict.fromkeys(candidates):
    if is_complete_checkpoint(prefix):
      yield prefix


def remove_partial_saves(directory: str) -> list[str]:
  """Deletes what a save killed midway leaves in `directory`; returns the paths.

  That is `ckpt-N_temp/` folders, data shards of a `ckpt-N` without an index and
  `checkpoint.tmp*` state files. Call it on the chief only, before training starts.
  """
  removed = []
  if not directory or not tf.io.gfile.isdir(directory):
    return removed
  names = run_dir.list_names(directory)
  for name in names:
    path = os.path.join(directory, name)
    partial = (re.match(r'ckpt-\d+_temp', name) or name.startswith('checkpoint.tmp') or
               (_DATA_SHARD.search(name) and name.startswith('ckpt-') and
                _DATA_SHARD.sub('', name) + '.index' not in names))
    if not partial:
      continue
    if tf.io.gfile.isdir(path):
      tf.io.gfile.rmtree(path)
    else:
      tf.io.gfile.remove(path)
    removed.append(path)
  return removed
