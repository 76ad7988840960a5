"""Quick linear probe of frozen features, for monitoring (not the official protocol).

The official linear evaluation trains the supervised head on a frozen encoder with
augmentation for many epochs (`--train_mode=finetune --fine_tune_after_block=4
--checkpoint=...`). This module is the cheap variant: extract features once (no
augmentation, see `tf_simclr.knn.extract_features`), standardise them with the train
statistics, then fit a multinomial logistic regression by full-batch Adam for a few
hundred steps with a small L2 penalty. On a few thousand examples it takes seconds.

Usable on a checkpoint (`encoder_from_checkpoint` + `knn.encoder_feature_fn`) or a TF
Hub export (`knn.hub_feature_fn`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import keras
import numpy as np
import tensorflow as tf

from tf_simclr import checkpoints
from tf_simclr import config as config_lib

DEFAULT_STEPS = 300
DEFAULT_LEARNING_RATE = 0.05
DEFAULT_L2 = 1e-4


@dataclasses.dataclass(frozen=True)
class LinearProbe:
  """A fitted probe: logits = ((x - mean) / std) @ kernel + bias."""
  mean: np.ndarray     # [D]
  std: np.ndarray      # [D]
  kernel: np.ndarray   # [D, C]
  bias: np.ndarray     # [C]
  final_loss: float    # training cross-entropy + L2 at the last step

  def logits(self, features: Any) -> np.ndarray:
    """[N, C] logits of features [N, D]."""
    standardised = (np.asarray(features, np.float32) - self.mean) / self.std
    return standardised @ self.kernel + self.bias

  def accuracy(self, features: Any, labels: Any) -> float:
    """Top-1 accuracy (fraction) on features [N, D] with integer labels [N]."""
    predictions = np.argmax(self.logits(features), axis=1)
    return float(np.mean(predictions == np.asarray(labels)))


def fit_linear_probe(features: Any, labels: Any, num_classes: int, *,
                     steps: int = DEFAULT_STEPS,
                     learning_rate: float = DEFAULT_LEARNING_RATE,
                     l2: float = DEFAULT_L2, seed: int = 0) -> LinearProbe:
  """Multinomial logistic regression on standardised features, full-batch Adam.

  Args:
    features: [N, D] train features.
    labels: [N] integer classes.
    num_classes: C.
    steps: full-batch Adam steps.
    learning_rate: Adam step size.
    l2: penalty l2 * sum(kernel^2) added to the mean cross-entropy.
    seed: initial kernel (small normal) seed.
  """
  features = np.asarray(features, np.float32)
  mean = features.mean(axis=0)
  std = features.std(axis=0) + 1e-6
  inputs = tf.constant((features - mean) / std)
  targets = tf.constant(np.asarray(labels, np.int64))
  dimension = features.shape[1]
  rng = np.random.default_rng(seed)
  kernel = tf.Variable(rng.normal(0.0, 0.01, [dimension, num_classes]).astype(np.float32))
  bias = tf.Variable(tf.zeros([num_classes]))
  optimizer = keras.optimizers.Adam(learning_rate)
  optimizer.build([kernel, bias])

  def loss_fn() -> tf.Tensor:
    logits = tf.matmul(inputs, kernel) + bias
    cross_entropy = tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits))
    return cross_entropy + l2 * tf.reduce_sum(tf.square(kernel))

  @tf.function
  def train(num_steps: tf.Tensor) -> tf.Tensor:
    for _ in tf.range(num_steps):
      with tf.GradientTape() as tape:
        loss = loss_fn()
      optimizer.apply_gradients(zip(tape.gradient(loss, [kernel, bias]), [kernel, bias]))
    return loss_fn()

  final_loss = float(train(tf.constant(steps)))
  return LinearProbe(mean=mean, std=std, kernel=kernel.numpy(), bias=bias.numpy(),
                     final_loss=final_loss)


def linear_probe_accuracy(train_features: Any, train_labels: Any, test_features: Any,
                          test_labels: Any, num_classes: int, **fit_kwargs: Any
                          ) -> dict[str, float]:
  """{'train_top_1_accuracy', 'test_top_1_accuracy', 'final_loss'} of a fitted probe."""
  probe = fit_linear_probe(train_features, train_labels, num_classes, **fit_kwargs)
  return {'train_top_1_accuracy': probe.accuracy(train_features, train_labels),
          'test_top_1_accuracy': probe.accuracy(test_features, test_labels),
          'final_loss': probe.final_loss}


def encoder_from_checkpoint(config: config_lib.Config, num_classes: int,
                            checkpoint_path: Optional[str] = None,
                            strategy: Optional[tf.distribute.Strategy] = None) -> Any:
  """A SimCLRModel of `config` (pretrain mode, no supervised head) with the encoder
  weights of `checkpoint_path` (a prefix or a model_dir); None: the random
  initialisation of seed `config.train.seed` (the one a run of that seed starts from).
  """
  from tf_simclr.models import build_model_for  # pylint: disable=g-import-not-at-top
  model_config = config_lib.replace(
      config, train={'train_mode': 'pretrain', 'lineareval_while_pretraining': False,
                     'fine_tune_after_block': -1, 'zero_init_logits_layer': False})
  strategy = strategy or tf.distribute.get_strategy()
  keras.utils.set_random_seed(config.train.seed)
  with strategy.scope():
    model = build_model_for(model_config, num_classes)
  if checkpoint_path:
    path = checkpoints.resolve_checkpoint(checkpoint_path)
    checkpoints.check_compatible(path, config)
    checkpoints.restore_or_explain(
        tf.train.Checkpoint(model=tf.train.Checkpoint(encoder=model.encoder)), path)
  return model
