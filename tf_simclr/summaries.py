"""TensorBoard summaries of a run besides the loss curves: hyper-parameters, throughput.

* `write_hparams`: the run's configuration for the HParams dashboard (one session per
  model_dir; its metrics are the run's scalars, e.g. eval/label_top_1_accuracy).
* `throughput`: `train/steps_per_second` and `train/images_per_second` of a training
  loop, from the time of its steps alone (checkpoints and exports are not counted).
"""

from __future__ import annotations

from typing import Any, Optional

import tensorflow as tf

from tf_simclr import config as config_lib


def hparams_of(config: config_lib.Config) -> dict[str, Any]:
  """{flag name: value} of the config, as the HParams plugin takes them.

  Values are bool, int, float or str; None becomes '' (the plugin has no null), and
  `model_dir` (the run itself) is left out.
  """
  values = {}
  for name, value in sorted(config.flat_dict().items()):
    if name == 'model_dir':
      continue
    if value is None:
      value = ''
    elif not isinstance(value, (bool, int, float, str)):
      value = str(value)
    values[name] = value
  return values


def write_hparams(writer: Any, config: config_lib.Config, step: int = 0) -> bool:
  """Writes the HParams session of the run to `writer`; False when the plugin is missing."""
  try:
    from tensorboard.plugins.hparams import api as hparams_api  # pylint: disable=g-import-not-at-top
  except ImportError:
    return False
  with writer.as_default(step=step):
    hparams_api.hparams(hparams_of(config), trial_id=config.train.model_dir)
  return True


def throughput(num_steps: int, seconds: float, global_batch_size: int
               ) -> dict[str, float]:
  """{'steps_per_second', 'images_per_second'} of `num_steps` steps in `seconds`.

  Images count the examples of the global batch (the two views of a pretraining
  example count once), as the progress line does.
  """
  seconds = max(seconds, 1e-9)
  return {'steps_per_second': num_steps / seconds,
          'images_per_second': num_steps * global_batch_size / seconds}


def write_throughput(writer: Any, step: int, num_steps: int, seconds: float,
                     global_batch_size: int, prefix: Optional[str] = 'train/') -> None:
  """Writes `throughput(...)` as scalars `<prefix>steps_per_second` etc. at `step`."""
  with writer.as_default():
    for name, value in throughput(num_steps, seconds, global_batch_size).items():
      tf.summary.scalar(f'{prefix or ""}{name}', value, step=step)
