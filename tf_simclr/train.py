"""The training loop: pretraining (NT-Xent) or finetuning, on any tf.distribute strategy.

`train(config, strategy)` reads top to bottom:

1. data: dataset info, the step budget, one distributed input iterator;
2. model + optimizer built inside `strategy.scope()` (the optimizer is built on the
   model's variables before the first step, as Keras 3 requires);
3. restore: the latest checkpoint of `model_dir` (model, optimizer, step, input
   position), else the weights of `--checkpoint`, else a fresh start;
4. loops of `steps_per_loop` steps, each one `tf.function` call; after each loop a
   progress line, TensorBoard summaries, and at checkpoint steps a checkpoint (and a
   hub export);
5. a final checkpoint; returns the last loop's metrics.

Each replica divides its loss by the number of replicas; Keras 3's `apply_gradients`
inside `strategy.run` sums gradients over replicas, so the update uses the gradient of
the global-batch mean.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import sys
import threading
import time
from typing import Any, Callable, Optional, Sequence

import keras
import tensorflow as tf

from tf_simclr import checkpoints
from tf_simclr import config as config_lib
from tf_simclr import export as export_lib
from tf_simclr import grad_cache
from tf_simclr import jit
from tf_simclr import loss_scale
from tf_simclr import losses
from tf_simclr import metrics as metrics_lib
from tf_simclr import official_import
from tf_simclr import optim
from tf_simclr import precision
from tf_simclr import progress as progress_lib
from tf_simclr import run_dir
from tf_simclr import strategy as strategy_lib
from tf_simclr import summaries
from tf_simclr.data import inputs as data_inputs
from tf_simclr.models import SimCLRModel, build_model_for
from tf_simclr.models import kernel_choice
from tf_simclr.models import native_batch_norm

InputFn = Callable[[tf.distribute.InputContext], tf.data.Dataset]


DEFAULT_MAX_STEPS_PER_LOOP = 100


def train_input_fn(config: config_lib.Config) -> InputFn:
  """The training input function for `config`: `tf_simclr.data.train_input_fn`, or
  distillation's pair of inputs."""
  if config.train.train_mode == 'distill':
    from tf_simclr import distill  # pylint: disable=g-import-not-at-top
    return distill.train_input_fn(config)
  return data_inputs.train_input_fn(config)


def input_options(strategy: tf.distribute.Strategy) -> Optional[tf.distribute.InputOptions]:
  """Per-replica input under MirroredStrategy, so each replica owns a checkpointable
  tf.data iterator; the default elsewhere (MultiWorkerMirroredStrategy does not
  support it: there the input position is not checkpointed)."""
  if isinstance(strategy, tf.distribute.MirroredStrategy):
    return tf.distribute.InputOptions(
        experimental_fetch_to_device=False,
        experimental_replication_mode=tf.distribute.InputReplicationMode.PER_REPLICA)
  return None


def make_iterator(strategy: tf.distribute.Strategy, input_fn: InputFn) -> Any:
  """The training input iterator; a checkpointable one where TF allows it.

  MirroredStrategy (any number of devices): per-replica tf.data iterators inside the
  distributed one. OneDeviceStrategy: a plain tf.data iterator of the one input
  pipeline (`strategy.run` moves the batch to the device). Both positions are
  checkpointed. MultiWorkerMirroredStrategy: the distributed iterator, whose position
  is not (a resumed multi-worker run restarts its input pipelines).
  """
  input_fn = _without_slack(input_fn)
  if isinstance(strategy, tf.distribute.OneDeviceStrategy):
    context = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0,
                                         num_replicas_in_sync=1)
    return iter(input_fn(context))
  return iter(strategy.distribute_datasets_from_function(
      input_fn, options=input_options(strategy)))


def _without_slack(input_fn: InputFn) -> InputFn:
  """`input_fn` with `tf.data.Options.experimental_slack` off.

  With slack on (TF 2.21), an iterator restored from a checkpoint and then saved
  again hangs on its next element (tests/test_reliability.py reproduces it); slack
  only helps TPU hosts.
  """

  def checkpointable_input_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
    options = tf.data.Options()
    options.experimental_slack = False
    return input_fn(context).with_options(options)

  return checkpointable_input_fn


def keep_nan_propagation() -> None:
  """Turns off Grappler's remapper for this process (the training step's graphs).

  The remapper fuses batch norm + ReLU; with TensorFlow's oneDNN kernels on (tf_simclr
  turns them on) the fused kernel maps NaN to 0, so a diverged run would keep a finite
  loss and pass the NaN check. Off, NaN reaches the loss; the step is as fast
  (docs/speed.md).
  """
  tf.config.optimizer.set_experimental_options({'remapping': False})


class NonFiniteLossError(RuntimeError):
  """The training loss became NaN or Inf; no checkpoint was written after it."""


class TrainingPreempted(RuntimeError):
  """SIGTERM or SIGINT (Ctrl-C) arrived; a checkpoint of `step` was written before
  stopping. `signal_number` is the signal."""

  def __init__(self, step: int, checkpoint_path: Optional[str],
               signal_number: int = signal.SIGTERM) -> None:
    name = 'Ctrl-C (SIGINT)' if signal_number == signal.SIGINT else 'SIGTERM'
    super().__init__(f'stopped by {name} at step {step}; checkpoint {checkpoint_path} '
                     'saved; run the same command again to resume.')
    self.step = step
    self.checkpoint_path = checkpoint_path
    self.signal_number = signal_number


class _TerminationFlag:
  """Catches SIGTERM and SIGINT while training (main thread only).

  The handler only records the signal (`requested`, `signal_number`), so a checkpoint
  being written completes; the loop checks it after each `tf.function` call (at most
  `steps_per_loop` steps later). A second Ctrl-C interrupts at once
  (KeyboardInterrupt).
  """

  def __init__(self) -> None:
    self.requested = False
    self.signal_number = signal.SIGTERM
    self._previous: dict[int, Any] = {}

  def install(self) -> '_TerminationFlag':
    if threading.current_thread() is threading.main_thread():
      for signal_number in (signal.SIGTERM, signal.SIGINT):
        self._previous[signal_number] = signal.signal(signal_number, self._handle)
    return self

  def _handle(self, signum: int, frame: Any) -> None:  # pylint: disable=unused-argument
    if signum == signal.SIGINT and self.requested:
      raise KeyboardInterrupt
    if not self.requested:
      self.signal_number = signum
    self.requested = True
    if signum == signal.SIGINT:
      print('\nCtrl-C: saving a checkpoint, then stopping (Ctrl-C again to stop now).',
            file=sys.stderr, flush=True)

  def uninstall(self) -> None:
    for signal_number, previous in self._previous.items():
      if previous is not None:
        signal.signal(signal_number, previous)
    self._previous = {}


def check_finite_loss(loop_metrics: dict[str, float], first_step: int, last_step: int) -> None:
  """Raises NonFiniteLossError naming the steps when the loop's total loss is NaN/Inf."""
  loss = loop_metrics['total_loss']
  if math.isfinite(loss):
    return
  steps = f'step {last_step}' if first_step == last_step else (
      f'steps {first_step}-{last_step}')
  raise NonFiniteLossError(
      f'training loss is {loss} at {steps}; stopped without saving these weights (the '
      'last good checkpoint is kept); lower --learning_rate or check the input images.')


def steps_per_loop(train_config: config_lib.TrainConfig, checkpoint_steps: int) -> int:
  """Steps per `tf.function` call: --steps_per_loop, else --checkpoint_steps, else <= 100."""
  if train_config.steps_per_loop:
    steps = train_config.steps_per_loop
  elif train_config.checkpoint_steps:
    steps = train_config.checkpoint_steps
  else:
    steps = min(DEFAULT_MAX_STEPS_PER_LOOP, checkpoint_steps)
  if train_config.log_every_steps:
    steps = min(steps, train_config.log_every_steps)
  return max(1, steps)


def build_model_and_optimizer(config: config_lib.Config, strategy: tf.distribute.Strategy,
                              num_classes: int, num_train_examples: int, total_steps: int
                              ) -> tuple[SimCLRModel, keras.optimizers.Optimizer,
                                         optim.WarmUpAndCosineDecay]:
  """The model, its optimizer and the optimizer's warm-up + cosine learning-rate
  schedule over `total_steps`, built in `strategy.scope()` with the optimizer's slots
  created before the first step."""
  with strategy.scope():
    model = build_model_for(config, num_classes)
    learning_rate = optim.WarmUpAndCosineDecay(
        config.optim.learning_rate, num_train_examples, config.train.train_batch_size,
        config.optim.warmup_epochs, total_steps, config.optim.learning_rate_scaling)
    optimizer = loss_scale.wrap_optimizer(optim.build_optimizer(config.optim, learning_rate),
                                          config.train.mixed_precision)
    optimizer.build(model.trainable_variables)
  return model, optimizer, learning_rate


def restore_pretrained(model: SimCLRModel, checkpoint_path: str,
                       config: config_lib.Config) -> None:
  """Loads `--checkpoint` weights into `model` (no optimizer state, no step).

  Finetuning loads the encoder and projection head only (as the official code, whose
  pretrain checkpoints feed finetuning) and keeps the fresh supervised head;
  pretraining loads every part the checkpoint has. `--zero_init_logits_layer` zeroes
  the supervised head afterwards.

  Raises:
    ValueError: the checkpoint was written for another model structure.
  """
  checkpoints.check_compatible(checkpoint_path, config)
  parts = {'encoder': model.encoder, 'projection_head': model.projection_head}
  # A distillation student may start from a fine-tuned model's head too.
  if config.train.train_mode in ('pretrain', 'distill') and model.supervised_head is not None:
    if checkpoints.checkpoint_has_object(checkpoint_path, ('model', 'supervised_head')):
      parts['supervised_head'] = model.supervised_head
  checkpoints.restore_or_explain(
      tf.train.Checkpoint(model=tf.train.Checkpoint(**parts)), checkpoint_path)
  if config.train.zero_init_logits_layer and model.supervised_head is not None:
    model.supervised_head.reset_to_zeros()


def export_hub_module(model: SimCLRModel, config: config_lib.Config, step: int,
                      chief: bool = True) -> Optional[str]:
  """Exports the encoder to model_dir/saved_model/<step>/, keeping the newest ones.

  `export.export_during_training`: written to a temporary directory and renamed,
  so a kill mid-export leaves the previous export; keeps `keep_hub_module_max`
  exports (0 keeps all, as the official code); the regularization losses use the
  run's --weight_decay. Call on every worker (non-chief ones export to a scratch
  directory). Returns the export directory (None off the chief).
  """
  return export_lib.export_during_training(
      model, config.train.model_dir, step, config.export.keep_hub_module_max,
      image_size=config.data.image_size, weight_decay=config.optim.weight_decay,
      is_chief=chief, card_context={'config': config})


def _write_augmentation_images(config: config_lib.Config, input_fn: InputFn,
                               writer: Any, step: int) -> None:
  """One image summary 'train/augmented_views' of a fresh training batch (pretrain)."""
  if config.train.train_mode != 'pretrain':
    return
  try:
    context = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0,
                                         num_replicas_in_sync=1)
    batch = next(iter(input_fn(context)))
    images = batch['image']  # [2b, H, W, 3]: view 1 rows, then view 2 rows.
    half = images.shape[0] // 2
    count = min(4, half)
    # Pairs side by side: [count, H, 2W, 3].
    pairs = tf.concat([images[:count], images[half:half + count]], axis=2)
    with writer.as_default():
      tf.summary.image('train/augmented_views', tf.clip_by_value(pairs, 0.0, 1.0),
                       step=step, max_outputs=count)
  except (tf.errors.OpError, ValueError, KeyError, StopIteration) as error:
    print(f'note: augmentation image summary skipped ({error}).', file=sys.stderr)


def start_knn_monitor(config: config_lib.Config, strategy: tf.distribute.Strategy,
                      num_classes: int, model: SimCLRModel, step: int, writer: Any,
                      chief: bool, verbose: bool) -> Any:
  """The kNN monitor of --knn_every_steps (None when off); on a fresh start it also
  measures the randomly initialised encoder at step 0."""
  from tf_simclr import knn  # pylint: disable=g-import-not-at-top
  monitor = knn.monitor_for(config, strategy, num_classes)
  if monitor is not None and step == 0:
    monitor.run_during_training(model, step, writer, chief, verbose)
  return monitor


def build_train_step(config: config_lib.Config, model: SimCLRModel,
                     optimizer: keras.optimizers.Optimizer, strategy: tf.distribute.Strategy,
                     metric_names: Optional[Sequence[str]] = None
                     ) -> Callable[[dict[str, tf.Tensor]], tf.Tensor]:
  """The per-replica training step: loss, gradient, optimizer update.

  Args:
    config: the run's configuration (losses, weight decay, --jit_compile).
    model: the SimCLRModel, built in `strategy.scope()`.
    optimizer: built on `model.trainable_variables` in `strategy.scope()`.
    strategy: the strategy the step runs under (its replica count scales the loss).
    metric_names: the packed metrics' order; default
      `metrics.train_metric_names(pretrain, supervised)`.

  Returns:
    `step(batch) -> [len(metric_names)]` float32 metrics, to call in `strategy.run`;
    batch is a per-replica {'image': [2b or b, H, W, 3], 'label': [b, classes], ...}.
  """
  num_replicas = strategy.num_replicas_in_sync
  pretrain = config.train.train_mode == 'pretrain'
  supervised = model.supervised_head is not None
  if metric_names is None:
    metric_names = train_metric_names(config, pretrain, supervised)
  cached_step = grad_cache.maybe_build_train_step(config, model, optimizer, strategy,
                                                  metric_names)
  if cached_step is not None:  # --micro_batch_size: gradient caching.
    return cached_step
  loss_scaling = loss_scale.uses_loss_scaling(config.train.mixed_precision)

  # --jit_compile under MirroredStrategy / MultiWorkerMirroredStrategy: forward, losses
  # and backward are XLA clusters on each replica; collectives and the update are not.
  mark_for_xla = config.train.jit_compile and jit.marks_replica_ops(strategy)

  def train_step(batch: dict[str, tf.Tensor]) -> tf.Tensor:
    images, labels = batch['image'], batch['label']
    values = {}
    with jit.compiled_ops(mark_for_xla), tf.GradientTape() as tape:
      outputs = model(images, training=True)
      loss = tf.constant(0.0)
      if pretrain:
        contrast_loss, logits_ab, contrast_labels = losses.nt_xent_loss(
            tf.cast(outputs['proj_head_output'], tf.float32),
            temperature=config.loss.temperature, hidden_norm=config.loss.hidden_norm,
            replica_context=tf.distribute.get_replica_context())
        values['contrast_loss'] = contrast_loss
        values.update(losses.contrastive_metrics(logits_ab, contrast_labels))
        loss += contrast_loss
      if supervised:
        # Pretraining feeds two views: the labels hold for both.
        sup_labels = tf.concat([labels, labels], 0) if pretrain else labels
        logits = tf.cast(outputs['logits_sup'], tf.float32)
        values['supervised_loss'] = losses.supervised_loss(sup_labels, logits)
        values['supervised_acc'] = losses.supervised_accuracy(sup_labels, logits)
        loss += values['supervised_loss']
      values['weight_decay'] = optim.weight_decay_loss(model, config.optim)
      loss += values['weight_decay']
      values['total_loss'] = loss
      scaled_loss = loss / num_replicas
      if loss_scaling:
        scaled_loss = optimizer.scale_loss(scaled_loss)
    variables = model.trainable_variables
    with jit.compiled_ops(mark_for_xla):
      gradients = tape.gradient(scaled_loss, variables)
    if loss_scaling:
      gradients, values[loss_scale.SKIPPED_METRIC] = loss_scale.agree_on_overflow(
          gradients, tf.distribute.get_replica_context())
    optimizer.apply_gradients(zip(gradients, variables))
    return metrics_lib.pack(values, metric_names)

  if config.train.jit_compile:
    return jit.compile_step(train_step, strategy)
  return train_step


def train_metric_names(config: config_lib.Config, pretrain: bool, supervised: bool
                       ) -> tuple[str, ...]:
  """The step's metrics; with float16 loss scaling also `skipped_steps` (1.0 per
  skipped overflow step)."""
  names = metrics_lib.train_metric_names(pretrain, supervised)
  if loss_scale.uses_loss_scaling(config.train.mixed_precision):
    names += (loss_scale.SKIPPED_METRIC,)
  return names


def build_train_loop(strategy: tf.distribute.Strategy,
                     step_fn: Callable[[dict[str, tf.Tensor]], tf.Tensor],
                     num_metrics: int) -> Callable[[Any, tf.Tensor], tf.Tensor]:
  """`train_loop(iterator, num_steps)`: one tf.function running `num_steps` steps.

  Returns the sum over the steps of the replica-mean metrics, [num_metrics] float32.
  """

  @tf.function
  def train_loop(iterator: Any, num_steps: tf.Tensor) -> tf.Tensor:
    sums = tf.zeros([num_metrics], tf.float32)
    for _ in tf.range(num_steps):
      per_replica = strategy.run(step_fn, args=(next(iterator),))
      sums += strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None)
    return sums

  return train_loop


def train(config: config_lib.Config, strategy: tf.distribute.Strategy, *,
          input_fn: Optional[InputFn] = None,
          data_sizes: Optional[Any] = None,
          verbose: bool = True) -> dict[str, float]:
  """Trains per `config` under `strategy`; returns the last loop's metrics.

  Args:
    config: the run's configuration, validated for this strategy's replica count
      (`config_lib.validate`; run.py does it once per run); `config.train.model_dir`
      receives checkpoints, summaries and exports.
    strategy: a tf.distribute strategy (created before any TF op).
    input_fn: overrides the data module's training input function (tests feed fixed
      batches this way); per-replica batches of {'image', 'label', 'mask'}.
    data_sizes: overrides `get_dataset_info` (any object with num_train_examples,
      num_eval_examples, num_classes).
    verbose: print the progress line.

  Returns:
    {'global_step': ..., 'learning_rate': ..., 'train/<metric>': ...}.

  Raises:
    ValueError / FileNotFoundError: one line naming the flag or file at fault.
  """
  chief = strategy_lib.is_chief(strategy)
  # 1. Data, step budget, the weights to start from (checked before anything is built).
  sizes = data_sizes or data_inputs.dataset_info(config)
  plan = StepPlan.for_run(config.train, sizes.num_train_examples)
  input_fn = input_fn or train_input_fn(config)
  start = StartingWeights.of(config)
  set_up_determinism(config.train)
  iterator = make_iterator(strategy, input_fn)

  # 2. Model and optimizer, built before the first step; a distillation teacher.
  model, optimizer, learning_rate = build_model_and_optimizer(
      config, strategy, sizes.num_classes, sizes.num_train_examples, plan.total_steps)
  teacher, metric_names = load_teacher(config, strategy, model, sizes.num_classes)

  # 3. Restore: own latest checkpoint, else --checkpoint weights, else fresh.
  saver = checkpoint_saver(config, strategy, model, optimizer, iterator)
  resumed = restore(saver, start, model, config, chief, verbose)
  step = int(optimizer.iterations.numpy())
  last_saved_step = step if resumed else -1

  # 4. The CPU kernels, then the step function and the multi-step loop.
  choose_kernels(config, model, strategy, plan.total_steps, verbose and chief)
  if verbose and chief and grad_cache.uses_grad_cache(config, strategy.num_replicas_in_sync):
    print(grad_cache.describe(config, strategy.num_replicas_in_sync), flush=True)
  train_loop = build_train_loop(
      strategy, build_step_fn(config, model, teacher, optimizer, strategy, metric_names),
      len(metric_names))
  writer = open_summary_writer(config, input_fn, step, chief)
  knn_monitor = start_knn_monitor(config, strategy, sizes.num_classes, model, step,
                                  writer, chief, verbose)
  progress = progress_lib.Progress(plan.total_steps, config.train.train_batch_size, step)
  result: dict[str, float] = {}
  termination = _TerminationFlag().install()
  try:
    while step < plan.total_steps:
      num_steps = plan.loop_length(step)
      loop_metrics, step, loop_seconds = run_steps(train_loop, iterator, optimizer,
                                                   num_steps, metric_names, config, step)
      check_finite_loss(loop_metrics, step - num_steps + 1, step)
      result = log_loop(writer, progress if verbose and chief else None, optimizer,
                        learning_rate, loop_metrics, step, num_steps, loop_seconds,
                        config.train.train_batch_size)
      if knn_monitor is not None and knn_monitor.is_due(step - num_steps, step,
                                                        plan.total_steps):
        result.update(knn_monitor.run_during_training(model, step, writer, chief, verbose))
      if plan.is_checkpoint_step(step):
        last_saved_step = save_checkpoint(saver, model, config, step, chief)
      if termination.requested and step < plan.total_steps:
        stop_after_signal(saver, step, last_saved_step, chief, termination.signal_number)
    # 5. The end: the last step has a checkpoint (the same decision on every worker).
    finish(saver, model, config, step, last_saved_step, chief)
  finally:
    termination.uninstall()
    saver.close()
    writer.close()
  return result or {'global_step': step, 'learning_rate': float(learning_rate(step))}


# ---------------------------------------------------------------------------
# The steps of `train`, in the order it calls them.


@dataclasses.dataclass(frozen=True)
class StepPlan:
  """The run's step budget: `total_steps`, a checkpoint every `checkpoint_steps`, at
  most `loop_steps` steps per `tf.function` call."""
  total_steps: int
  checkpoint_steps: int
  loop_steps: int

  @classmethod
  def for_run(cls, train_config: config_lib.TrainConfig, num_train_examples: int
              ) -> 'StepPlan':
    checkpoint_steps = optim.checkpoint_interval_steps(train_config, num_train_examples)
    return cls(total_steps=optim.total_train_steps(train_config, num_train_examples),
               checkpoint_steps=checkpoint_steps,
               loop_steps=steps_per_loop(train_config, checkpoint_steps))

  def loop_length(self, step: int) -> int:
    """Steps of the next loop from `step`: it stops at the next checkpoint and the end."""
    next_checkpoint = (step // self.checkpoint_steps + 1) * self.checkpoint_steps
    return min(self.loop_steps, next_checkpoint - step, self.total_steps - step)

  def is_checkpoint_step(self, step: int) -> bool:
    return step % self.checkpoint_steps == 0 or step >= self.total_steps


@dataclasses.dataclass(frozen=True)
class StartingWeights:
  """What --checkpoint names: our checkpoint (`pretrained_path`), a published
  google-research/simclr model (`official_source` and its architecture), or nothing."""
  pretrained_path: Optional[str] = None
  official_source: Any = None
  official_architecture: Any = None

  @classmethod
  def of(cls, config: config_lib.Config) -> 'StartingWeights':
    """Resolves --checkpoint; raises ValueError / FileNotFoundError when it is unusable."""
    path = config.train.checkpoint
    if not path:
      return cls()
    # A published google-research/simclr model (checkpoint or SavedModel), or ours.
    official_source = official_import.find_source(path)
    if official_source is None:
      return cls(pretrained_path=checkpoints.resolve_checkpoint(path))
    architecture = official_import.read_architecture(official_source)
    official_import.config_for_architecture(config, architecture, explicit=None,
                                            source_path=path)  # Checks the structure flags.
    return cls(official_source=official_source, official_architecture=architecture)


def set_up_determinism(train_config: config_lib.TrainConfig) -> None:
  """--seed, NaN propagation kept (`keep_nan_propagation`), --deterministic ops."""
  keras.utils.set_random_seed(train_config.seed)
  keep_nan_propagation()
  if train_config.deterministic:
    tf.config.experimental.enable_op_determinism()


def load_teacher(config: config_lib.Config, strategy: tf.distribute.Strategy,
                 model: SimCLRModel, num_classes: int) -> tuple[Any, tuple[str, ...]]:
  """(the distillation teacher or None, the step's metric names)."""
  if config.train.train_mode != 'distill':
    return None, train_metric_names(config, config.train.train_mode == 'pretrain',
                                    model.supervised_head is not None)
  from tf_simclr import distill  # pylint: disable=g-import-not-at-top
  # SimCLRv2 stage 3: tf_simclr/distill.py.
  return distill.load_teacher(config, strategy, num_classes), distill.metric_names(config)


def checkpoint_saver(config: config_lib.Config, strategy: tf.distribute.Strategy,
                     model: SimCLRModel, optimizer: keras.optimizers.Optimizer,
                     iterator: Any) -> checkpoints.CheckpointSaver:
  """The saver of the training state: model, optimizer, step and input position."""
  checkpoint = tf.train.Checkpoint(
      model=model, optimizer=optimizer, global_step=optimizer.iterations,
      input_iterators=tf.train.Checkpoint(**checkpoints.iterator_trackables(iterator)))
  return checkpoints.CheckpointSaver(checkpoint, config.train.model_dir,
                                     config.train.keep_checkpoint_max, strategy)


def restore(saver: checkpoints.CheckpointSaver, start: StartingWeights, model: SimCLRModel,
            config: config_lib.Config, chief: bool, verbose: bool) -> bool:
  """Restores the run's latest checkpoint, else the --checkpoint weights; the chief
  first deletes what saves and exports killed midway left.

  Returns:
    Whether a checkpoint of this run was restored (a resumed run).
  """
  if chief:
    checkpoints.remove_partial_saves(config.train.model_dir)
    run_dir.remove_export_temporaries(config.train.model_dir)
  resumed_from, notes = saver.restore_latest()
  if chief:
    for note in notes:
      print(note, file=sys.stderr, flush=True)
  say = verbose and chief
  if resumed_from:
    if say:
      print(f'Resuming from {resumed_from}.', flush=True)
    return True
  if start.pretrained_path:
    restore_pretrained(model, start.pretrained_path, config)
    if say:
      print(f'Starting from the weights of {start.pretrained_path}.', flush=True)
  elif start.official_source is not None:
    note = official_import.load_for_training(model, start.official_source,
                                             start.official_architecture,
                                             config.train.zero_init_logits_layer)
    if say:
      print(f'Starting from the official model: {note}.', flush=True)
  return False


def choose_kernels(config: config_lib.Config, model: SimCLRModel,
                   strategy: tf.distribute.Strategy, total_steps: int, say: bool) -> None:
  """--cpu_kernels: the CPU kernels of the model's layers, chosen before the step is
  traced; their timings are printed when `say`."""
  kernels = kernel_choice.choose_for_run(config, model, strategy.num_replicas_in_sync,
                                         total_steps=total_steps)
  if say and kernels.timings:
    print(kernels.summary(), flush=True)
  # Builds the native BN kernels now (once per machine, ~13 s), not inside the tracing.
  if (model.compute_dtype == 'float32' and native_batch_norm.enabled() and
      not precision.accelerator_present()):
    native_batch_norm.usable()
    if say:
      print(native_batch_norm.status(), flush=True)


def build_step_fn(config: config_lib.Config, model: SimCLRModel, teacher: Any,
                  optimizer: keras.optimizers.Optimizer, strategy: tf.distribute.Strategy,
                  metric_names: Sequence[str]) -> Callable[[dict[str, tf.Tensor]], tf.Tensor]:
  """`build_train_step`, or distillation's step when there is a teacher."""
  if teacher is not None:
    from tf_simclr import distill  # pylint: disable=g-import-not-at-top
    return distill.build_train_step(config, model, teacher, optimizer, strategy,
                                    metric_names)
  return build_train_step(config, model, optimizer, strategy, metric_names)


def open_summary_writer(config: config_lib.Config, input_fn: InputFn, step: int,
                        chief: bool) -> Any:
  """The TensorBoard writer of model_dir (a no-op one off the chief), with the run's
  hyperparameters and, on a fresh start, augmented views written."""
  if not chief:
    return tf.summary.create_noop_writer()
  writer = tf.summary.create_file_writer(config.train.model_dir)
  if step == 0:
    _write_augmentation_images(config, input_fn, writer, step)
  summaries.write_hparams(writer, config, step)
  return writer


def run_steps(train_loop: Callable[[Any, tf.Tensor], tf.Tensor], iterator: Any,
              optimizer: keras.optimizers.Optimizer, num_steps: int,
              metric_names: Sequence[str], config: config_lib.Config, step: int
              ) -> tuple[dict[str, float], int, float]:
  """Runs `num_steps` training steps from `step`.

  Returns:
    (the loop's mean metrics, with `skipped_steps` a count; the global step after it;
    the seconds the steps took).

  Raises:
    ValueError: the training input ended (no image decodes).
  """
  loop_start = time.perf_counter()
  try:
    sums = train_loop(iterator, tf.constant(num_steps, tf.int32))
  except tf.errors.OutOfRangeError:
    # The training input repeats: it ends only when no example decodes at all.
    raise ValueError(
        f'the training input yielded no images at step {step} (--dataset='
        f'{config.data.dataset} --data_dir={config.data.data_dir} --train_split='
        f'{config.data.train_split}): every image failed to decode, or there are fewer '
        'than one batch of readable ones; check the image files.') from None
  step = int(optimizer.iterations.numpy())
  loop_seconds = time.perf_counter() - loop_start  # The steps alone, no export.
  loop_metrics = metrics_lib.unpack(sums.numpy() / num_steps, metric_names)
  if loss_scale.SKIPPED_METRIC in loop_metrics:  # A count over the loop, not a mean.
    loop_metrics[loss_scale.SKIPPED_METRIC] = round(
        loop_metrics[loss_scale.SKIPPED_METRIC] * num_steps)
  return loop_metrics, step, loop_seconds


def log_loop(writer: Any, progress: Optional[progress_lib.Progress],
             optimizer: keras.optimizers.Optimizer,
             learning_rate: Callable[[int], Any], loop_metrics: dict[str, float],
             step: int, num_steps: int, loop_seconds: float, batch_size: int
             ) -> dict[str, float]:
  """TensorBoard scalars of a loop and the progress line (when `progress` is given).

  Returns:
    {'global_step', 'learning_rate', 'train/<metric>': ...} of the loop.
  """
  current_lr = float(learning_rate(step))
  with writer.as_default():
    for name, value in loop_metrics.items():
      tf.summary.scalar(f'train/{name}', value, step=step)
    tf.summary.scalar('learning_rate', current_lr, step=step)
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
      tf.summary.scalar('loss_scale', float(optimizer.dynamic_scale.numpy()), step=step)
  summaries.write_throughput(writer, step, num_steps, loop_seconds, batch_size)
  writer.flush()
  if progress is not None:
    shown = {'loss': loop_metrics['total_loss']}
    for name in ('contrast_acc', 'supervised_acc', 'teacher_agreement',
                 loss_scale.SKIPPED_METRIC):
      if name in loop_metrics:
        shown[name] = loop_metrics[name]
    shown['lr'] = current_lr
    progress.report(step, shown)
  return {'global_step': step, 'learning_rate': current_lr,
          **{f'train/{name}': value for name, value in loop_metrics.items()}}


def save_checkpoint(saver: checkpoints.CheckpointSaver, model: SimCLRModel,
                    config: config_lib.Config, step: int, chief: bool) -> int:
  """Saves `ckpt-<step>` and, with --export_hub_module=checkpoint, exports; returns
  `step`."""
  saver.save(step)
  if config.export.export_hub_module == 'checkpoint':
    export_hub_module(model, config, step, chief)
  return step


def stop_after_signal(saver: checkpoints.CheckpointSaver, step: int, last_saved_step: int,
                      chief: bool, signal_number: int) -> None:
  """Saves `step` (unless just saved) and raises TrainingPreempted."""
  path = saver.save(step) if last_saved_step != step else saver.latest_checkpoint
  raise TrainingPreempted(step, path if chief else None, signal_number)


def finish(saver: checkpoints.CheckpointSaver, model: SimCLRModel,
           config: config_lib.Config, step: int, last_saved_step: int, chief: bool) -> None:
  """The last checkpoint and, unless --export_hub_module=never, the export of the last
  step (for =end, or a run killed during its last export)."""
  if last_saved_step != step:
    saver.save(step)
  if (config.export.export_hub_module != 'never' and
      not run_dir.has_hub_export(config.train.model_dir, step)):
    export_hub_module(model, config, step, chief)
