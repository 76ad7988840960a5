"""--mixed_precision=float16: dynamic loss scaling, skipped overflow steps, and a loss
curve that tracks float32.

The real training step and loop (tf_simclr.train through bench/common) train a tiny
ResNet-18 on one fixed batch whose two views are related (view 2 = mirrored view 1 plus
noise), so the contrastive loss falls. The learning rate is nearly constant over the
steps run (cosine over 1000 steps), so a curve shifted by skipped steps is comparable.

Independent checks:
- Keras' rule (halve the scale on overflow, skip the update) in closed form: after k
  skipped steps the scale is 2^15 / 2^k, the loss of every skipped step equals the
  first one exactly (no update), and every step, skipped or not, counts in
  `iterations`;
- the float16 losses of the applied steps track the float32 curve step for step within
  3% of the initial float32 loss (float16 keeps 11 significant bits, bfloat16's
  tolerance in test_mixed_precision.py is the same; measured deviation below).
"""

import numpy as np
import pytest
import tensorflow as tf

from tests import train_fixtures
from tf_simclr import train as train_lib

TOLERANCE_OF_INITIAL_LOSS = 0.03
STEPS = 10


def _curve(mixed_precision: str, steps: int) -> tuple[np.ndarray, np.ndarray, object]:
  """(total losses, skipped flags, optimizer) of `steps` single-step loop calls."""
  config, train_loop, iterator, optimizer = train_fixtures.related_views_training(
      mixed_precision, train_steps=1000)
  names = train_lib.train_metric_names(config, pretrain=True, supervised=False)
  metrics = np.array([train_loop(iterator, tf.constant(1)).numpy() for _ in range(steps)])
  skipped = metrics[:, names.index('skipped_steps')] if 'skipped_steps' in names else (
      np.zeros(steps))
  return metrics[:, names.index('total_loss')], skipped, optimizer


def test_float16_skips_overflow_steps_and_tracks_float32():
  float32, skipped32, _ = _curve('float32', STEPS)
  assert not skipped32.any()
  # The first steps overflow at the initial scale 2^15: run enough for STEPS updates.
  float16, skipped, optimizer = _curve('float16', STEPS + 6)
  num_skipped = int(skipped.sum())
  assert set(np.unique(skipped)) <= {0.0, 1.0}
  assert 1 <= num_skipped <= 6, skipped
  assert not skipped[num_skipped:].any(), skipped  # Overflows only while the scale falls.
  assert float(optimizer.dynamic_scale.numpy()) == 2.0 ** (15 - num_skipped)
  assert int(optimizer.iterations.numpy()) == STEPS + 6  # Skipped steps count.
  # No update during skipped steps: the same loss, bit for bit.
  np.testing.assert_array_equal(float16[:num_skipped + 1], float16[0])
  applied = float16[num_skipped:num_skipped + STEPS]
  assert float32[-1] < 0.5 * float32[0] and applied[-1] < 0.5 * applied[0]  # It trains.
  deviation = np.max(np.abs(applied - float32)) / float32[0]
  print(f'skipped {num_skipped}; max |float16 - float32| / initial loss {deviation:.4f}')
  assert deviation <= TOLERANCE_OF_INITIAL_LOSS, (deviation, float32, applied)


@pytest.mark.slow
def test_overflow_on_one_replica_skips_the_step_on_all():
  # MirroredStrategy over 2 logical CPUs needs a fresh process (about 15 s).
  import json  # pylint: disable=g-import-not-at-top
  import pathlib  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  root = pathlib.Path(__file__).resolve().parents[1]
  output = subprocess.run([sys.executable, str(root / 'tests' / 'loss_scale_replicas_check.py')],
                          cwd=root, capture_output=True, text=True, timeout=600, check=True)
  first, second = json.loads(output.stdout.strip().splitlines()[-1])
  # Step 1: only replica 1's gradient is Inf; both replicas skip, nothing moves, the
  # scale halves (4 -> 2) and the step still counts.
  assert first == {'skipped': [1.0, 1.0], 'variable': [1.0, 2.0], 'scale': 2.0,
                   'iterations': 1}
  # Step 2: scaled gradients 2 * 1 and 2 * 2, summed 6, unscaled by 2: 3; SGD 0.5.
  assert second == {'skipped': [0.0, 0.0], 'variable': [-0.5, 0.5], 'scale': 2.0,
                    'iterations': 2}
