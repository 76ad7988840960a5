"""Weighted k-nearest-neighbour accuracy of frozen features: a cheap quality monitor.

The convention of InstDisc (Wu et al. 2018) and lightly's `knn_predict`: features are
L2-normalised; for each query the k train features of highest cosine similarity s_j
vote for their class with weight exp(s_j / T); the predicted class has the largest
summed weight. Defaults k = 200, T = 0.1. No training, so it measures the encoder only.

Three layers:
- pure math on tensors (`knn_class_scores`, `knn_accuracy`);
- `extract_features`: runs a feature function (the encoder in inference mode, or a
  loaded TF Hub export) over a dataset under any tf.distribute strategy;
- `KnnMonitor`: memory bank from the train split, queries from the eval split, both
  unaugmented (the eval pipeline), for `train.py` (every --knn_every_steps) and
  `evaluate.py` (--knn_at_eval).
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Optional

import numpy as np
import tensorflow as tf

from tf_simclr import config as config_lib
from tf_simclr import run_dir

FEATURE_ENDPOINT = 'final_avg_pool'
# Queries per similarity matmul: [chunk, bank] float32 stays ~200 MB for a 50k bank.
QUERY_CHUNK_SIZE = 1024
KNN_HISTORY_FILENAME = 'knn.json'

FeatureFn = Callable[[tf.Tensor], tf.Tensor]
InputFn = Callable[[tf.distribute.InputContext], tf.data.Dataset]


def knn_class_scores(query_features: tf.Tensor, bank_features: tf.Tensor,
                     bank_labels: tf.Tensor, num_classes: int, *, k: int = 200,
                     temperature: float = 0.1,
                     chunk_size: int = QUERY_CHUNK_SIZE) -> tf.Tensor:
  """Summed vote weights per class, [Q, num_classes] float32.

  Args:
    query_features: [Q, D]; L2-normalised here.
    bank_features: [N, D] memory bank; L2-normalised here.
    bank_labels: [N] integer class ids.
    num_classes: C.
    k: neighbours (min(k, N) are used).
    temperature: T in exp(similarity / T).
    chunk_size: queries per [chunk, N] similarity matrix.
  """
  query = tf.math.l2_normalize(tf.cast(query_features, tf.float32), axis=1)
  bank = tf.math.l2_normalize(tf.cast(bank_features, tf.float32), axis=1)
  bank_labels = tf.cast(bank_labels, tf.int32)
  num_neighbours = min(int(k), int(bank.shape[0]))
  scores = []
  for start in range(0, int(query.shape[0]), chunk_size):
    similarity = tf.matmul(query[start:start + chunk_size], bank, transpose_b=True)  # [q, N]
    top_similarity, top_index = tf.math.top_k(similarity, k=num_neighbours)  # [q, k]
    weights = tf.exp(top_similarity / temperature)
    neighbour_labels = tf.one_hot(tf.gather(bank_labels, top_index), num_classes)  # [q, k, C]
    scores.append(tf.reduce_sum(neighbour_labels * weights[:, :, None], axis=1))
  if not scores:
    return tf.zeros([0, num_classes], tf.float32)
  return tf.concat(scores, axis=0)


def knn_accuracy(query_features: Any, query_labels: Any, bank_features: Any,
                 bank_labels: Any, num_classes: int, *, k: int = 200,
                 temperature: float = 0.1) -> dict[str, float]:
  """{'top_1_accuracy', 'top_5_accuracy'} of the weighted kNN classifier (fractions).

  Ties between classes go to the lower class id (tf.math.top_k order).
  """
  scores = knn_class_scores(query_features, bank_features, bank_labels, num_classes,
                            k=k, temperature=temperature)
  labels = tf.cast(np.asarray(query_labels), tf.int32)
  count = max(1, int(labels.shape[0]))
  result = {}
  for top in (1, 5):
    if top > num_classes:
      continue
    _, predicted = tf.math.top_k(scores, k=top)  # [Q, top], ties: lower class id first.
    hits = tf.reduce_any(tf.equal(predicted, labels[:, None]), axis=1)
    result[f'top_{top}_accuracy'] = float(tf.reduce_sum(tf.cast(hits, tf.float32))) / count
  return result


def encoder_feature_fn(model: Any, endpoint: str = FEATURE_ENDPOINT) -> FeatureFn:
  """Features of a SimCLRModel's encoder in inference mode (BN moving statistics)."""
  encoder = getattr(model, 'encoder', model)

  def features(images: tf.Tensor) -> tf.Tensor:
    return encoder(images, training=False)[endpoint]
  return features


def hub_feature_fn(export_dir: str) -> FeatureFn:
  """Features of a TF Hub export (`hub_export`): `module(images, training=False)`."""
  module = tf.saved_model.load(export_dir)

  def features(images: tf.Tensor) -> tf.Tensor:
    return module(images, training=False)
  features.module = module  # Keeps the loaded variables alive.
  return features


def make_feature_step(feature_fn: FeatureFn, strategy: tf.distribute.Strategy
                      ) -> Callable[[Any], tuple[tf.Tensor, tf.Tensor, tf.Tensor]]:
  """A tf.function: distributed batch -> (features [B, D] float32, labels [B] int64,
  mask [B]) gathered over all replicas (and workers) with `strategy.gather`.

  Reuse it across calls of `extract_features` to trace once.
  """

  def replica_step(batch: dict[str, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    features = tf.cast(feature_fn(batch['image']), tf.float32)
    return features, tf.argmax(batch['label'], axis=1), batch['mask']

  @tf.function
  def step(batch: Any) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    per_replica = strategy.run(replica_step, args=(batch,))
    return tuple(strategy.gather(value, axis=0) for value in per_replica)

  return step


def extract_features(feature_fn: FeatureFn, strategy: tf.distribute.Strategy,
                     input_fn: InputFn, *, max_examples: int = 0,
                     global_batch_size: int,
                     feature_step: Optional[Callable[..., Any]] = None
                     ) -> tuple[np.ndarray, np.ndarray]:
  """Runs `feature_fn` over a finite, padded eval-style dataset under `strategy`.

  Args:
    feature_fn: images [b, H, W, 3] -> features [b, D] (e.g. `encoder_feature_fn`).
    strategy: any tf.distribute strategy; per-replica results are gathered over all
      replicas (and workers).
    input_fn: per-replica batches {'image', 'label' one-hot, 'mask'}, as the data
      module's eval input function yields (mask 0 marks padding).
    max_examples: stop after this many real examples; 0: the whole dataset.
    global_batch_size: examples per global step of `input_fn`.
    feature_step: `make_feature_step(feature_fn, strategy)` to reuse; default a new one.

  Returns:
    (features [N, D] float32, labels [N] int64) in a fixed order.
  """
  max_steps = -(-max_examples // global_batch_size) if max_examples else None
  step = feature_step or make_feature_step(feature_fn, strategy)
  dataset = strategy.distribute_datasets_from_function(input_fn)
  feature_parts, label_parts = [], []
  for step_index, batch in enumerate(dataset):
    if max_steps is not None and step_index >= max_steps:
      break
    features, labels, mask = (value.numpy() for value in step(batch))
    keep = mask > 0
    feature_parts.append(features[keep])
    label_parts.append(labels[keep])
  if not feature_parts:
    raise ValueError('the kNN input yielded no examples; check the split flags.')
  features = np.concatenate(feature_parts)
  labels = np.concatenate(label_parts).astype(np.int64)
  if max_examples:
    features, labels = features[:max_examples], labels[:max_examples]
  return features, labels


class KnnMonitor:
  """kNN top-1 of a model: bank = train split, queries = eval split (both unaugmented).

  Example:
    monitor = KnnMonitor(config, strategy, num_classes)
    metrics = monitor.evaluate(model)  # {'knn/top_1_accuracy': ..., ...}
  """

  def __init__(self, config: config_lib.Config, strategy: tf.distribute.Strategy,
               num_classes: int, *, bank_input_fn: Optional[InputFn] = None,
               query_input_fn: Optional[InputFn] = None) -> None:
    """Builds the input functions once.

    Args:
      config: the run's configuration (`config.knn`, data splits, eval_batch_size).
      strategy: the strategy the model lives under.
      num_classes: classes of the data set.
      bank_input_fn / query_input_fn: override the data module's inputs (tests).
    """
    self.config = config
    self.knn_config = config.knn
    self.strategy = strategy
    self.num_classes = num_classes
    from tf_simclr import data as data_lib  # pylint: disable=g-import-not-at-top
    self.bank_input_fn = bank_input_fn or data_lib.eval_input_fn(
        config, split=config.data.train_split)
    self.query_input_fn = query_input_fn or data_lib.eval_input_fn(config)
    self._cached_model: Any = None
    self._cached_step: Any = None

  def is_due(self, previous_step: int, step: int, total_steps: int) -> bool:
    """Whether a multiple of --knn_every_steps (or the last step) lies in (previous, step]."""
    every = self.knn_config.knn_every_steps
    if every <= 0:
      return False
    return step // every > previous_step // every or (step >= total_steps > previous_step)

  def evaluate_features(self, feature_fn: FeatureFn, prefix: str = 'knn/',
                        feature_step: Optional[Callable[..., Any]] = None
                        ) -> dict[str, float]:
    """kNN metrics of `feature_fn` (see `evaluate`)."""
    start = time.perf_counter()
    batch_size = self.config.train.eval_batch_size
    feature_step = feature_step or make_feature_step(feature_fn, self.strategy)
    bank, bank_labels = extract_features(
        feature_fn, self.strategy, self.bank_input_fn, feature_step=feature_step,
        max_examples=self.knn_config.knn_train_examples, global_batch_size=batch_size)
    query, query_labels = extract_features(
        feature_fn, self.strategy, self.query_input_fn, feature_step=feature_step,
        max_examples=self.knn_config.knn_eval_examples, global_batch_size=batch_size)
    accuracy = knn_accuracy(query, query_labels, bank, bank_labels, self.num_classes,
                            k=self.knn_config.knn_k,
                            temperature=self.knn_config.knn_temperature)
    result = {f'{prefix}{name}': value for name, value in accuracy.items()}
    result[f'{prefix}bank_size'] = int(bank.shape[0])
    result[f'{prefix}num_queries'] = int(query.shape[0])
    result[f'{prefix}seconds'] = time.perf_counter() - start
    return result

  def evaluate(self, model: Any, prefix: str = 'knn/') -> dict[str, float]:
    """{'<prefix>top_1_accuracy', '<prefix>top_5_accuracy', '<prefix>bank_size',
    '<prefix>num_queries', '<prefix>seconds'} of `model`'s final_avg_pool features."""
    if self._cached_model is not model:  # One trace per model, reused at each step.
      feature_fn = encoder_feature_fn(model)
      self._cached_model = model
      self._cached_step = (feature_fn, make_feature_step(feature_fn, self.strategy))
    feature_fn, feature_step = self._cached_step
    return self.evaluate_features(feature_fn, prefix, feature_step)

  def run_during_training(self, model: Any, step: int, writer: Any,
                          chief: bool = True, verbose: bool = True) -> dict[str, float]:
    """`evaluate`, then TensorBoard scalars (knn/*), a line on stdout and an entry of
    model_dir/knn.json (chief only). Returns the metrics."""
    result = self.evaluate(model)
    if not chief:
      return result
    with writer.as_default():
      for name in ('top_1_accuracy', 'top_5_accuracy'):
        if f'knn/{name}' in result:
          tf.summary.scalar(f'knn/{name}', result[f'knn/{name}'], step=step)
    writer.flush()
    if verbose:
      print(f'kNN at step {step}: top-1 {result["knn/top_1_accuracy"]:.4f} '
            f'(k={self.knn_config.knn_k}, bank {result["knn/bank_size"]}, '
            f'{result["knn/num_queries"]} queries, {result["knn/seconds"]:.1f} s)', flush=True)
    append_history(self.config.train.model_dir, {'global_step': step, **result})
    return result


def append_history(model_dir: str, entry: dict[str, Any]) -> None:
  """Appends `entry` to model_dir/knn.json (a JSON list; an entry per kNN run)."""
  path = os.path.join(model_dir, KNN_HISTORY_FILENAME)
  history = read_history(model_dir)
  history = [item for item in history if item.get('global_step') != entry.get('global_step')]
  history.append(entry)
  run_dir.write_json_atomic(path, history)


def read_history(model_dir: str) -> list[dict[str, Any]]:
  """The entries of model_dir/knn.json; [] when absent."""
  path = os.path.join(model_dir, KNN_HISTORY_FILENAME)
  if not tf.io.gfile.exists(path):
    return []
  return list(run_dir.read_json(path))


def monitor_for(config: config_lib.Config, strategy: tf.distribute.Strategy,
                num_classes: int) -> Optional[KnnMonitor]:
  """A KnnMonitor when --knn_every_steps > 0 and pretraining; else None."""
  if config.knn.knn_every_steps <= 0 or config.train.train_mode != 'pretrain':
    return None
  return KnnMonitor(config, strategy, num_classes)
