"""--train_mode=distill: SimCLRv2's third stage, distillation on unlabelled images.

A frozen teacher (a fine-tuned model) labels the unlabelled training images with its
softened class probabilities; a student built from the usual architecture flags
learns to match them (`losses.distillation_loss`), optionally plus the supervised loss
on a labelled subset. With the student the teacher's own architecture this is the
paper's self-distillation; a smaller student compresses the teacher.

The training loop is `tf_simclr.train.train`; this module gives it

* `load_teacher`: the teacher from `--teacher_checkpoint`, one of
  - a checkpoint of our run (a `ckpt-N` prefix or a model_dir holding checkpoints),
    whose architecture comes from the `flags.json` next to it (else the student's flags);
  - a hub export of ours (a folder with `saved_model.pb`, or a model_dir with only
    `saved_model/<step>/`), called through its `serve` endpoint (`logits_sup`);
  the teacher runs with inference-mode batch norm, takes no gradient, is not in the
  optimizer, and is not saved in the student's checkpoints (a resumed run loads it
  again from `--teacher_checkpoint`);
* `train_input_fn`: per-replica batches of the unlabelled `--train_split` (labels
  ignored; crop and flip, as fine-tuning) and, when `--distill_label_weight > 0`, of
  the labelled `--distill_labeled_split` under 'labeled_image' / 'labeled_label';
* `build_train_step`: teacher logits on the same augmented view the student sees,
  the distillation loss, weight decay, the update.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Optional

import keras
import tensorflow as tf

from tf_simclr import checkpoints
from tf_simclr import config as config_lib
from tf_simclr import export as export_lib
from tf_simclr import losses
from tf_simclr import metrics as metrics_lib
from tf_simclr import optim
from tf_simclr import run_dir

InputFn = Callable[[tf.distribute.InputContext], tf.data.Dataset]

FLAG = '--teacher_checkpoint'
# Seed offset of the labelled pipeline (its order differs from the unlabelled one's).
_LABELED_SEED_OFFSET = 7919


def metric_names(config: config_lib.Config) -> tuple[str, ...]:
  """Training metrics of a distillation step ('train/<name>' in TensorBoard).

  distill_loss: the soft cross-entropy; teacher_agreement: fraction of unlabelled
  images where the student's top class is the teacher's; supervised_loss /
  supervised_acc: on the labelled batch (only with --distill_label_weight > 0).
  """
  labeled = ('supervised_loss', 'supervised_acc') if config.distill.distill_label_weight else ()
  return ('distill_loss', 'teacher_agreement') + labeled + metrics_lib.COMMON_METRICS


@dataclasses.dataclass
class Teacher:
  """A frozen classifier: `teacher(images)` -> float32 logits [b, num_classes].

  Attributes:
    logits_fn: images [b, H, W, 3] in [0, 1] -> logits, inference mode.
    num_classes: the teacher's number of classes.
    path: what was loaded (a checkpoint prefix or an export folder).
    variables: the teacher's variables (none of them trainable here).
  """
  logits_fn: Callable[[tf.Tensor], tf.Tensor]
  num_classes: int
  path: str
  variables: list[Any]
  model: Any = None  # The Keras model (checkpoint teachers) or the loaded SavedModel.

  def __call__(self, images: tf.Tensor) -> tf.Tensor:
    return tf.stop_gradient(tf.cast(self.logits_fn(images), tf.float32))


def _is_export(path: str) -> bool:
  return tf.io.gfile.exists(os.path.join(path, 'saved_model.pb'))


def _our_export(path: str) -> Optional[str]:
  """`path` when it is a SavedModel folder, else the newest export of a model_dir
  without checkpoints, else None."""
  if _is_export(path):
    return path
  if tf.io.gfile.isdir(path) and not checkpoints.latest_complete_checkpoint(path):
    return export_lib.latest_export(path)
  return None


def resolve_teacher(path: str) -> tuple[str, Any]:
  """What `--teacher_checkpoint=path` holds: ('official', OfficialSource) for a
  published google-research/simclr model (`tf_simclr.official_import`), ('export',
  folder) for our hub export, or ('checkpoint', prefix) for our checkpoint.

  Raises:
    FileNotFoundError: nothing loadable there (one line naming the flag).
    ValueError: a checkpoint that is neither official nor ours (e.g. TF1).
  """
  from tf_simclr import official_import  # pylint: disable=g-import-not-at-top
  export = _our_export(path)
  try:
    official = official_import.find_source(path, FLAG)
  except ValueError:
    if export is None:
      raise
    official = None  # Our own SavedModel is not an official one.
  if official is not None:
    return 'official', official
  if export is not None:
    return 'export', export
  return 'checkpoint', checkpoints.resolve_checkpoint(path, FLAG)


def _object_tensor_shapes(checkpoint_path: str, object_path: tuple[str, ...]
                          ) -> Optional[list[list[int]]]:
  """Shapes of the variables below `object_path` in the checkpoint's object graph
  (None when the path is absent). Keys alone cannot tell: a training checkpoint stores
  the model's trainable variables under the optimizer's path."""
  from tensorflow.core.protobuf import trackable_object_graph_pb2  # pylint: disable=g-import-not-at-top
  reader = tf.train.load_checkpoint(checkpoint_path)
  graph = trackable_object_graph_pb2.TrackableObjectGraph()
  graph.ParseFromString(reader.get_tensor('_CHECKPOINTABLE_OBJECT_GRAPH'))
  node = graph.nodes[0]
  for name in object_path:
    children = {child.local_name: child.node_id for child in node.children}
    if name not in children:
      return None
    node = graph.nodes[children[name]]
  shapes, pending, seen = [], [node], set()
  shape_map = reader.get_variable_to_shape_map()
  while pending:
    current = pending.pop()
    for attribute in current.attributes:
      if attribute.checkpoint_key in shape_map:
        shapes.append(list(shape_map[attribute.checkpoint_key]))
    for child in current.children:
      if child.node_id not in seen:
        seen.add(child.node_id)
        pending.append(graph.nodes[child.node_id])
  return shapes


def _checkpoint_num_classes(prefix: str) -> int:
  """Classes of the supervised head of a checkpoint (ValueError when it has none)."""
  shapes = _object_tensor_shapes(prefix, ('model', 'supervised_head'))
  kernels = [shape for shape in shapes or () if len(shape) == 2]
  if not kernels:
    raise ValueError(f'{FLAG}: checkpoint {prefix} has no supervised head (a pretraining '
                     'run without --lineareval_while_pretraining?); fine-tune it first '
                     '(--train_mode=finetune) and pass that run.')
  return int(kernels[0][-1])


def _teacher_config(config: config_lib.Config, prefix: str) -> config_lib.Config:
  """The student's config with the model fields of the teacher run's flags.json."""
  run_flags = run_dir.read_flags(os.path.dirname(prefix)) or {}
  model_fields = {field.name: run_flags[field.name]
                  for field in dataclasses.fields(config_lib.ModelConfig)
                  if field.name in run_flags}
  data_fields = {'image_size': run_flags['image_size']} if 'image_size' in run_flags else {}
  return config_lib.replace(
      config, model=model_fields, data=data_fields,
      train={'train_mode': 'finetune', 'fine_tune_after_block': -1,
             'zero_init_logits_layer': False, 'mixed_precision': 'float32'})


def _official_teacher_config(config: config_lib.Config, source: Any, num_classes: int
                             ) -> tuple[config_lib.Config, int]:
  """(teacher config, classes) of a published google-research/simclr model.

  The structure is read from the checkpoint (`official_import.read_architecture`).
  Which projection-head layer feeds its classifier is not recorded there: the
  student's --ft_proj_selector is used (set it to the official fine-tuning's value).
  """
  from tf_simclr import official_import  # pylint: disable=g-import-not-at-top
  architecture = official_import.read_architecture(source, FLAG)
  if architecture.num_classes is None:
    raise ValueError(f'{FLAG}={source.path}: this official model has no supervised head; '
                     'fine-tune it first (--train_mode=finetune --checkpoint=...) and pass '
                     'that run.')
  if architecture.num_classes != num_classes:
    return config, architecture.num_classes  # The caller reports the class mismatch.
  teacher_config = config_lib.replace(
      official_import.config_for_architecture(config, architecture, (), source.path),
      train={'train_mode': 'finetune', 'fine_tune_after_block': -1,
             'zero_init_logits_layer': False, 'mixed_precision': 'float32'})
  official_import.check_supervised_head(architecture, teacher_config, num_classes,
                                        source.path)
  return teacher_config, architecture.num_classes


def _check_classes(teacher_classes: int, num_classes: int, path: str,
                   config: config_lib.Config) -> None:
  if teacher_classes != num_classes:
    raise ValueError(
        f'{FLAG}={path}: the teacher has {teacher_classes} classes but --dataset='
        f'{config.data.dataset} has {num_classes}; use a teacher fine-tuned on this data set.')


def _export_classes(loaded: Any, location: str, path: str) -> int:
  serve = getattr(loaded, 'serve', None)
  if serve is None:
    raise ValueError(f'{FLAG}={path}: {location} is not a tf_simclr hub export (it has no '
                     '`serve` endpoint); pass a checkpoint or one of our exports.')
  images = tf.TensorSpec([None, None, None, 3], tf.float32)  # Older exports: only this.
  outputs = serve.get_concrete_function(images).structured_outputs
  if 'logits_sup' not in outputs:
    raise ValueError(f'{FLAG}={path}: the export {location} has no classifier '
                     '(logits_sup); export a fine-tuned model.')
  return int(outputs['logits_sup'].shape[-1])


def check_inputs(config: config_lib.Config, num_classes: int) -> None:
  """Checks the inputs before training starts: `--teacher_checkpoint` exists, has a
  classifier and `num_classes` classes; `--distill_labeled_split` (when used) exists.

  Raises:
    FileNotFoundError / ValueError: one line naming the flag.
  """
  if config.distill.distill_label_weight:
    train_input_fn(config)  # Resolves the split strings.
  path = config.distill.teacher_checkpoint
  kind, location = resolve_teacher(path)
  if kind == 'export':
    teacher_classes = _export_classes(tf.saved_model.load(location), location, path)
  elif kind == 'official':
    teacher_classes = _official_teacher_config(config, location, num_classes)[1]
  else:
    teacher_classes = _checkpoint_num_classes(location)
  _check_classes(teacher_classes, num_classes, path, config)


def load_teacher(config: config_lib.Config, strategy: tf.distribute.Strategy,
                 num_classes: int) -> Teacher:
  """Loads the frozen teacher of `--teacher_checkpoint` under `strategy`.

  Args:
    config: the run's config (`config.distill.teacher_checkpoint` set).
    strategy: the training strategy; the teacher's variables are created in its scope.
    num_classes: the data set's classes, which the teacher must have.

  Raises:
    FileNotFoundError: no checkpoint or export at the path.
    ValueError: no supervised head, other classes, or weights that do not fit.
  """
  path = config.distill.teacher_checkpoint
  kind, location = resolve_teacher(path)
  if kind == 'export':
    with strategy.scope():
      loaded = tf.saved_model.load(location)
    _check_classes(_export_classes(loaded, location, path), num_classes, path, config)
    serve = loaded.serve
    return Teacher(lambda images: serve(images)['logits_sup'], num_classes, location,
                   list(loaded.variables), loaded)

  from tf_simclr.models import build_model_for  # pylint: disable=g-import-not-at-top
  if kind == 'official':
    teacher_config, teacher_classes = _official_teacher_config(config, location, num_classes)
  else:
    teacher_config, teacher_classes = (_teacher_config(config, location),
                                       _checkpoint_num_classes(location))
  _check_classes(teacher_classes, num_classes, path, config)
  with strategy.scope():
    model = build_model_for(teacher_config, num_classes)
  model.trainable = False  # Keras 3 batch norm of a frozen layer runs in inference mode.
  if kind == 'official':
    from tf_simclr import official_import  # pylint: disable=g-import-not-at-top
    official_import.load_weights(model, location, flag_name=FLAG)
    location = location.path
  else:
    try:
      checkpoints.restore_or_explain(tf.train.Checkpoint(model=model), location)
    except ValueError as error:
      raise ValueError(f'{FLAG}: {error}') from None
  return Teacher(lambda images: model(images, training=False)['logits_sup'], num_classes,
                 location, list(model.variables), model)


def train_input_fn(config: config_lib.Config) -> InputFn:
  """Unlabelled --train_split batches, zipped with labelled ones when they are used.

  Per replica: {'image': [b, S, S, 3], 'label' (ignored), 'mask'} and, with
  --distill_label_weight > 0, 'labeled_image' [b, S, S, 3] and 'labeled_label'
  [b, C] from --distill_labeled_split (the same batch size).
  """
  from tf_simclr import data as data_lib  # pylint: disable=g-import-not-at-top
  train_config = config.train
  unlabeled = data_lib.build_input_fn(
      config.data, split=config.data.train_split, is_training=True, train_mode='finetune',
      global_batch_size=train_config.train_batch_size, seed=train_config.seed)
  if not config.distill.distill_label_weight:
    return unlabeled
  labeled = data_lib.build_input_fn(
      config.data, split=config.distill.distill_labeled_split, is_training=True,
      train_mode='finetune', global_batch_size=train_config.train_batch_size,
      seed=train_config.seed + _LABELED_SEED_OFFSET, flag='distill_labeled_split')

  def input_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
    def merge(unlabeled_batch, labeled_batch):
      return dict(unlabeled_batch, labeled_image=labeled_batch['image'],
                  labeled_label=labeled_batch['label'])
    return tf.data.Dataset.zip(unlabeled(context), labeled(context)).map(merge)

  return input_fn


def build_train_step(config: config_lib.Config, model: Any, teacher: Teacher,
                     optimizer: keras.optimizers.Optimizer, strategy: tf.distribute.Strategy,
                     names: Optional[tuple[str, ...]] = None
                     ) -> Callable[[dict[str, tf.Tensor]], tf.Tensor]:
  """The per-replica distillation step (call in `strategy.run`).

  The teacher sees the student's augmented images (inference mode); with labels, the
  labelled images go through the student in the same forward pass (one batch-norm
  batch). The loss is `distillation_loss` + weight decay, divided by the replicas.

  Returns:
    `step(batch) -> [len(names)]` float32 metrics (default `metric_names(config)`).
  """
  num_replicas = strategy.num_replicas_in_sync
  distill_config = config.distill
  label_weight = distill_config.distill_label_weight
  names = names or metric_names(config)

  def train_step(batch: dict[str, tf.Tensor]) -> tf.Tensor:
    images = batch['image']
    teacher_logits = teacher(images)  # [b, C], the same view as the student's.
    batch_size = tf.shape(images)[0]
    if label_weight:
      images = tf.concat([images, tf.cast(batch['labeled_image'], images.dtype)], 0)
    with tf.GradientTape() as tape:
      logits = tf.cast(model(images, training=True)['logits_sup'], tf.float32)
      student_logits, labeled_logits = logits[:batch_size], logits[batch_size:]
      total, distill, supervised = losses.distillation_loss(
          teacher_logits, student_logits, temperature=distill_config.distill_temperature,
          labels_onehot=batch.get('labeled_label'), labeled_logits=labeled_logits,
          label_weight=label_weight)
      weight_decay = optim.weight_decay_loss(model, config.optim)
      loss = total + weight_decay
      scaled_loss = loss / num_replicas
    variables = model.trainable_variables
    gradients = tape.gradient(scaled_loss, variables)
    optimizer.apply_gradients(zip(gradients, variables))
    values = {'distill_loss': distill, 'weight_decay': weight_decay, 'total_loss': loss,
              'teacher_agreement': losses.supervised_accuracy(teacher_logits, student_logits)}
    if label_weight:
      values['supervised_loss'] = supervised
      values['supervised_acc'] = losses.supervised_accuracy(batch['labeled_label'],
                                                            labeled_logits)
    return metrics_lib.pack(values, names)

  if config.train.jit_compile:
    return tf.function(train_step, jit_compile=True)
  return train_step
