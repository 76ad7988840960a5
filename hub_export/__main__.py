"""Exports a trained run's encoder as a TF Hub SavedModel.

    python -m hub_export --model_dir=/runs/cifar --export_dir=/exports/cifar_r18
        [--checkpoint=latest|PATH] [--overwrite] [--weight_decay=X]
    python -m hub_export --checkpoint=gs://simclr-checkpoints-tf2/simclrv2/pretrained/r50_1x_sk0/saved_model/ \
        --export_dir=/exports/r50_1x_sk0

A published google-research/simclr tf2 model (object checkpoint or SavedModel) needs
no --model_dir: its architecture is read from the checkpoint.

Reads `model_dir/flags.json` to rebuild the model, restores its weights from the
newest checkpoint in `model_dir` (or `--checkpoint`: a checkpoint prefix such as
model_dir/ckpt-100, or a directory holding checkpoints) and writes the export (see
`tf_simclr.export`). Bad input exits with status 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Optional, Sequence

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog='python -m hub_export',
      description='Export a tf_simclr run as a TF Hub reusable SavedModel.')
  parser.add_argument('--model_dir', default=None,
                      help='The run directory (holds flags.json and ckpt-* files); not '
                      'needed with --checkpoint=<official google-research/simclr model>.')
  parser.add_argument('--export_dir', required=True, help='The SavedModel directory to write.')
  parser.add_argument('--checkpoint', default='latest',
                      help='"latest" (the newest checkpoint in --model_dir), a checkpoint '
                      'prefix such as MODEL_DIR/ckpt-100, or a directory of checkpoints.')
  parser.add_argument('--overwrite', action='store_true',
                      help='Replace an existing --export_dir.')
  parser.add_argument('--weight_decay', type=float, default=None,
                      help='L2 coefficient of the exported regularization losses '
                      '(default: the run\'s --weight_decay; 0 exports none).')
  parser.add_argument('--license', default='Apache-2.0',
                      help='Licence of the weights in the model card (SPDX name); check '
                      'the training data\'s terms.')
  return parser.parse_args(argv)


def _num_classes(checkpoint_path: str) -> Optional[int]:
  """Classes of the supervised head stored in the checkpoint, or None without one.

  Looked up through the checkpoint's object graph: the real training loop stores the
  head's weights under `optimizer/_trainable_variables/N`, not `model/...`.
  """
  from tf_simclr import checkpoints  # pylint: disable=g-import-not-at-top
  shapes = checkpoints.object_variable_shapes(checkpoint_path, ('model', 'supervised_head'))
  kernels = [shape for shape in shapes.values() if len(shape) == 2]
  if kernels:
    return int(kernels[0][-1])
  return None


def export_run(model_dir: Optional[str],
               export_dir: str,
               *,
               checkpoint: str = 'latest',
               overwrite: bool = False,
               weight_decay: Optional[float] = None,
               license_name: str = 'Apache-2.0') -> tuple[str, str]:
  """Rebuilds a run's model, restores a checkpoint and exports it.

  Returns:
    (export_dir, the checkpoint path restored).

  Raises:
    FileNotFoundError / FileExistsError / ValueError: one line naming the flag or
      file and what to do.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  import flags as run_flags  # pylint: disable=g-import-not-at-top
  from tf_simclr import export as export_lib  # pylint: disable=g-import-not-at-top
  from tf_simclr import checkpoints  # pylint: disable=g-import-not-at-top
  from tf_simclr import run_dir  # pylint: disable=g-import-not-at-top
  from tf_simclr.models import build_model  # pylint: disable=g-import-not-at-top

  from tf_simclr import official_import  # pylint: disable=g-import-not-at-top

  source = None
  if checkpoint != 'latest':
    source = official_import.find_source(checkpoint)
  elif model_dir and tf.io.gfile.isdir(model_dir) and tf.train.latest_checkpoint(model_dir):
    source = official_import.find_source(model_dir, '--model_dir')  # An official run's?
  if source is not None:
    return export_official(source, export_dir, overwrite=overwrite, weight_decay=weight_decay,
                           license_name=license_name)
  if not model_dir:
    raise ValueError('--model_dir is required (the training run to export), unless '
                     '--checkpoint is an official google-research/simclr model.')
  if not tf.io.gfile.isdir(model_dir):
    raise FileNotFoundError(f'--model_dir={model_dir} does not exist; pass the directory '
                            'of a training run.')
  config = run_flags.config_from_flags_json(run_dir.flags_json_path(model_dir))
  if tf.io.gfile.exists(export_dir):
    if not overwrite:
      raise FileExistsError(f'--export_dir={export_dir} already exists; pass --overwrite '
                            'to replace it or choose another directory.')
    export_lib.check_replaceable_export(export_dir)  # Before any work: never a run dir.
  checkpoint_path = checkpoints.checkpoint_of_run(model_dir, checkpoint)
  model = build_model(config, _num_classes(checkpoint_path))
  checkpoints.restore_or_explain(tf.train.Checkpoint(model=model), checkpoint_path)
  if weight_decay is None:
    weight_decay = config.optim.weight_decay
  export_lib.export_encoder(model, export_dir, image_size=config.data.image_size,
                            overwrite=overwrite, weight_decay=weight_decay,
                            card_context={'config': config, 'model_dir': model_dir,
                                          'checkpoint': checkpoint_path,
                                          'step': checkpoints.checkpoint_step(checkpoint_path),
                                          'license_name': license_name})
  return export_dir, checkpoint_path


def export_official(source: Any, export_dir: str, *, overwrite: bool = False,
                    weight_decay: Optional[float] = None,
                    license_name: str = 'Apache-2.0') -> tuple[str, str]:
  """Exports a published google-research/simclr model (`official_import.find_source`).

  The architecture comes from the checkpoint; the export takes the images the
  model was trained on (image_size 32 for a CIFAR stem, else 224, recorded only).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  from tf_simclr import export as export_lib  # pylint: disable=g-import-not-at-top
  from tf_simclr import config as config_lib  # pylint: disable=g-import-not-at-top
  from tf_simclr import official_import  # pylint: disable=g-import-not-at-top
  from tf_simclr.models import build_model  # pylint: disable=g-import-not-at-top

  if tf.io.gfile.exists(export_dir) and not overwrite:
    raise FileExistsError(f'--export_dir={export_dir} already exists; pass --overwrite '
                          'to replace it or choose another directory.')
  architecture = official_import.read_architecture(source)
  print(f'--checkpoint={source.path}: official SimCLR tf2 '
        f'{source.kind.replace("_", " ")}: {architecture.describe()}', flush=True)
  image_size = 32 if architecture.cifar_stem else 224
  config = config_lib.replace(
      config_lib.Config(), data={'image_size': image_size},
      train={'lineareval_while_pretraining': architecture.num_classes is not None})
  config = official_import.config_for_architecture(config, architecture,
                                                   source_path=source.path)
  model = build_model(config, architecture.num_classes)
  official_import.load_weights(model, source)
  if weight_decay is None:
    weight_decay = config.optim.weight_decay
  export_lib.export_encoder(model, export_dir, image_size=image_size, overwrite=overwrite,
                            weight_decay=weight_decay,
                            card_context={'config': config, 'checkpoint': source.path,
                                          'step': official_import.checkpoint_step(source),
                                          'license_name': license_name})
  return export_dir, source.path


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = _parse_args(argv)
  from tf_simclr import cuda_quiet  # pylint: disable=g-import-not-at-top
  cuda_quiet.initialize_devices()  # Without TF's cuInit error line on a CPU machine.
  try:
    export_dir, checkpoint_path = export_run(
        args.model_dir, args.export_dir, checkpoint=args.checkpoint,
        overwrite=args.overwrite, weight_decay=args.weight_decay, license_name=args.license)
  except (FileNotFoundError, FileExistsError, ValueError) as error:
    message = ' '.join(str(error).split())
    print(f'error: {message}', file=sys.stderr)
    return 2
  print(f'Exported {checkpoint_path} to {export_dir}', flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
