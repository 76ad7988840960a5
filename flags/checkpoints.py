"""Output directory, checkpoint and TF Hub export flags."""

from absl import flags as absl_flags

from tf_simclr import config as config_lib

OFFICIAL_FLAGS = ('model_dir', 'checkpoint_epochs', 'checkpoint_steps',
                  'keep_checkpoint_max', 'keep_hub_module_max', 'eval_name')
OUR_FLAGS = ('export_hub_module',)


def define_flags(flag_values: absl_flags.FlagValues = absl_flags.FLAGS) -> None:
  """Defines this topic's flags on `flag_values`."""
  absl_flags.DEFINE_string(
      'model_dir', None,
      'Directory for checkpoints, summaries, flags.json, result*.json and '
      'exports (required).', flag_values=flag_values)
  absl_flags.DEFINE_integer(
      'checkpoint_epochs', 1, 'Epochs between checkpoints and summaries.',
      flag_values=flag_values)
  absl_flags.DEFINE_integer(
      'checkpoint_steps', 0,
      'Steps between checkpoints and summaries; when > 0 it overrides '
      '--checkpoint_epochs.', flag_values=flag_values)
  absl_flags.DEFINE_integer(
      'keep_checkpoint_max', 5, 'Number of newest checkpoints to keep.',
      flag_values=flag_values)
  absl_flags.DEFINE_integer(
      'keep_hub_module_max', 1,
      'Number of newest TF Hub exports (model_dir/saved_model/<step>) to keep; '
      '0 keeps all.', flag_values=flag_values)
  absl_flags.DEFINE_string(
      'eval_name', None, 'Name for the evaluation (accepted; unused, as in the '
      'official code).', flag_values=flag_values)
  absl_flags.DEFINE_enum(
      'export_hub_module', 'checkpoint', list(config_lib.EXPORT_WHEN),
      'When to export the encoder as a TF Hub SavedModel: at every checkpoint, '
      'at the end of training, or never.', flag_values=flag_values)
