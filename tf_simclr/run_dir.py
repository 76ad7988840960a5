"""The files of a run directory (`--model_dir`), except checkpoints and exports.

A training run leaves in model_dir:

  flags.json             all flags of the run (JSON), written before training starts
  flags.txt              the same as an absl flagfile:
                         python run.py --flagfile=MODEL_DIR/flags.txt repeats the run
  ckpt-N.*, checkpoint   checkpoints (tf_simclr/checkpoints.py)
  saved_model/N/         hub exports of the encoder (hub_export)
  events.out.tfevents.*  TensorBoard summaries
  result.json            the newest evaluation; result_N.json one per evaluated step
  knn.json               the kNN monitor's history (tf_simclr/knn.py)

Every file here is written atomically (a temporary name, then
`tf.io.gfile.rename(overwrite=True)`), so a reader never sees half a file, and through
tf.io.gfile, so model_dir may be any file system TensorFlow reads (local, gs://,
ram://).
"""

from __future__ import annotations

import json
import math
import os
import re
import uuid
from typing import Any, Mapping, Optional

import tensorflow as tf

FLAGS_JSON = 'flags.json'
FLAGS_TXT = 'flags.txt'
RESULT_JSON = 'result.json'
SAVED_MODEL_DIRNAME = 'saved_model'


def write_json_atomic(path: str, data: Any) -> None:
  """Writes `data` as JSON to `path` via a temporary file and a rename.

  `data` may be JSON text already (written as it is) or values that
  `to_json_compatible` turns into JSON. A reader never sees a half-written file,
  even if the process dies mid-write.
  """
  text = data if isinstance(data, str) else json.dumps(
      to_json_compatible(data), indent=2, sort_keys=True)
  write_text_atomic(path, text + '\n')


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


def list_names(directory: str) -> list[str]:
  """File and folder names in `directory`; [] when it is not a directory."""
  if not directory or not tf.io.gfile.isdir(directory):
    return []
  try:
    return [name.rstrip('/') for name in tf.io.gfile.listdir(directory)]
  except tf.errors.NotFoundError:
    return []


def read_text(path: str) -> Optional[str]:
  """The text of the file at `path`, or None when it is missing (or a folder)."""
  if not tf.io.gfile.exists(path) or tf.io.gfile.isdir(path):
    return None
  with tf.io.gfile.GFile(path) as text_file:
    return text_file.read()


def read_json(path: str) -> Any:
  """The JSON value in the file at `path`.

  Raises:
    FileNotFoundError: there is no file at `path`.
    ValueError: one line naming `path` when it is not valid JSON.
  """
  try:
    with tf.io.gfile.GFile(path) as json_file:
      return json.load(json_file)
  except (FileNotFoundError, tf.errors.NotFoundError):
    raise FileNotFoundError(f'{path} not found.') from None
  except ValueError as error:  # JSONDecodeError, UnicodeDecodeError.
    raise ValueError(f'{path} is not valid JSON: {error}.') from None


# ---------------------------------------------------------------------------
# flags.json and flags.txt.


def flags_json_path(model_dir: str) -> str:
  return os.path.join(model_dir, FLAGS_JSON)


def flags_txt_path(model_dir: str) -> str:
  return os.path.join(model_dir, FLAGS_TXT)


def write_flags(model_dir: str, flags_json: str, flagfile: str) -> None:
  """Writes the run's flags: `flags.json` (JSON text) and `flags.txt` (a flagfile)."""
  write_json_atomic(flags_json_path(model_dir), flags_json)
  write_text_atomic(flags_txt_path(model_dir), flagfile)


def load_flags_json(path: str) -> dict[str, Any]:
  """The {flag: value} object of a run's flags.json at `path`, as written.

  Raises:
    FileNotFoundError: one line when the file does not exist.
    ValueError: one line naming `path` when it is not a JSON object.
  """
  try:
    values = read_json(path)
  except FileNotFoundError:
    raise FileNotFoundError(
        f'{path} not found: pass the model_dir of a run that wrote {FLAGS_JSON}.') from None
  if not isinstance(values, dict):
    raise ValueError(f'{path} must hold a JSON object of flag values.')
  return values


def read_flags(model_dir: str) -> Optional[dict[str, Any]]:
  """The flat {flag: value} of `model_dir/flags.json`; None when it is missing or is
  not a JSON object. Nested files (`Config.to_dict`) are flattened."""
  try:
    values = load_flags_json(flags_json_path(model_dir))
  except (FileNotFoundError, ValueError):
    return None
  flat: dict[str, Any] = {}
  for key, value in values.items():
    if isinstance(value, dict):
      flat.update(value)
    else:
      flat[key] = value
  return flat


# ---------------------------------------------------------------------------
# Result files.


def write_result(model_dir: str, result: Mapping[str, Any]) -> None:
  """Writes an evaluation's `result` (with 'global_step') to `result_<step>.json` and
  `result.json`."""
  step = int(result['global_step'])
  write_json_atomic(os.path.join(model_dir, f'result_{step}.json'), result)
  write_json_atomic(os.path.join(model_dir, RESULT_JSON), result)


def read_result(model_dir: str) -> Optional[dict[str, Any]]:
  """The newest evaluation of the run (`model_dir/result.json`); None when there is
  none or it does not read."""
  try:
    result = read_json(os.path.join(model_dir, RESULT_JSON))
  except (FileNotFoundError, ValueError):
    return None
  return result if isinstance(result, dict) else None


# ---------------------------------------------------------------------------
# Hub exports written during training (model_dir/saved_model/<step>/).


def export_dir(model_dir: str, step: int) -> str:
  """Where the export of `step` goes: model_dir/saved_model/<step>."""
  return os.path.join(model_dir, SAVED_MODEL_DIRNAME, str(step))


def has_hub_export(model_dir: str, step: int) -> bool:
  """Whether model_dir/saved_model/<step>/ holds a finished export."""
  return tf.io.gfile.exists(os.path.join(export_dir(model_dir, step), 'saved_model.pb'))


def remove_export_temporaries(model_dir: str) -> None:
  """Deletes model_dir/saved_model/.<step>.tmp-* folders of exports killed midway."""
  root = os.path.join(model_dir, SAVED_MODEL_DIRNAME)
  for name in list_names(root):
    if re.fullmatch(r'\.\d+\.tmp-.+', name):
      tf.io.gfile.rmtree(os.path.join(root, name))
