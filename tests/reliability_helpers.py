"""Helpers of tests/test_reliability.py: tiny image folders, run.py commands, kills.

Also a subprocess entry point (`python tests/reliability_helpers.py save_loop DIR`)
that writes checkpoints and result.json files in a loop until it is killed, so the
test can SIGKILL it in the middle of a write.
"""

from __future__ import annotations

import glob
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def write_image_folder(root: pathlib.Path, *, per_class: int = 16, size: int = 20,
                       classes: Sequence[str] = ('a', 'b'), mode: str = 'RGB',
                       splits: Sequence[str] = ('train', 'test'), seed: int = 0) -> pathlib.Path:
  """ROOT/<split>/<class>/<i>.png of random pixels; mode 'RGB', 'L' (gray) or 'RGBA'."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  channels = {'RGB': 3, 'L': 1, 'RGBA': 4}[mode]
  rng = np.random.default_rng(seed)
  for split in splits:
    for class_name in classes:
      folder = root / split / class_name
      folder.mkdir(parents=True, exist_ok=True)
      for index in range(per_class):
        pixels = rng.integers(0, 256, (size, size, channels), dtype=np.uint8)
        (folder / f'{index}.png').write_bytes(tf.io.encode_png(pixels).numpy())
  return root


# Enough steps that the kill-and-resume tests' kills land before the run ends (with
# 6, the oneDNN kernels finished a run between two kill points).
TRAIN_STEPS = 10


def run_command(model_dir: pathlib.Path, data_dir: pathlib.Path, *extra: str) -> list[str]:
  """A tiny deterministic pretraining run: ResNet-18, 16 px, batch 8, TRAIN_STEPS steps."""
  return [sys.executable, str(REPO_ROOT / 'run.py'), '--dataset=image_folder',
          f'--data_dir={data_dir}', '--train_split=train', '--eval_split=test',
          '--image_size=16', '--resnet_depth=18', '--proj_out_dim=16',
          '--train_batch_size=8', '--eval_batch_size=8', f'--train_steps={TRAIN_STEPS}',
          '--checkpoint_steps=1', '--keep_checkpoint_max=2', '--warmup_epochs=0',
          '--learning_rate=0.5', '--use_blur=False', '--seed=7', '--deterministic',
          '--export_hub_module=never', f'--model_dir={model_dir}', *extra]


def environment() -> dict[str, str]:
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONUNBUFFERED='1')
  env.pop('TF_CONFIG', None)
  return env


def start(command: Sequence[str], log_path: pathlib.Path) -> subprocess.Popen:
  log = open(log_path, 'a')
  return subprocess.Popen(list(command), cwd=REPO_ROOT, env=environment(), stdout=log,
                          stderr=subprocess.STDOUT)


def wait_for(process: subprocess.Popen, condition: Callable[[], bool], timeout: float,
             poll_secs: float = 0.002) -> bool:
  """Polls `condition` until it holds (True) or the process ends / time runs out."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline and process.poll() is None:
    if condition():
      return True
    time.sleep(poll_secs)
  return False


def kill(process: subprocess.Popen) -> None:
  if process.poll() is None:
    process.kill()
  process.wait()


def saved_steps(model_dir: pathlib.Path) -> list[int]:
  return sorted(int(path.split('ckpt-')[-1][:-len('.index')])
                for path in glob.glob(str(model_dir / 'ckpt-*.index')))


def save_in_progress(model_dir: pathlib.Path) -> bool:
  """A checkpoint save is under way: TF's `ckpt-N_temp/` folder exists."""
  return bool(glob.glob(str(model_dir / 'ckpt-*_temp*')))


def checkpoint_tensors(prefix: str) -> dict[str, np.ndarray]:
  """Model, optimizer and step tensors of a checkpoint (input state and counters aside)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  reader = tf.train.load_checkpoint(prefix)
  return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()
          if key.startswith(('model/', 'optimizer/', 'global_step'))}


def train_crash_and_resume(config: Any, directory: pathlib.Path
                           ) -> tuple[dict[str, Any], dict[str, np.ndarray], pathlib.Path]:
  """In-process crash and resume: trains `config` (4 steps, a checkpoint at each, one
  step per loop) in DIRECTORY/reference; then, as after a crash after step 2 (ckpt-3
  and ckpt-4 lost), the same call in DIRECTORY/resumed. Asserts that every tensor of
  the two final checkpoints is the same, bit for bit: the input position is restored,
  not reset (the next batches differ from the first ones).

  Returns:
    (the reference run's result, its ckpt-4 tensors, the resumed run's model_dir).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tf_simclr import config as config_lib  # pylint: disable=g-import-not-at-top
  from tf_simclr import train as train_lib  # pylint: disable=g-import-not-at-top
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  reference_dir, resumed_dir = directory / 'reference', directory / 'resumed'
  config = config_lib.replace(config, train={
      'model_dir': str(reference_dir), 'train_steps': 4, 'checkpoint_steps': 1,
      'steps_per_loop': 1})
  result = train_lib.train(config, strategy, verbose=False)
  resumed_dir.mkdir()
  for path in glob.glob(str(reference_dir / 'ckpt-[12].*')):
    shutil.copy(path, resumed_dir)
  tf.compat.v1.train.update_checkpoint_state(str(resumed_dir), str(resumed_dir / 'ckpt-2'))
  train_lib.train(config_lib.replace(config, train={'model_dir': str(resumed_dir)}),
                  strategy, verbose=False)
  expected = checkpoint_tensors(str(reference_dir / 'ckpt-4'))
  actual = checkpoint_tensors(str(resumed_dir / 'ckpt-4'))
  assert expected.keys() == actual.keys() and len(expected) > 100
  different = [key for key in expected if not np.array_equal(expected[key], actual[key])]
  assert not different, f'{len(different)} tensors differ, e.g. {different[:3]}'
  return result, expected, resumed_dir


def _save_loop(directory: str) -> None:
  """Writes ckpt-N (a 32 MB variable filled with N) and result.json {'step': N} forever."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, str(REPO_ROOT))
  from tf_simclr import run_dir  # pylint: disable=g-import-not-at-top
  variable = tf.Variable(tf.zeros([8 * 1024 * 1024]))
  step = tf.Variable(0, dtype=tf.int64)
  checkpoint = tf.train.Checkpoint(weights=variable, global_step=step)
  manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=2)
  padding = 'x' * 4_000_000
  for number in range(1, 1_000_000):
    variable.assign(tf.fill([8 * 1024 * 1024], float(number)))
    step.assign(number)
    manager.save(checkpoint_number=number)
    run_dir.write_json_atomic(os.path.join(directory, 'result.json'),
                              {'step': number, 'padding': padding})
    print(number, flush=True)


if __name__ == '__main__':
  if sys.argv[1] == 'save_loop':
    _save_loop(sys.argv[2])
  else:
    raise SystemExit(f'unknown command {sys.argv[1]}')
