"""--mixed_precision=bfloat16 training tracks float32: the loss curves of the real
training step (bench/common's copy of tf_simclr.train's loop) on one fixed batch.

Tolerance: at every step |loss_bf16 - loss_fp32| <= 3% of the initial float32 loss.
bf16 keeps 8 mantissa bits (relative rounding 2^-9 = 0.2% per value); BN statistics, the
projection and the loss are float32, so the curves differ by accumulated rounding only.
The tolerance is relative to the initial loss because the curve falls towards 0 on the
fixed batch, where relative differences of tiny values mean nothing.
"""

import tempfile

import numpy as np
import pytest
import tensorflow as tf

from bench import common
from tf_simclr import config as config_lib
from tf_simclr import metrics as metrics_lib

TOLERANCE_OF_INITIAL_LOSS = 0.03


def _loss_curve(mixed_precision: str, steps: int) -> np.ndarray:
  config = config_lib.Config(
      model=config_lib.ModelConfig(resnet_depth=18, proj_out_dim=32),
      data=config_lib.DataConfig(image_size=8),
      optim=config_lib.OptimConfig(learning_rate=0.3, warmup_epochs=0),
      train=config_lib.TrainConfig(train_batch_size=8, train_steps=steps,
                                   lineareval_while_pretraining=False,
                                   mixed_precision=mixed_precision,
                                   force_bfloat16=True,  # Also on CPUs without bf16.
                                   model_dir=tempfile.mkdtemp()))
  tf.keras.utils.set_random_seed(0)  # Same initial weights in both runs.
  strategy = tf.distribute.get_strategy()
  train_loop, _, _ = common.build_train_loop(config, strategy, num_classes=10)
  batch = common.random_batch(config, 8, num_classes=10, seed=1)
  # Related views, so the contrastive task is learnable: view 2 = mirrored view 1 plus
  # a little noise ([2b, H, W, 3], view 1 rows first).
  view1 = batch['image'][:8]
  noise = tf.random.stateless_uniform(view1.shape, seed=[2, 3], maxval=0.1)
  batch['image'] = tf.concat([view1, 0.9 * view1[:, :, ::-1] + noise], 0)
  iterator = iter(tf.data.Dataset.from_tensors(batch).repeat())
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
