"""Evaluation of checkpoints: linear / finetuned top-1 and top-5, or contrastive metrics.

`evaluate` restores one checkpoint into a freshly built model and runs the eval split
once: every example counts exactly once (the data module pads the last batch with
mask 0; counts are mask-weighted and summed over replicas). A pretrain-only checkpoint
(--lineareval_while_pretraining=False) has no trained classifier; then the contrastive
loss and accuracy on two augmented views of the eval split are reported instead, and
`linear_eval` says why there is no top-1.

`evaluate_continuously` (--mode=eval) evaluates each new checkpoint of `model_dir`
until one reaches the last training step.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, Optional

import tensorflow as tf

from tf_simclr import checkpoints
from tf_simclr import config as config_lib
from tf_simclr import data as data_lib
from tf_simclr import losses
from tf_simclr import metrics as metrics_lib
from tf_simclr import official_import
from tf_simclr import optim
from tf_simclr import run_dir
from tf_simclr import strategy as strategy_lib
from tf_simclr.models import build_model_for

InputFn = Callable[[tf.distribute.InputContext], tf.data.Dataset]

NO_LINEAR_EVAL = ('not available: the checkpoint has no trained supervised head '
                  '(pretrained with --lineareval_while_pretraining=False); finetune it '
                  '(--train_mode=finetune --checkpoint=...) or pretrain with '
                  '--lineareval_while_pretraining')


def evaluate(config: config_lib.Config, strategy: tf.distribute.Strategy,
             checkpoint_path: Optional[str] = None, *,
             input_fn: Optional[InputFn] = None,
             data_sizes: Optional[Any] = None,
             write_results: bool = True,
             verbose: bool = True) -> dict[str, Any]:
  """Evaluates one checkpoint (default: the latest in model_dir).

  Writes eval summaries to model_dir and, on the chief, `result.json` and
  `result_<step>.json` (atomically).

  Args:
    config: the run's configuration, validated for this strategy's replica count
      (`config_lib.validate`; run.py does it once per run).
    strategy: the tf.distribute strategy.
    checkpoint_path: a checkpoint prefix or directory; default `model_dir`.
    input_fn: overrides the eval input function (tests).
    data_sizes: overrides `get_dataset_info`.
    write_results: write result files and summaries.
    verbose: print the result line.

  Returns:
    {'eval/label_top_1_accuracy', 'eval/label_top_5_accuracy',
     'eval/regularization_loss', 'global_step', 'num_examples'} for a model with a
    trained supervised head; otherwise 'eval/contrast_loss', 'eval/contrast_acc',
    'eval/contrast_entropy' and 'linear_eval' (why top-1 is missing).

  Raises:
    FileNotFoundError: no checkpoint at the path.
    ValueError: the checkpoint does not fit the configured model.
  """
  train_config = config.train
  official_source = (official_import.find_source(checkpoint_path) if checkpoint_path
                     else None)
  if official_source is not None:
    return _evaluate_official(config, strategy, official_source, input_fn=input_fn,
                              data_sizes=data_sizes, write_results=write_results,
                              verbose=verbose)
  checkpoint_path = checkpoints.resolve_checkpoint(
      checkpoint_path or train_config.model_dir,
      '--checkpoint' if checkpoint_path else '--model_dir')
  checkpoints.check_compatible(checkpoint_path, config)
  sizes = data_sizes or data_lib.dataset_info(config, with_eval=True)
  # Evaluate what the checkpoint holds, whatever --lineareval_while_pretraining says.
  has_head = checkpoints.checkpoint_has_object(checkpoint_path, ('model', 'supervised_head'))
  if not has_head and train_config.train_mode == 'finetune':
    raise ValueError(f'checkpoint {checkpoint_path} has no supervised head; evaluate it '
                     'with --train_mode=pretrain, or finetune it first.')
  eval_config = config_lib.replace(config, train={'lineareval_while_pretraining': has_head})

  with strategy.scope():
    model = build_model_for(eval_config, sizes.num_classes)
  checkpoints.restore_or_explain(tf.train.Checkpoint(model=model), checkpoint_path)
  global_step = checkpoints.checkpoint_step(checkpoint_path)
  return _evaluate_model(config, strategy, model, has_head, checkpoint_path, global_step,
                         sizes, input_fn=input_fn, write_results=write_results,
                         verbose=verbose)


def _evaluate_official(config: config_lib.Config, strategy: tf.distribute.Strategy,
                       source: official_import.OfficialSource, *,
                       input_fn: Optional[InputFn], data_sizes: Optional[Any],
                       write_results: bool, verbose: bool) -> dict[str, Any]:
  """Evaluates a published google-research/simclr model as it is (its logits_sup head)."""
  architecture = official_import.read_architecture(source)
  config = official_import.config_for_architecture(config, architecture, explicit=None,
                                                   source_path=source.path)
  sizes = data_sizes or data_lib.dataset_info(config)
  official_import.check_supervised_head(architecture, config, sizes.num_classes, source.path)
  eval_config = config_lib.replace(config, train={'lineareval_while_pretraining': True,
                                                  'train_mode': 'pretrain',
                                                  'fine_tune_after_block': -1})
  with strategy.scope():
    model = build_model_for(eval_config, architecture.num_classes)
  official_import.load_weights(model, source)
  return _evaluate_model(config, strategy, model, True, source.path,
                         official_import.checkpoint_step(source), sizes, input_fn=input_fn,
                         write_results=write_results, verbose=verbose)


def _evaluate_model(config: config_lib.Config, strategy: tf.distribute.Strategy, model: Any,
                    has_head: bool, checkpoint_path: str, global_step: int, sizes: Any, *,
                    input_fn: Optional[InputFn], write_results: bool,
                    verbose: bool) -> dict[str, Any]:
  """Runs the eval split through `model`; see `evaluate`."""
  regularization_loss = float(optim.weight_decay_loss(model, config.optim))
  if has_head:
    names, eval_step, default_input_fn, max_steps = classifier_eval_step(config, model)
  else:
    names, eval_step, default_input_fn, max_steps = contrastive_eval_step(config, model,
                                                                         sizes)
  start = time.perf_counter()
  accumulator = run_eval_steps(strategy, eval_step, input_fn or default_input_fn(), names,
                               max_steps)
  if accumulator.total('count') == 0:
    raise ValueError(f'--eval_split={config.data.eval_split} gave no examples to evaluate '
                     f'(--dataset={config.data.dataset}, --eval_steps='
                     f'{config.train.eval_steps}); choose a non-empty split.')
  result = eval_result(accumulator, names, has_head)
  result.update({'eval/regularization_loss': regularization_loss,
                 'global_step': global_step,
                 'num_examples': int(accumulator.total('count')),
                 'checkpoint': checkpoint_path})
  if config.knn.knn_at_eval:
    result.update(knn_eval_metrics(config, strategy, model, sizes.num_classes))
  chief = strategy_lib.is_chief(strategy)
  if verbose and chief:
    print_eval_result(result, time.perf_counter() - start)
  if write_results and chief:
    write_eval_results(config.train.model_dir, result)
  return result


EvalStep = Callable[[dict[str, tf.Tensor]], tf.Tensor]


def classifier_eval_step(config: config_lib.Config, model: Any
                         ) -> tuple[tuple[str, ...], EvalStep, Callable[[], InputFn],
                                    Optional[int]]:
  """(metric names, per-replica step -> mask-weighted sums, the default input function,
  the step limit or None) of a model with a supervised head: top-1 / top-5 of its
  logits on the eval split, every example once."""
  from tf_simclr import data as data_lib  # pylint: disable=g-import-not-at-top

  def eval_step(batch: dict[str, tf.Tensor]) -> tf.Tensor:
    logits = model(batch['image'], training=False)['logits_sup']
    mask = batch['mask']
    return tf.stack([tf.reduce_sum(mask),
                     metrics_lib.top_k_correct(batch['label'], logits, mask, 1),
                     metrics_lib.top_k_correct(batch['label'], logits, mask, 5)])

  return (('count', 'top_1', 'top_5'), eval_step,
          lambda: data_lib.eval_input_fn(config), config.train.eval_steps or None)


def contrastive_eval_step(config: config_lib.Config, model: Any, sizes: Any
                          ) -> tuple[tuple[str, ...], EvalStep, Callable[[], InputFn],
                                     Optional[int]]:
  """As `classifier_eval_step` for a model without a trained head: the contrastive
  loss, accuracy and entropy of two augmented views, over one pass of the split."""
  from tf_simclr import data as data_lib  # pylint: disable=g-import-not-at-top

  def eval_step(batch: dict[str, tf.Tensor]) -> tf.Tensor:
    projection = model(batch['image'], training=False)['proj_head_output']
    loss, logits_ab, labels = losses.nt_xent_loss(
        tf.cast(projection, tf.float32), temperature=config.loss.temperature,
        hidden_norm=config.loss.hidden_norm,
        replica_context=tf.distribute.get_replica_context())
    contrast = losses.contrastive_metrics(logits_ab, labels)
    count = tf.cast(tf.shape(batch['mask'])[0], tf.float32)
    return tf.stack([count, loss * count, contrast['contrast_acc'] * count,
                     contrast['contrast_entropy'] * count])

  # The two-view input repeats: one pass over the split.
  max_steps = config.train.eval_steps or max(
      1, sizes.num_eval_examples // config.train.eval_batch_size)
  return (('count', 'contrast_loss', 'contrast_acc', 'contrast_entropy'), eval_step,
          lambda: data_lib.eval_input_fn(config, two_views=True), max_steps)


def run_eval_steps(strategy: tf.distribute.Strategy, eval_step: EvalStep,
                   input_fn: InputFn, names: tuple[str, ...],
                   max_steps: Optional[int]) -> metrics_lib.EvalAccumulator:
  """Sums `eval_step` over the replicas and the batches (at most `max_steps`)."""

  @tf.function
  def distributed_eval_step(batch: Any) -> tf.Tensor:
    per_replica = strategy.run(eval_step, args=(batch,))
    return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

  dataset = strategy.distribute_datasets_from_function(input_fn)
  accumulator = metrics_lib.EvalAccumulator()
  for step_index, batch in enumerate(dataset):
    if max_steps is not None and step_index >= max_steps:
      break
    accumulator.add(metrics_lib.unpack(distributed_eval_step(batch).numpy(), names))
  return accumulator


def eval_result(accumulator: metrics_lib.EvalAccumulator, names: tuple[str, ...],
                has_head: bool) -> dict[str, Any]:
  """The 'eval/...' ratios of the sums (and 'linear_eval' without a head)."""
  if has_head:
    return {'eval/label_top_1_accuracy': accumulator.ratio('top_1'),
            'eval/label_top_5_accuracy': accumulator.ratio('top_5')}
  result: dict[str, Any] = {f'eval/{name}': accumulator.ratio(name) for name in names[1:]}
  result['linear_eval'] = NO_LINEAR_EVAL
  return result


def print_eval_result(result: dict[str, Any], seconds: float) -> None:
  """The result line ('eval at step N on M examples (s): ...')."""
  shown = ', '.join(f'{key} {value:.4f}' for key, value in result.items()
                    if key.startswith('eval/'))
  print(f'eval at step {result["global_step"]} on {result["num_examples"]} examples '
        f'({seconds:.1f} s): {shown}', flush=True)
  if 'linear_eval' in result:
    print(f'linear eval {NO_LINEAR_EVAL}.', flush=True)


def knn_eval_metrics(config: config_lib.Config, strategy: tf.distribute.Strategy,
                     model: Any, num_classes: int) -> dict[str, Any]:
  """--knn_at_eval: {'eval/knn_top_1_accuracy', 'eval/knn_top_5_accuracy' (>= 5
  classes), 'knn_bank_size', 'knn_num_queries'} of the final_avg_pool features."""
  from tf_simclr import knn  # pylint: disable=g-import-not-at-top
  metrics = knn.KnnMonitor(config, strategy, num_classes).evaluate(model, prefix='knn_')
  result = {f'eval/knn_top_{top}_accuracy': metrics[f'knn_top_{top}_accuracy']
            for top in (1, 5) if f'knn_top_{top}_accuracy' in metrics}  # top-5: >= 5 classes
  result.update(knn_bank_size=metrics['knn_bank_size'],
                knn_num_queries=metrics['knn_num_queries'])
  return result


def write_eval_results(model_dir: str, result: dict[str, Any]) -> None:
  """TensorBoard scalars plus result.json and result_<step>.json in model_dir."""
  step = int(result['global_step'])
  writer = tf.summary.create_file_writer(model_dir)
  with writer.as_default():
    for key, value in result.items():
      if key.startswith('eval/'):
        tf.summary.scalar(key, value, step=step)
  writer.close()
  run_dir.write_result(model_dir, result)


def evaluate_continuously(config: config_lib.Config, strategy: tf.distribute.Strategy, *,
                          timeout_secs: Optional[float] = None,
                          min_interval_secs: float = 1.0,
                          data_sizes: Optional[Any] = None,
                          input_fn: Optional[InputFn] = None) -> Optional[dict[str, Any]]:
  """Evaluates each new checkpoint of model_dir until the last training step.

  Stops after the checkpoint of step `total_train_steps`, or when no new checkpoint
  appears for `timeout_secs` (default `config.train.eval_timeout_secs`, i.e.
  --eval_timeout_secs; 0: no limit).

  Returns:
    The last result, or None when no checkpoint appeared.

  Raises:
    FileNotFoundError: model_dir does not exist or no checkpoint appeared in time.
  """
  model_dir = config.train.model_dir
  if not tf.io.gfile.isdir(model_dir):
    raise FileNotFoundError(f'--model_dir={model_dir} does not exist; --mode=eval '
                            'evaluates the checkpoints a training run writes there.')
  if timeout_secs is None:
    timeout_secs = config.train.eval_timeout_secs
  wait_limit = timeout_secs or None  # checkpoints_iterator: None waits forever.
  sizes = data_sizes or data_lib.dataset_info(config, with_eval=True)
  total_steps = optim.total_train_steps(config.train, sizes.num_train_examples)
  result = None
  for checkpoint_path in tf.train.checkpoints_iterator(
      model_dir, min_interval_secs=min_interval_secs, timeout=wait_limit):
    result = evaluate(config, strategy, checkpoint_path, data_sizes=sizes, input_fn=input_fn)
    if result['global_step'] >= total_steps:
      break
  if result is None:
    raise FileNotFoundError(f'no checkpoint appeared in --model_dir={model_dir} within '
                            f'{timeout_secs:.0f} s.')
  if result['global_step'] < total_steps:
    print(f'note: no new checkpoint for {timeout_secs:.0f} s; stopped at step '
          f'{result["global_step"]} of {total_steps}.', file=sys.stderr, flush=True)
  return result
