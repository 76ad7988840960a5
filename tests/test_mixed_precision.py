"""--mixed_precision=bfloat16 training tracks float32: the loss curves of the real
training step (bench/common's copy of tf_simclr.train's loop) on one fixed batch.

Tolerance: at every step |loss_bf16 - loss_fp32| <= 3% of the initial float32 loss.
bf16 keeps 8 mantissa bits (relative rounding 2^-9 = 0.2% per value); BN statistics, the
projection and the loss are float32, so the curves differ by accumulated rounding only.
The tolerance is relative to the initial loss because the curve falls towards 0 on the
fixed batch, where relative differences of tiny values mean nothing.
"""

import numpy as np
import pytest
import tensorflow as tf

from tests import train_fixtures
from tf_simclr import metrics as metrics_lib

TOLERANCE_OF_INITIAL_LOSS = 0.03


def _loss_curve(mixed_precision: str, steps: int) -> np.ndarray:
  _, train_loop, iterator, _ = train_fixtures.related_views_training(
      mixed_precision, train_steps=steps, force_bfloat16=True)  # Also on CPUs without bf16.
  names = metrics_lib.train_metric_names(pretrain=True, supervised=False)
  index = names.index('total_loss')
  one = tf.constant(1)
  return np.array([train_loop(iterator, one).numpy()[index] for _ in range(steps)])


def _check(steps: int) -> None:
  float32 = _loss_curve('float32', steps)
  bfloat16 = _loss_curve('bfloat16', steps)
  assert float32[-1] < 0.5 * float32[0]  # It trains: the curve is worth comparing.
  assert bfloat16[-1] < 0.5 * bfloat16[0]
  deviation = np.max(np.abs(bfloat16 - float32)) / float32[0]
  assert deviation <= TOLERANCE_OF_INITIAL_LOSS, (deviation, float32, bfloat16)


def test_bfloat16_loss_tracks_float32_10_steps():
  _check(10)


@pytest.mark.slow
def test_bfloat16_loss_tracks_float32_50_steps():
  _check(50)
