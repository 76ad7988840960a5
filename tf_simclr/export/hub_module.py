"""Exports a SimCLR model as a TF2 SavedModel in the TF Hub reusable format.

One export serves three kinds of consumers:

* tf_keras + TF Hub: `hub.KerasLayer(export_dir, trainable=True)` returns the image
  feature vector [batch, features] (`final_avg_pool`) and fine-tunes the encoder,
  BN moving statistics included. `arguments={'as_dict': True}` (optionally with
  `output_key='block_group4'` etc.) returns the named endpoints instead, in training
  mode too; `signature='serving_default', signature_outputs_as_dict=True` returns
  them in inference mode.
* Keras 3: `keras.layers.TFSMLayer(export_dir, call_endpoint='serve',
  call_training_endpoint='train_call')` returns the dict of named endpoints.
* Plain TF / TF Serving: `tf.saved_model.load(export_dir)` with the same callables and
  a `serving_default` signature returning the dict of named endpoints.

The saved object is a `tf.__internal__.tracking.AutoTrackable` (a `tf.Module` cannot
take a `variables` attribute) with:

* `__call__(images, training=False, as_dict=False)`: images float32 [B, H, W, 3] in
  [0, 1], any H and W. Traced for both Python values of `training` (Keras 3 batch
  norm needs a Python bool) and of `as_dict`. The feature vector runs the encoder only.
* `serve(images)` / `train_call(images)`: the endpoint dict in inference / training
  mode (training mode uses batch statistics and updates the BN moving averages):
  `initial_conv`, `initial_max_pool`, `block_group1`..`block_group4`,
  `final_avg_pool`, `ft_hidden`, `proj_head_output` and `logits_sup` (those the model
  returns), all float32.
* `variables` (all of the model's), `trainable_variables` (the encoder's trainable
  ones: the heads get no gradient from the feature vector) and
  `regularization_losses` (zero-argument functions, `weight_decay * sum(w**2) / 2` per
  trainable encoder kernel; none when `weight_decay` is 0).
* `image_size`: an int32 variable, the training image size (0 if unknown).
* `input_contract`: a string variable, `INPUT_CONTRACT` (what the callables take).
* the `serving_default` signature: `serve` with the input named `images`.

Every callable checks its input (`checked_images`): uint8 images are taken as 0-255
pixels and divided by 255; images with
other than 3 channels or with values outside [0, 1] (beyond a slack of 0.5, so 0-255
floats or mean/std-normalized images) raise InvalidArgumentError saying what the
encoder takes and what it got. Other dtypes and ranks find no matching function.
Under XLA (`jit_compile=True`) TensorFlow drops the assertions: a wrong channel count
still fails (in XLA's convolution), a wrong range does not.

The export is written to a temporary directory next to `export_dir` and renamed into
place, so a reader never sees a half-written export.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import uuid
from typing import Any, Callable, Iterator, Optional

import keras

import tensorflow as tf

from tf_simclr import run_dir
from tf_simclr.export import model_card
from tf_simclr.models import native_batch_norm
from tf_simclr.models import resnet
from tf_simclr.optim import variable_path

# The endpoint returned by `__call__` (TF Hub image feature-vector convention).
FEATURE_VECTOR_KEY = 'final_avg_pool'
# Names the exported dict may contain, in the model's order; others are dropped.
# The encoder's endpoints, then those of the SimCLRModel heads.
ENDPOINT_NAMES = resnet.ENDPOINT_NAMES + ('ft_hidden', 'proj_head_output', 'logits_sup')
SERVING_SIGNATURE = 'serving_default'
# What every exported callable takes (also in the model card and the `input_contract`
# variable of the export).
INPUT_CONTRACT = ('images: float32 [batch, height, width, 3], RGB, values in [0, 1] '
                  '(uint8 pixels are divided by 255 inside; 0-255 floats are an error); '
                  'any height and width, best at the training image size')
# The input of the serving signature.
IMAGE_SPEC = tf.TensorSpec([None, None, None, 3], tf.float32, name='images')
# Input dtypes the exported callables accept (uint8 is divided by 255). Each dtype adds
# traces to every export (~1.3x its time); Keras consumers cast float64 inputs.
INPUT_DTYPES = (tf.float32, tf.uint8)
# Values this far outside [0, 1] are an error (0-255 pixels, mean/std-normalized
# images); augmentation noise or interpolation overshoot stays within it.
_RANGE_SLACK = 0.5
# Variables whose path contains one of these get no L2 regularization loss.
_NO_WEIGHT_DECAY = ('batch_normalization', 'bias')
_TEMP_MARKER = '.tmp-'


class _HubModule(tf.__internal__.tracking.AutoTrackable):
  """The saved object; its attributes are set by `_build_hub_module`."""


def _l2_loss_factory(variable: tf.Variable, weight_decay: float) -> Callable[[], tf.Tensor]:
  """A zero-argument tf.function returning `weight_decay * l2_loss(variable)`.

  A factory (not a lambda in a loop) so each function closes over its own variable.
  """

  @tf.function(input_signature=[])
  def regularization_loss() -> tf.Tensor:
    return weight_decay * tf.nn.l2_loss(tf.cast(variable, tf.float32))

  return regularization_loss


def _tracing_for_save(options: tf.saved_model.SaveOptions) -> contextlib.AbstractContextManager:
  """Traces as `tf.saved_model.save` does, so saving reuses the traces (~35% faster).

  `tf.saved_model.save` retraces every function traced outside its save context.
  Falls back to no context if TensorFlow's internal module moves.
  """
  try:
    # pylint: disable=g-import-not-at-top,g-direct-tensorflow-import
    from tensorflow.python.saved_model import save_context
    return save_context.save_context(options)
  except (ImportError, AttributeError):
    return contextlib.nullcontext()


@contextlib.contextmanager
def _per_replica_batch_norm(model: Any) -> Iterator[None]:
  """Traces synchronized BN layers as plain BN (restored on exit).

  Outside a strategy a Keras synchronized BN all-reduces over the one default replica
  (an identity) through a custom gradient that SavedModel cannot save, so every load
  would warn "unsaved custom gradients" (63 lines for ResNet-18). The statistics are
  the same, computed as plain BN does (mean of squared deviations rather than
  E[x^2] - E[x]^2, which is the more accurate in float32).
  """
  all_layers = model._flatten_layers(include_self=True, recursive=True)  # pylint: disable=protected-access
  layers = [layer for layer in all_layers
            if isinstance(layer, keras.layers.BatchNormalization) and layer.synchronized]
  for layer in layers:
    layer.synchronized = False
  try:
    yield
  finally:
    for layer in layers:
      layer.synchronized = True


class _SignatureRenameNoteFilter(logging.Filter):
  """Drops TF's 'Function `serve` contains input name(s) ...' notes (2,500 characters
  of variable names per export; the renaming is harmless)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return 'contains input name(s)' not in record.getMessage()


@contextlib.contextmanager
def _without_signature_rename_notes() -> Iterator[None]:
  logger = logging.getLogger('absl')
  note_filter = _SignatureRenameNoteFilter()
  logger.addFilter(note_filter)
  try:
    yield
  finally:
    logger.removeFilter(note_filter)


def _tf_variable(variable: Any) -> tf.Variable:
  """The tf.Variable behind a Keras 3 variable (itself if already one)."""
  return getattr(variable, 'value', variable) if not isinstance(variable, tf.Variable) else variable


def _encoder_of(model: Any) -> Any:
  """The encoder part of a SimCLRModel (its `.encoder`), else the model itself."""
  encoder = getattr(model, 'encoder', None)
  return encoder if callable(encoder) and hasattr(encoder, 'trainable_variables') else model


def checked_images(images: tf.Tensor) -> tf.Tensor:
  """`images` as the encoder takes them, checked when the graph runs.

  Args:
    images: [batch, height, width, 3] RGB: float in [0, 1] (cast to float32) or uint8
      in [0, 255] (divided by 255).

  Returns:
    float32 [batch, height, width, 3] (static shape set), after the checks.

  Raises:
    TypeError: (when traced) a dtype other than float or uint8.
    tf.errors.InvalidArgumentError: (when run) not rank 4 with 3 channels, or values
      outside [-0.5, 1.5]: the message says what the encoder takes and what it got.
      Call it on rank-4 tensors: with oneDNN a convolution fed another rank aborts
      the process when the function is instantiated, before any check runs.
  """
  if images.dtype == tf.uint8:
    images = tf.cast(images, tf.float32) / 255.0
  elif images.dtype.is_floating:
    images = tf.cast(images, tf.float32)
  else:
    raise TypeError(f'The SimCLR encoder takes {INPUT_CONTRACT}; got dtype '
                    f'{images.dtype.name}.')
  shape = tf.shape(images)
  shape_ok = tf.logical_and(tf.equal(tf.size(shape), 4),
                            tf.reduce_all(tf.equal(shape[-1:], 3)))
  check_shape = tf.debugging.Assert(
      shape_ok, ['The SimCLR encoder takes images of shape [batch, height, width, 3] '
                 '(RGB: repeat a 1-channel image 3 times on the last axis; add a batch '
                 'axis to a single image); got shape', shape,
                 f'. Expected {INPUT_CONTRACT}.'], summarize=8)
  with tf.control_dependencies([check_shape]):
    low, high = tf.reduce_min(images), tf.reduce_max(images)
  range_ok = tf.logical_and(low >= -_RANGE_SLACK, high <= 1.0 + _RANGE_SLACK)
  check_range = tf.debugging.Assert(
      range_ok, ['The SimCLR encoder takes float32 RGB values in [0, 1]; got values from',
                 low, 'to', high, '. For 0-255 pixels divide by 255 (or pass uint8); do not '
                 'subtract a mean or divide by a standard deviation.'])
  with tf.control_dependencies([check_shape, check_range]):
    # An identity that hides the static shape: a call of the saved function infers the
    # encoder's shapes from the caller's input, and with a wrong channel count the
    # first convolution would fail there (a ValueError), before the checks run.
    images = tf.compat.v1.placeholder_with_default(images, shape=None)
  images.set_shape([None, None, None, 3])
  return images


def build_hub_module(model: Any,
                     *,
                     image_size: Optional[int] = None,
                     weight_decay: float = 0.0) -> tf.__internal__.tracking.AutoTrackable:
  """Wraps a model in the object `export_encoder` saves (traced, not yet saved).

  Args:
    model: a Keras model whose `model(images, training=bool)` returns a dict of named
      endpoints including 'final_avg_pool' (a SimCLRModel or a `build_resnet` encoder).
    image_size: the training image size, saved as the `image_size` attribute (0 when
      None); the input still takes any height and width.
    weight_decay: L2 coefficient of the exported regularization losses (0: none).

  Returns:
    The AutoTrackable with `__call__`, `serve`, `train_call`, `variables`,
    `trainable_variables` and `regularization_losses`; save it with
    `signatures={SERVING_SIGNATURE: module.serve.get_concrete_function(IMAGE_SPEC)}`.
  """
  # Any channel count, so that a wrong one reaches `checked_images` (and its message)
  # rather than TF's "Could not find matching concrete function". Rank 4 only: with
  # oneDNN, TensorFlow aborts the process when a rank-3 shape reaches a convolution
  # while it instantiates the function (before any check could run).
  input_specs = [tf.TensorSpec([None, None, None, None], dtype, name='images')
                 for dtype in INPUT_DTYPES]

  def endpoints(images: tf.Tensor, training: bool) -> dict[str, tf.Tensor]:
    outputs = model(images, training=training)
    if not isinstance(outputs, dict) or FEATURE_VECTOR_KEY not in outputs:
      raise ValueError(f'The model must return a dict with {FEATURE_VECTOR_KEY!r}; got '
                       f'{type(outputs).__name__}.')
    # Mixed-precision models compute in bfloat16; consumers get float32.
    return {name: tf.cast(outputs[name], tf.float32)
            for name in ENDPOINT_NAMES if name in outputs}

  encoder = _encoder_of(model)

  def features(images: tf.Tensor, training: bool) -> tf.Tensor:
    # The encoder alone: fine-tuning the feature vector neither computes the heads nor
    # moves their BN statistics.
    return tf.cast(encoder(images, training=training)[FEATURE_VECTOR_KEY], tf.float32)

  # Each traced once per value of `training`; the callables below nest them.
  endpoints_function = tf.function(endpoints)
  features_function = tf.function(features)

  @tf.function
  def call(images: tf.Tensor, training: bool = False, as_dict: bool = False) -> Any:
    """The image feature vector (or, with `as_dict`, the dict of named endpoints).

    Args:
      images: float32 [batch, height, width, 3], RGB, values in [0, 1] (or uint8
        pixels, divided by 255 here); any height and width, best at the training size
        (`image_size`). Anything else raises InvalidArgumentError (`checked_images`).
      training: a Python bool; True uses batch statistics and updates BN moving means.
      as_dict: a Python bool; True returns {endpoint name: float32 tensor}.

    Returns:
      float32 [batch, features] (`final_avg_pool`), or the endpoint dict.
    """
    images = checked_images(images)
    if as_dict:
      return endpoints_function(images, training)
    return features_function(images, training)

  @tf.function
  def serve(images: tf.Tensor) -> dict[str, tf.Tensor]:
    return call(images, training=False, as_dict=True)

  @tf.function
  def train_call(images: tf.Tensor) -> dict[str, tf.Tensor]:
    return call(images, training=True, as_dict=True)

  # The signature (first, so it names the contract's shape) and then every accepted
  # dtype with any channel count.
  serve.get_concrete_function(IMAGE_SPEC)
  for spec in input_specs:
    serve.get_concrete_function(spec)
    train_call.get_concrete_function(spec)
    for training in (False, True):
      for as_dict in (False, True):
        call.get_concrete_function(spec, training=training, as_dict=as_dict)

  # The projection and supervised heads get no gradient from the feature vector: their
  # variables are exported but not trainable here.
  trainable = list(encoder.trainable_variables)
  module = _HubModule()
  module.__call__ = call
  module.serve = serve
  module.train_call = train_call
  module.variables = [_tf_variable(v) for v in model.variables]
  module.trainable_variables = [_tf_variable(v) for v in trainable]
  module.image_size = tf.Variable(image_size or 0, trainable=False, dtype=tf.int32,
                                  name='image_size')
  module.input_contract = tf.Variable(INPUT_CONTRACT, trainable=False, dtype=tf.string,
                                      name='input_contract')
  module.regularization_losses = [
      _l2_loss_factory(_tf_variable(v), weight_decay) for v in trainable
      if weight_decay > 0 and not any(part in variable_path(v) for part in _NO_WEIGHT_DECAY)
  ]
  return module


def _temp_path(export_dir: str) -> str:
  """A unique sibling of `export_dir` that readers never take for an export."""
  parent, name = os.path.split(export_dir.rstrip('/'))
  suffix = f'{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}'
  return os.path.join(parent, f'.{name}{_TEMP_MARKER}{suffix}')


def export_encoder(model: Any,
                   export_dir: str,
                   *,
                   image_size: Optional[int] = None,
                   overwrite: bool = False,
                   weight_decay: float = 0.0,
                   card_context: Optional[dict[str, Any]] = None) -> str:
  """Saves `model` as a TF Hub reusable SavedModel (see the module docstring).

  The export carries a model card (README.md, model_card.json, Kaggle metadata:
  `tf_simclr.export.model_card`), built from `model` and `card_context`.

  Args:
    model: a SimCLRModel (or any Keras model returning a dict with 'final_avg_pool').
    export_dir: the directory to create (local path or any tf.io.gfile filesystem).
    image_size: the training image size, recorded as the `image_size` attribute
      (the input still takes any height and width).
    overwrite: replace an existing `export_dir` that is an earlier SavedModel export
      (anything else is an error); otherwise it is an error.
    weight_decay: L2 coefficient of the exported `regularization_losses`, which
      `hub.KerasLayer(trainable=True)` adds to the downstream loss (0: none).
    card_context: keyword arguments of `model_card.build_card` about the run
      (config, model_dir, checkpoint, step, command, license_name).

  Returns:
    `export_dir`.

  Raises:
    FileExistsError: `export_dir` exists and `overwrite` is False, or it is not an
      earlier SavedModel export (e.g. a run's model_dir): that is never replaced.
  """
  export_dir = export_dir.rstrip('/') or '/'
  if tf.io.gfile.exists(export_dir):
    if not overwrite:
      raise FileExistsError(f'--export_dir={export_dir} already exists; pass --overwrite '
                            'to replace it or choose another directory.')
    check_replaceable_export(export_dir)
  parent = os.path.dirname(export_dir)
  if parent:
    tf.io.gfile.makedirs(parent)
  temp_dir = _temp_path(export_dir)
  try:
    options = tf.saved_model.SaveOptions()
    # No native (C++) BN op in the SavedModel: its consumers could not load it.
    with _per_replica_batch_norm(model), native_batch_norm.disabled():
      with _tracing_for_save(options):
        module = build_hub_module(model, image_size=image_size, weight_decay=weight_decay)
        signatures = {SERVING_SIGNATURE: module.serve.get_concrete_function(IMAGE_SPEC)}
      with _without_signature_rename_notes():
        tf.saved_model.save(module, temp_dir, signatures=signatures, options=options)
    model_card.write_card(temp_dir, model_card.build_card(
        model, image_size=image_size, weight_decay=weight_decay, **(card_context or {})))
    if tf.io.gfile.exists(export_dir):  # overwrite=True
      old_dir = _temp_path(export_dir)
      rename_directory(export_dir, old_dir)
      rename_directory(temp_dir, export_dir)
      tf.io.gfile.rmtree(old_dir)
    else:
      rename_directory(temp_dir, export_dir)
  finally:
    if tf.io.gfile.exists(temp_dir):
      tf.io.gfile.rmtree(temp_dir)
  return export_dir


# What `tf.saved_model.save` and the model card write; --overwrite replaces a folder
# holding nothing else.
_SAVED_MODEL_FILES = frozenset({'saved_model.pb', 'saved_model.pbtxt', 'fingerprint.pb',
                                'keras_metadata.pb', model_card.README, model_card.CARD_JSON,
                                model_card.KAGGLE_JSON})
_SAVED_MODEL_FOLDERS = frozenset({'variables', 'assets'})
_VARIABLES_FILE = re.compile(r'variables\.(index|data-\d{5}-of-\d{5})')


def _names(directory: str) -> list[str]:
  return [name.rstrip('/') for name in tf.io.gfile.listdir(directory)]


def is_saved_model_export(path: str) -> bool:
  """Whether `path` is a folder holding one SavedModel and nothing else.

  That is `saved_model.pb` (or .pbtxt), optionally `fingerprint.pb` and the model
  card files, a `variables/` folder of `variables.index` / `variables.data-*` files
  and an `assets/` folder of files. A run's model_dir, a folder above one, or any
  other files do not qualify.
  """
  if not tf.io.gfile.isdir(path):
    return False
  names = set(_names(path))
  if not names & {'saved_model.pb', 'saved_model.pbtxt'}:
    return False
  for name in names:
    child = os.path.join(path, name)
    if name in _SAVED_MODEL_FILES:
      if tf.io.gfile.isdir(child):
        return False
    elif name in _SAVED_MODEL_FOLDERS:
      if not tf.io.gfile.isdir(child):
        return False
      for entry in _names(child):
        if tf.io.gfile.isdir(os.path.join(child, entry)):
          return False
        if name == 'variables' and not _VARIABLES_FILE.fullmatch(entry):
          return False
    else:
      return False
  return True


def check_replaceable_export(export_dir: str) -> None:
  """Raises FileExistsError unless `export_dir` is an earlier SavedModel export.

  `--overwrite` must never delete a run directory, its parent or anything else that
  is not an export (e.g. `--export_dir` set to the model_dir by mistake).
  """
  if is_saved_model_export(export_dir):
    return
  if not tf.io.gfile.isdir(export_dir):
    what = 'a file'
  else:
    names = sorted(_names(export_dir))
    shown = ', '.join(names[:4]) + (f' and {len(names) - 4} more' if len(names) > 4 else '')
    what = f'a folder holding {shown}' if names else 'an empty folder'
  raise FileExistsError(
      f'--export_dir={export_dir} is {what}, not a SavedModel export; --overwrite only '
      'replaces an earlier export: choose another --export_dir (nothing was changed).')


def rename_directory(source: str, target: str) -> None:
  """Moves the folder `source` to `target` (which must not exist), on any file system.

  A local rename is atomic. Object stores (gs://) have no folder rename (TensorFlow
  copies object by object) and TF's ram:// file system renames only the folder entry,
  leaving its files behind; there the files are copied, then `source` is deleted.
  """
  if '://' not in source or source.startswith('file://'):
    tf.io.gfile.rename(source, target)
    return
  for directory, _, files in tf.io.gfile.walk(source):
    relative = directory[len(source):].strip('/')
    target_directory = os.path.join(target, relative) if relative else target
    tf.io.gfile.makedirs(target_directory)
    for name in files:
      tf.io.gfile.copy(os.path.join(directory, name), os.path.join(target_directory, name),
                       overwrite=True)
  tf.io.gfile.rmtree(source)


def _step_dirs(saved_model_root: str) -> list[int]:
  """Steps of the complete exports under `saved_model_root`, ascending."""
  if not tf.io.gfile.isdir(saved_model_root):
    return []
  return sorted(int(name.rstrip('/')) for name in tf.io.gfile.listdir(saved_model_root)
                if re.fullmatch(r'\d+/?', name))


def export_during_training(model: Any,
                           model_dir: str,
                           step: int,
                           keep_hub_module_max: int,
                           *,
                           image_size: Optional[int] = None,
                           weight_decay: float = 0.0,
                           is_chief: bool = True,
                           card_context: Optional[dict[str, Any]] = None) -> Optional[str]:
  """Exports to `model_dir/saved_model/<step>/` and keeps the newest exports.

  Call it from every worker (saving may need collectives); only the chief keeps its
  export. Leftover temporary directories of an earlier killed export are removed.

  Args:
    model: the model being trained (may live in a distribution strategy scope).
    model_dir: the run's directory.
    step: the global step, the name of the export directory.
    keep_hub_module_max: how many step exports to keep (`--keep_hub_module_max`);
      0 keeps all (as the official code).
    image_size: as in `export_encoder` (pass the run's `--image_size`).
    weight_decay: as in `export_encoder` (pass the run's `--weight_decay`).
    is_chief: False on non-chief workers: they save to a temporary directory that is
      deleted.
    card_context: as in `export_encoder` (the step is added).

  Returns:
    The export directory (None on non-chief workers).
  """
  saved_model_root = os.path.join(model_dir, run_dir.SAVED_MODEL_DIRNAME)
  if not is_chief:
    scratch = _temp_path(os.path.join(saved_model_root, f'worker-{step}'))
    export_encoder(model, scratch, image_size=image_size, weight_decay=weight_decay)
    tf.io.gfile.rmtree(scratch)
    return None
  tf.io.gfile.makedirs(saved_model_root)
  run_dir.remove_export_temporaries(model_dir)  # .<step>.tmp-... of killed exports.
  export_dir = export_encoder(model, run_dir.export_dir(model_dir, step),
                              image_size=image_size, overwrite=True,
                              weight_decay=weight_decay,
                              card_context={'model_dir': model_dir, 'step': step,
                                            **(card_context or {})})
  old_steps = _step_dirs(saved_model_root)[:-keep_hub_module_max] if keep_hub_module_max > 0 else []
  for old_step in old_steps:
    tf.io.gfile.rmtree(os.path.join(saved_model_root, str(old_step)))
  return export_dir


def latest_export(model_dir: str) -> Optional[str]:
  """The newest `model_dir/saved_model/<step>` directory, or None."""
  steps = _step_dirs(os.path.join(model_dir, run_dir.SAVED_MODEL_DIRNAME))
  return run_dir.export_dir(model_dir, steps[-1]) if steps else None
