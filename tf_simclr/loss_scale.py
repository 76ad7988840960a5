"""`--mixed_precision=float16`: dynamic loss scaling that all replicas agree on.

float16 keeps 10 mantissa bits but only 5 exponent bits: gradients below about 6e-8
flush to zero. Dynamic loss scaling multiplies the loss by a scale S (2^15 at start),
divides the gradients by S before the update, halves S and skips the update when any
gradient is Inf/NaN, and doubles S after 2000 finite steps (`keras.optimizers.
LossScaleOptimizer`). The projection head, the supervised head and the losses run in
float32 (`SimCLRModel(heads_dtype='float32')`); the encoder in float16 with float32
variables (Keras `mixed_float16`).

Two things Keras 3's LossScaleOptimizer does not do, added here:
- a skipped step still counts in `iterations` (the training loop's step counter, the
  learning-rate schedule and the checkpoint steps), as tf.keras's LossScaleOptimizer
  did, so a run takes --train_steps steps whatever overflows;
- every replica and worker takes the same decision: Keras checks the gradients of
  the first local replica only, so one replica's overflow could go unnoticed (an Inf
  in the summed update) and two workers could disagree and hang.
  `agree_on_overflow` all-reduces the count of replicas with non-finite gradients and
  turns every replica's gradients to NaN when it is > 0.
"""

from __future__ import annotations

from typing import Optional, Sequence

import keras
import tensorflow as tf

# Metric of the training step: 1.0 when the step's update was skipped (overflow).
SKIPPED_METRIC = 'skipped_steps'


def dtype_policy(mixed_precision: str) -> Optional[str]:
  """The Keras dtype policy of --mixed_precision (None: the default float32)."""
  return {'float32': None, 'bfloat16': 'mixed_bfloat16',
          'float16': 'mixed_float16'}[mixed_precision]


def uses_loss_scaling(mixed_precision: str) -> bool:
  return mixed_precision == 'float16'


class LossScaleOptimizer(keras.optimizers.LossScaleOptimizer):
  """Keras' dynamic loss scaling; a skipped (overflow) step still counts as a step."""

  def _stateful_handle_non_finite_grads(self):
    super()._stateful_handle_non_finite_grads()
    self.inner_optimizer.iterations.assign_add(1)


def wrap_optimizer(optimizer: keras.optimizers.Optimizer, mixed_precision: str
                   ) -> keras.optimizers.Optimizer:
  """`optimizer` inside a LossScaleOptimizer for float16, else itself."""
  if uses_loss_scaling(mixed_precision):
    return LossScaleOptimizer(optimizer)
  return optimizer


def agree_on_overflow(gradients: Sequence[Optional[tf.Tensor]],
                      replica_context: Optional[tf.distribute.ReplicaContext]
                      ) -> tuple[list[Optional[tf.Tensor]], tf.Tensor]:
  """Makes all replicas see an overflow when any replica's gradients have one.

  Args:
    gradients: this replica's (scaled) gradients; None entries are kept.
    replica_context: the replica context of `strategy.run` (None: one replica).

  Returns:
    (gradients, skipped): the gradients unchanged when all replicas' are finite,
    else NaN everywhere (so LossScaleOptimizer skips the step on every replica);
    `skipped` a float32 scalar, 1.0 when the step will be skipped.
  """
  present = [gradient for gradient in gradients if gradient is not None]
  finite = tf.reduce_all(tf.stack([tf.reduce_all(tf.math.is_finite(gradient))
                                   for gradient in present]))
  overflows = 1.0 - tf.cast(finite, tf.float32)
  if replica_context is not None and replica_context.num_replicas_in_sync > 1:
    overflows = replica_context.all_reduce(tf.distribute.ReduceOp.SUM, overflows)
  skipped = tf.cast(overflows > 0, tf.float32)
  poisoned = []
  for gradient in gradients:
    if gradient is None:
      poisoned.append(None)
      continue
    # + 0 when finite everywhere (the gradient exactly), + NaN otherwise.
    poison = tf.cast(tf.where(overflows > 0, float('nan'), 0.0), gradient.dtype)
    poisoned.append(gradient + poison)
  return poisoned, skipped
