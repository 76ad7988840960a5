"""run.py and hub_export with every path (data, model_dir, exports) on TF's in-process
ram:// file system.

    python tests/remote_storage_check.py IMAGE_FOLDER WORK_DIR

ram:// lives inside one process and behaves like gs:// for tf.io.gfile, so this
script runs `run.py`'s `main` several times in one process (absl flags re-parsed each
time) and prints one JSON line of what it saw (tests/test_remote_storage.py checks
it). WORK_DIR becomes the working directory: nothing may appear in it (a path
handled with `os`/`open` instead of tf.io.gfile would create `./ram:/...` there).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pathlib
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import tf_simclr  # noqa: E402,F401  First: the oneDNN kernels, as in run.py.
from absl import flags as absl_flags  # noqa: E402

import run  # noqa: E402

MODEL_DIR = 'ram://bucket/runs/r18'
DATA_DIR = 'ram://bucket/data'  # IMAGE_FOLDER, copied: the images are read from ram:// too.


def _run_main(*extra: str) -> dict:
  """run.main with the tiny run's flags; {'code', 'stdout', 'stderr'}."""
  argv = ['run.py', '--dataset=image_folder', f'--data_dir={DATA_DIR}',
          '--train_split=train', '--eval_split=test', '--image_size=16',
          '--resnet_depth=18', '--proj_out_dim=16', '--train_batch_size=8',
          '--eval_batch_size=8', '--checkpoint_steps=1', '--keep_checkpoint_max=2',
          '--warmup_epochs=0', '--use_blur=False', '--seed=7',
          '--mode=train_then_eval', '--export_hub_module=checkpoint',
          f'--model_dir={MODEL_DIR}', *extra]
  absl_flags.FLAGS.unparse_flags()
  absl_flags.FLAGS(argv)
  stdout, stderr = io.StringIO(), io.StringIO()
  code = 0
  with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
    try:
      run.main(['run.py'])
    except SystemExit as exit_:
      code = exit_.code
  return {'code': code, 'stdout': stdout.getvalue(), 'stderr': stderr.getvalue()}


def _listing(root: str) -> list[str]:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return sorted(os.path.join(directory, name)[len(root):].lstrip('/')
                for directory, _, files in tf.io.gfile.walk(root) for name in files)


def main() -> None:
  os.chdir(sys.argv[2])
  report: dict = {}
  try:
    _check(report)
  finally:
    print('REPORT ' + json.dumps(report), flush=True)


def _check(report: dict) -> None:
  """Fills `report` step by step (what was reached stays in it on an error)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  from tf_simclr import export as export_lib  # pylint: disable=g-import-not-at-top
  from hub_export import __main__ as hub_export_main  # pylint: disable=g-import-not-at-top

  for folder, _, files in tf.io.gfile.walk(sys.argv[1]):
    target = DATA_DIR + folder[len(sys.argv[1]):]
    tf.io.gfile.makedirs(target)
    for name in files:
      tf.io.gfile.copy(os.path.join(folder, name), f'{target}/{name}')
  report['first'] = _run_main('--train_steps=2')
  report['after_first'] = _listing(MODEL_DIR)
  # The same command with more steps resumes (the bug: it started again at step 0).
  report['second'] = _run_main('--train_steps=3')
  report['after_second'] = _listing(MODEL_DIR)
  with tf.io.gfile.GFile(MODEL_DIR + '/result.json') as result_file:
    report['result'] = json.load(result_file)
  with tf.io.gfile.GFile(MODEL_DIR + '/flags.json') as flags_file:
    report['flags_train_steps'] = json.load(flags_file)['train_steps']

  # hub_export of the run (supervised head, checkpoint of the real loop), ram -> ram.
  export_dir = 'ram://bucket/exports/r18'
  report['export_code'] = hub_export_main.main([f'--model_dir={MODEL_DIR}',
                                                f'--export_dir={export_dir}'])
  images = np.random.default_rng(0).uniform(0, 1, (2, 16, 16, 3)).astype(np.float32)
  exported_module = tf.saved_model.load(export_dir)
  training_module = tf.saved_model.load(MODEL_DIR + '/saved_model/3')
  exported = exported_module.serve(images)
  during_training = training_module.serve(images)
  report['export_keys'] = sorted(exported)
  report['export_max_difference'] = max(
      float(np.max(np.abs(exported[key].numpy() - during_training[key].numpy())))
      for key in exported)
  report['logits_shape'] = list(exported['logits_sup'].shape)
  # --overwrite on the model_dir or its parent: refused, nothing deleted.
  before = _listing('ram://bucket')
  report['overwrite_codes'] = [
      hub_export_main.main([f'--model_dir={MODEL_DIR}', f'--export_dir={target}',
                            '--overwrite'])
      for target in (MODEL_DIR, 'ram://bucket/runs')]
  report['overwrite_kept_everything'] = _listing('ram://bucket') == before
  report['overwrite_export_code'] = hub_export_main.main(
      [f'--model_dir={MODEL_DIR}', f'--export_dir={export_dir}', '--overwrite'])
  report['is_export'] = export_lib.is_saved_model_export(export_dir)
  report['local_files'] = sorted(os.listdir('.'))


if __name__ == '__main__':
  main()
