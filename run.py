"""tf_simclr command line: pretrain, finetune and evaluate SimCLR models.

  python run.py --mode=train_then_eval --train_mode=pretrain --dataset=cifar10 \
      --image_size=32 --resnet_depth=18 --model_dir=/tmp/simclr ...

The flags are those of google-research/simclr tf2/run.py (see `flags/`). Bad input
(flags, data, checkpoints) ends with one line `error: ...` on stderr and exit code 2.
"""

import os
import sys

from absl import app
from absl import flags as absl_flags

import flags as simclr_flags
from tf_simclr import config as config_lib
from tf_simclr import strategy as strategy_lib

EXIT_BAD_INPUT = 2


def fail(message: str) -> None:
  """Prints one line `error: message` on stderr and exits with code 2."""
  print('error: ' + ' '.join(str(message).split()), file=sys.stderr, flush=True)
  sys.exit(EXIT_BAD_INPUT)


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing with a bad value turned into one line and exit code 2."""
  try:
    return absl_flags.FLAGS(argv)
  except absl_flags.Error as error:
    fail(str(error))


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    fail(f'unexpected arguments {argv[1:]}; flags look like --name=value.')
  try:
    config = simclr_flags.config_from_flags()
    # Before any other TF op: logical CPUs and multi-worker set-up need it.
    strategy = strategy_lib.create_strategy(config.infra)
    config_lib.validate(config, strategy.num_replicas_in_sync)
  except (ValueError, FileNotFoundError) as error:
    fail(str(error))

  # Imported after the strategy exists (they touch TF at import).
  from tf_simclr import checkpoints  # pylint: disable=g-import-not-at-top
  from tf_simclr import evaluate as evaluate_lib  # pylint: disable=g-import-not-at-top
  from tf_simclr import train as train_lib  # pylint: disable=g-import-not-at-top

  mode = config.train.mode
  try:
    data_sizes = train_lib.dataset_info(config)
    if mode in ('train', 'train_then_eval'):
      # Check the inputs before the first file goes to model_dir.
      if config.train.checkpoint:
        checkpoints.check_compatible(checkpoints.resolve_checkpoint(config.train.checkpoint),
                                     config)
      if checkpoints.is_chief(strategy):
        checkpoints.write_json_atomic(os.path.join(config.train.model_dir, 'flags.json'),
                                      simclr_flags.flags_to_json())
      train_lib.train(config, strategy, data_sizes=data_sizes)
    if mode == 'train_then_eval':
      evaluate_lib.evaluate(config, strategy, data_sizes=data_sizes)
    elif mode == 'eval':
      evaluate_lib.evaluate_continuously(config, strategy, data_sizes=data_sizes)
  except (ValueError, FileNotFoundError) as error:
    fail(str(error))


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
