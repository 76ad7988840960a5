"""Encoder, projection head and contrastive loss flags."""

from absl import flags as absl_flags

from tf_simclr import config as config_lib

OFFICIAL_FLAGS = ('resnet_depth', 'width_multiplier', 'sk_ratio', 'se_ratio',
                  'batch_norm_decay', 'global_bn', 'proj_head_mode',
                  'proj_out_dim', 'num_proj_layers', 'ft_proj_selector',
                  'temperature', 'hidden_norm')
OUR_FLAGS = ('cifar_stem',)


def define_flags(flag_values: absl_flags.FlagValues = absl_flags.FLAGS) -> None:
  """Defines this topic's flags on `flag_values`."""
  absl_flags.DEFINE_integer(
      'resnet_depth', 50, 'ResNet depth: 18, 34, 50, 101, 152 or 200.',
      flag_values=flag_values)
  absl_flags.DEFINE_integer(
      'width_multiplier', 1, 'Channel-width multiplier of the ResNet (1 to 4).',
      flag_values=flag_values)
  absl_flags.DEFINE_float(
      'sk_ratio', 0.0,
      'Selective-kernel ratio; > 0 enables SK convolutions (SimCLRv2 uses '
      '0.0625).', flag_values=flag_values)
  absl_flags.DEFINE_float(
      'se_ratio', 0.0, 'Squeeze-and-excitation ratio; > 0 enables SE blocks.',
      flag_values=flag_values)
  absl_flags.DEFINE_float(
      'batch_norm_decay', 0.9,
      'Momentum of the batch-norm moving averages.', flag_values=flag_values)
  absl_flags.DEFINE_bool(
      'global_bn', True,
      'Compute batch-norm statistics over all replicas (synchronized BN).',
      flag_values=flag_values)
  absl_flags.DEFINE_enum(
      'proj_head_mode', 'nonlinear', list(config_lib.PROJ_HEAD_MODES),
      'Projection head: none (identity), linear (one dense layer) or nonlinear '
      '(--num_proj_layers dense layers).', flag_values=flag_values)
  absl_flags.DEFINE_integer(
      'proj_out_dim', 128, 'Output dimension of the projection head.',
      flag_values=flag_values)
  absl_flags.DEFINE_integer(
      'num_proj_layers', 3, 'Number of layers of the nonlinear projection head.',
      flag_values=flag_values)
  absl_flags.DEFINE_integer(
      'ft_proj_selector', 0,
      'Projection-head layer that feeds the supervised head: 0 is the encoder '
      'output, -1 the last head layer.', flag_values=flag_values)
  absl_flags.DEFINE_float(
      'temperature', 0.1, 'Temperature of the NT-Xent contrastive loss.',
      flag_values=flag_values)
  absl_flags.DEFINE_bool(
      'hidden_norm', True,
      'L2-normalise the projections before the contrastive loss (cosine '
      'similarity).', flag_values=flag_values)
  absl_flags.DEFINE_bool(
      'cifar_stem', None,
      'ResNet stem: true is a 3x3 stride-1 conv without max-pool, false the '
      'ImageNet 7x7 stride-2 conv and max-pool; unset picks the CIFAR stem when '
      '--image_size <= 32, as the official code does.', flag_values=flag_values)
