"""Metric bookkeeping for the training and evaluation loops.

Per-step metrics come out of `strategy.run` as scalars, are averaged over replicas
with one all-reduce of a packed vector, and summed over the steps of a loop inside
the `tf.function`; Python divides by the step count. Evaluation metrics are sums of
mask-weighted counts, summed over replicas, so every real example counts exactly once
and padding (mask 0) not at all.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import tensorflow as tf

# Training metrics in the order they are packed; summary tags are 'train/<name>'.
PRETRAIN_METRICS = ('contrast_loss', 'contrast_acc', 'contrast_entropy')
SUPERVISED_METRICS = ('supervised_loss', 'supervised_acc')
COMMON_METRICS = ('weight_decay', 'total_loss')


def train_metric_names(pretrain: bool, supervised: bool) -> tuple[str, ...]:
  """Names of the training metrics a step reports."""
  return ((PRETRAIN_METRICS if pretrain else ()) +
          (SUPERVISED_METRICS if supervised else ()) + COMMON_METRICS)


def pack(values: Mapping[str, tf.Tensor], names: Sequence[str]) -> tf.Tensor:
  """{name: scalar} -> float32 vector [len(names)] in the order of `names`."""
  return tf.stack([tf.cast(values[name], tf.float32) for name in names])


def unpack(vector: np.ndarray, names: Sequence[str]) -> dict[str, float]:
  """Inverse of `pack` on a NumPy vector."""
  return {name: float(value) for name, value in zip(names, np.asarray(vector))}


def top_k_correct(labels_onehot: tf.Tensor, logits: tf.Tensor, mask: tf.Tensor,
                  k: int) -> tf.Tensor:
  """Sum over the batch of mask * [label among the k largest logits].

  Args:
    labels_onehot: [b, C] one-hot labels.
    logits: [b, C].
    mask: [b] weights (1 real example, 0 padding).
    k: clipped to C.

  Returns:
    Scalar float32 weighted count.
  """
  logits = tf.cast(logits, tf.float32)
  k = min(k, int(logits.shape[-1]))
  label_index = tf.argmax(labels_onehot, axis=-1, output_type=tf.int32)
  hit = tf.math.in_top_k(label_index, logits, k)  # [b]
  return tf.reduce_sum(tf.cast(hit, tf.float32) * tf.cast(mask, tf.float32))


class EvalAccumulator:
  """Float64 sums of weighted eval quantities over batches.

  `add({'count': c, 'top_1': t1, ...})` takes values already summed over replicas;
  `ratio('top_1')` is sum(top_1) / sum(count).
  """

  def __init__(self) -> None:
    self.sums: dict[str, float] = {}

  def add(self, values: Mapping[str, float]) -> None:
    for name, value in values.items():
      self.sums[name] = self.sums.get(name, 0.0) + float(value)

  def total(self, name: str) -> float:
    return self.sums.get(name, 0.0)

  def ratio(self, name: str, denominator: str = 'count') -> float:
    count = self.total(denominator)
    return self.total(name) / count if count else float('nan')
