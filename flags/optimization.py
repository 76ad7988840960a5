"""Optimizer, learning-rate schedule and training length flags."""

from absl import flags as absl_flags

from tf_simclr import config as config_lib

OFFICIAL_FLAGS = ('learning_rate', 'learning_rate_scaling', 'warmup_epochs',
                  'weight_decay', 'optimizer', 'momentum', 'train_batch_size',
                  'train_epochs', 'train_steps')
OUR_FLAGS = ()


def define_flags(flag_values: absl_flags.FlagValues = absl_flags.FLAGS) -> None:
  """Defines this topic's flags on `flag_values`."""
  absl_flags.DEFINE_float(
      'learning_rate', 0.3,
      'Base learning rate for a batch of 256 examples; scaled to the real batch '
      'size by --learning_rate_scaling.', flag_values=flag_values)
  absl_flags.DEFINE_enum(
      'learning_rate_scaling', 'linear', list(config_lib.LEARNING_RATE_SCALINGS),
      'How the peak learning rate follows the batch size B: linear is '
      'learning_rate * B / 256, sqrt is learning_rate * sqrt(B).',
      flag_values=flag_values)
  absl_flags.DEFINE_float(
      'warmup_epochs', 10,
      'Epochs of linear learning-rate warm-up before the cosine decay (may be '
      'fractional).', flag_values=flag_values)
  absl_flags.DEFINE_float(
      'weight_decay', 1e-6,
      'Weight-decay coefficient (applied inside LARS; an L2 loss term with the '
      'other optimizers).', flag_values=flag_values)
  absl_flags.DEFINE_enum(
      'optimizer', 'lars', list(config_lib.OPTIMIZERS),
      'Optimizer: lars (LARS with momentum), momentum (SGD with Nesterov '
      'momentum) or adam.', flag_values=flag_values)
  absl_flags.DEFINE_float(
      'momentum', 0.9, 'Momentum of the lars and momentum optimizers.',
      flag_values=flag_values)
  absl_flags.DEFINE_integer(
      'train_batch_size', 512,
      'Global training batch size (summed over all replicas; each example '
      'gives two views when pretraining).', flag_values=flag_values)
  absl_flags.DEFINE_integer(
      'train_epochs', 100, 'Number of epochs to train for.',
      flag_values=flag_values)
  absl_flags.DEFINE_integer(
      'train_steps', 0,
      'Number of training steps; when > 0 it overrides --train_epochs.',
      flag_values=flag_values)
