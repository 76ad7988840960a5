"""Checkpoints and result files of a run.

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

import glob
import json
import math
import os
import re
import shutil
import tempfile
import uuid
from typing import Any, Mapping, Optional

import tensorflow as tf

from tf_simclr import config as config_lib
from tf_simclr.strategy import is_chief

# Flags that change variable shapes or the model structure; a checkpoint written
# with other values cannot be loaded.
MODEL_STRUCTURE_FLAGS = ('resnet_depth', 'width_multiplier', 'sk_ratio', 'se_ratio',
                         'proj_head_mode', 'proj_out_dim', 'num_proj_layers')


def write_json_atomic(path: str, data: Any) -> None:
  """Writes `data` as JSON to `path` via a temporary file and a rename.

  A reader never sees a half-written file, even if the process dies mid-write.
  """
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  text = data if isinstance(data, str) else json.dumps(
      to_json_compatible(data), indent=2, sort_keys=True)
  file_descriptor, temp_path = tempfile.mkstemp(
      prefix='.' + os.path.basename(path) + '.', suffix='.tmp', dir=directory)
  try:
    with os.fdopen(file_descriptor, 'w', encoding='utf-8') as json_file:
      json_file.write(text)
      json_file.write('\n')
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temp_path, 0o666 & ~umask)  # mkstemp makes 0600; use the usual mode.
    os.replace(temp_path, path)
  except BaseException:
    if os.path.exists(temp_path):
      os.remove(temp_path)
    raise


def write_text_atomic(path: str, text: str) -> None:
  """Writes `text` to `path` (any tf.io.gfile file system) via a temporary file and a
  rename, so a reader never sees a half-written file."""
  directory, name = os.path.split(path)
  tf.io.gfile.makedirs(directory or '.')
  temp_path = os.path.join(directory, f'.{name}.{uuid.uuid4().hex}.tmp')
  try:
    with tf.io.gfile.GFile(temp_path, 'w') as text_file:
      text_file.write(text)
    tf.io.gfile.rename(temp_path, path, overwrite=True)
  except BaseException:
    if tf.io.gfile.exists(temp_path):
      tf.io.gfile.remove(temp_path)
    raise


def to_json_compatible(value: Any) -> Any:
  """NumPy / TF scalars and arrays -> plain Python numbers and lists."""
  if isinstance(value, Mapping):
    return {str(key): to_json_compatible(item) for key, item in value.items()}
  if isinstance(value, (list, tuple)):
    return [to_json_compatible(item) for item in value]
  if isinstance(value, tf.Tensor):
    value = value.numpy()
  if hasattr(value, 'tolist'):  # NumPy arrays and scalars.
    return to_json_compatible(value.tolist())
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)
  return value


def resolve_checkpoint(path: str, flag_name: str = '--checkpoint') -> str:
  """A checkpoint file prefix from a prefix or a directory holding checkpoints.

  Raises:
    FileNotFoundError: nothing loadable at `path`.
  """
  if tf.io.gfile.isdir(path):
    latest = tf.train.latest_checkpoint(path)
    if latest is None:
      raise FileNotFoundError(
          f'{flag_name}={path} is a directory without checkpoints; pass a model_dir '
          f'that holds ckpt-* files or a checkpoint file prefix such as {path}/ckpt-100.')
    return latest
  if tf.io.gfile.exists(path + '.index'):
    return path
  if path.endswith('.index') and tf.io.gfile.exists(path):
    return path[:-len('.index')]
  raise FileNotFoundError(
      f'{flag_name}={path} does not exist; pass a checkpoint file prefix '
      f'(e.g. model_dir/ckpt-100) or a directory holding checkpoints.')


def checkpoint_step(checkpoint_path: str) -> int:
  """The global step stored in a training checkpoint (0 when it has none)."""
  reader = tf.train.load_checkpoint(checkpoint_path)
  for key in ('global_step/.ATTRIBUTES/VARIABLE_VALUE',
              'optimizer/iterations/.ATTRIBUTES/VARIABLE_VALUE'):
    if reader.has_tensor(key):
      return int(reader.get_tensor(key))
  return 0


def checkpoint_keys(checkpoint_path: str) -> dict[str, list[int]]:
  """{variable key: shape} of a checkpoint."""
  return dict(tf.train.list_variables(checkpoint_path))


def checkpoint_has_object(checkpoint_path: str, object_path: tuple[str, ...]) -> bool:
  """Whether the checkpoint's object graph has `object_path` (e.g. ('model', 'encoder')).

  Variable keys alone cannot tell: a variable reachable along several paths (model
  and optimizer) is stored under one of them only.
  """
  from tensorflow.core.protobuf import trackable_object_graph_pb2  # pylint: disable=g-import-not-at-top
  reader = tf.train.load_checkpoint(checkpoint_path)
  graph = trackable_object_graph_pb2.TrackableObjectGraph()
  graph.ParseFromString(reader.get_tensor('_CHECKPOINTABLE_OBJECT_GRAPH'))
  node = graph.nodes[0]
  for name in object_path:
    children = {child.local_name: child.node_id for child in node.children}
    if name not in children:
      return False
    node = graph.nodes[children[name]]
  return True


def read_run_flags(checkpoint_path: str) -> Optional[dict[str, Any]]:
  """The flat {flag: value} of the `flags.json` next to a checkpoint, if any."""
  flags_path = os.path.join(os.path.dirname(checkpoint_path), 'flags.json')
  if not tf.io.gfile.exists(flags_path):
    return None
  try:
    with tf.io.gfile.GFile(flags_path) as json_file:
      values = json.load(json_file)
  except (json.JSONDecodeError, UnicodeDecodeError):
    return None
  if not isinstance(values, dict):
    return None
  flat: dict[str, Any] = {}
  for key, value in values.items():  # Nested `Config.to_dict` files too.
    if isinstance(value, dict):
      flat.update(value)
    else:
      flat[key] = value
  return flat


def check_compatible(checkpoint_path: str, config: config_lib.Config) -> None:
  """Raises ValueError when the run that wrote the checkpoint built another model.

  Compares the model-structure flags of the `flags.json` next to the checkpoint
  (when present) with `config`, e.g. 'checkpoint X has resnet_depth 50 but
  --resnet_depth=18'.
  """
  run_flags = read_run_flags(checkpoint_path)
  if run_flags is None:
    return
  ours = config.flat_dict()
  for name in MODEL_STRUCTURE_FLAGS:
    if name in run_flags and run_flags[name] != ours[name]:
      raise ValueError(
          f'checkpoint {checkpoint_path} has {name} {run_flags[name]} but '
          f'--{name}={ours[name]}; use --{name}={run_flags[name]} or another checkpoint.')


def restore_or_explain(checkpoint: tf.train.Checkpoint, checkpoint_path: str) -> Any:
  """`checkpoint.restore(path)`; a shape mismatch becomes one clear ValueError line."""
  try:
    status = checkpoint.restore(checkpoint_path)
    status.assert_existing_objects_matched()
    return status.expect_partial()
  except (ValueError, AssertionError, tf.errors.InvalidArgumentError) as error:
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
    raise ValueError(
        f'checkpoint {checkpoint_path} does not match this model ({first_line[:300]}); '
        f'check --{", --".join(MODEL_STRUCTURE_FLAGS)} against the run that wrote it.'
    ) from None


def restore_training_state(checkpoint: tf.train.Checkpoint, checkpoint_path: str) -> Any:
  """Restores a run's own checkpoint (model, optimizer, step, input position).

  Raises:
    ValueError: one line when the checkpoint was written for another model or input
      pipeline (e.g. model_dir holds a run with another --resnet_depth).
  """
  try:
    return checkpoint.restore(checkpoint_path).expect_partial()
  except (ValueError, AssertionError, tf.errors.OpError) as error:
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
    model_dir = os.path.dirname(checkpoint_path)
    raise ValueError(
        f'--model_dir={model_dir} holds checkpoint {checkpoint_path} of another run that '
        f'does not fit this one ({first_line[:300]}); use a new --model_dir or the flags '
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
  if not os.path.isfile(prefix + '.index'):
    return False
  shards = glob.glob(glob.escape(prefix) + '.data-*-of-*')
  counts = {int(match.group(2)) for match in map(_DATA_SHARD.search, shards) if match}
  if len(counts) != 1 or len(shards) != counts.pop():
    return False
  try:
    tf.train.load_checkpoint(prefix)
  except (tf.errors.OpError, ValueError):
    return False
  return True


def latest_complete_checkpoint(directory: str) -> Optional[str]:
  """The newest complete checkpoint in `directory`, or None.

  Candidates, newest first: those the `checkpoint` state file lists, then any other
  `ckpt-<N>.index` in the directory (by N). A checkpoint with a missing index or data
  shard (a save killed midway, a file lost) is skipped.
  """
  if not directory or not tf.io.gfile.isdir(directory):
    return None
  candidates: list[str] = []
  state = tf.train.get_checkpoint_state(directory)
  if state is not None:
    listed = list(state.all_model_checkpoint_paths) or [state.model_checkpoint_path]
    if state.model_checkpoint_path and state.model_checkpoint_path not in listed:
      listed.append(state.model_checkpoint_path)
    for path in reversed(listed):
      candidates.append(path if os.path.isabs(path) else os.path.join(directory, path))
  found = []
  for index_path in glob.glob(os.path.join(glob.escape(directory), 'ckpt-*.index')):
    match = re.fullmatch(r'ckpt-(\d+)\.index', os.path.basename(index_path))
    if match:
      found.append((int(match.group(1)), index_path[:-len('.index')]))
  candidates += [prefix for _, prefix in sorted(found, reverse=True)]
  for prefix in candidates:
    if is_complete_checkpoint(prefix):
      return prefix
  return None


def remove_partial_saves(directory: str) -> list[str]:
  """Deletes what a save killed midway leaves in `directory`; returns the paths.

  That is `ckpt-N_temp/` folders and data shards of a `ckpt-N` without an index.
  Call it on the chief only, before training starts.
  """
  removed = []
  if not directory or not os.path.isdir(directory):
    return removed
  for path in glob.glob(os.path.join(glob.escape(directory), 'ckpt-*_temp*')):
    shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)
    removed.append(path)
  for path in glob.glob(os.path.join(glob.escape(directory), 'ckpt-*.data-*-of-*')):
    prefix = _DATA_SHARD.sub('', path)
    if not os.path.exists(prefix + '.index'):
      os.remove(path)
      removed.append(path)
  return removed
