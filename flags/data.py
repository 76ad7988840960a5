"""Data source, input size and augmentation flags."""

from absl import flags as absl_flags

OFFICIAL_FLAGS = ('dataset', 'data_dir', 'train_split', 'eval_split',
                  'cache_dataset', 'image_size', 'eval_batch_size', 'eval_steps',
                  'color_jitter_strength', 'use_blur')
OUR_FLAGS = ('color_jitter_impl', 'blur_impl', 'crop_fallback', 'eval_timeout_secs',
             'image_folder_labels')


def define_flags(flag_values: absl_flags.FlagValues = absl_flags.FLAGS) -> None:
  """Defines this topic's flags on `flag_values`."""
  absl_flags.DEFINE_string(
      'dataset', 'imagenet2012',
      'Dataset: a TFDS name (e.g. cifar10), or image_folder for images in '
      'data_dir/<split>/<class>/.',
      flag_values=flag_values)
  absl_flags.DEFINE_string(
      'data_dir', None, 'Directory that holds the dataset (TFDS data_dir or '
      'the image folder root).', flag_values=flag_values)
  absl_flags.DEFINE_string(
      'train_split', 'train', 'Split to train on (TFDS slicing allowed, e.g. '
      'train[:10%]).', flag_values=flag_values)
  absl_flags.DEFINE_string(
      'eval_split', 'validation', 'Split to evaluate on.',
      flag_values=flag_values)
  absl_flags.DEFINE_bool(
      'cache_dataset', False,
      'Keep the decoded dataset in memory; helps small datasets, far too '
      'large for ImageNet.', flag_values=flag_values)
  absl_flags.DEFINE_integer(
      'image_size', 224, 'Height and width of the network input images.',
      flag_values=flag_values)
  absl_flags.DEFINE_integer(
      'eval_batch_size', 256, 'Global evaluation batch size.',
      flag_values=flag_values)
  absl_flags.DEFINE_integer(
      'eval_steps', 0,
      'Number of evaluation steps; 0 evaluates the whole eval split once.',
      flag_values=flag_values)
  absl_flags.DEFINE_float(
      'color_jitter_strength', 1.0,
      'Strength of the colour-jitter augmentation (brightness, contrast, '
      'saturation 0.8x, hue 0.2x this value).', flag_values=flag_values)
  absl_flags.DEFINE_bool(
      'use_blur', True,
      'Apply random Gaussian blur to pretraining views.',
      flag_values=flag_values)
  absl_flags.DEFINE_enum(
      'color_jitter_impl', 'simclrv2', ['simclrv2', 'simclrv1'],
      'Brightness jitter of SimCLRv2 (multiplicative, the official tf2 code) '
      'or SimCLRv1 (additive).', flag_values=flag_values)
  absl_flags.DEFINE_enum(
      'blur_impl', 'per_image', ['per_image', 'per_batch'],
      'Blur of --use_blur: per_image draws sigma for each image and pads by '
      'reflection; per_batch draws one sigma per view of each per-replica batch '
      'and pads with zeros, as the official tf2 code.', flag_values=flag_values)
  absl_flags.DEFINE_enum(
      'crop_fallback', 'whole_image', ['whole_image', 'center_crop'],
      'When no random crop fits after 100 tries (an image over ~13x wider than '
      'tall, or taller than wide): the whole image, squeezed to the output (the official code), or a '
      'center crop with the aspect ratio clamped to [3/4, 4/3] (torchvision).',
      flag_values=flag_values)
  absl_flags.DEFINE_enum(
      'image_folder_labels', 'auto', ['auto', 'folders', 'none'],
      '--dataset=image_folder: folders reads classes from data_dir/<split>/<class>/; '
      'none reads unlabelled images anywhere under data_dir/<split>/ (pretraining only: '
      'the linear head and kNN monitor are turned off); auto picks folders when no '
      'image lies directly in a split folder and at least two subfolders hold images.',
      flag_values=flag_values)
  absl_flags.DEFINE_float(
      'eval_timeout_secs', 3600.0,
      '--mode=eval: stop when no new checkpoint appears in --model_dir for this '
      'many seconds; 0 waits with no limit until the last training step is '
      'evaluated.', flag_values=flag_values)
