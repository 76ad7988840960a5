"""Importing tf_simclr before TensorFlow turns on the oneDNN CPU kernels (docs/speed.md)."""

import os
import pathlib
import subprocess
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
PROBE = ('from tensorflow.python.util import _pywrap_util_port as port; '
         'print("onednn", port.IsMklEnabled())')


def _onednn_enabled(imports: str, **env_overrides: str) -> bool:
  """Whether TensorFlow runs its oneDNN kernels after `imports` in a fresh process."""
  env = {key: value for key, value in os.environ.items() if key != 'TF_ENABLE_ONEDNN_OPTS'}
  env.update(env_overrides, TF_CPP_MIN_LOG_LEVEL='3')
  result = subprocess.run([sys.executable, '-c', f'{imports}; {PROBE}'], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=300, check=True)
  return result.stdout.strip().splitlines()[-1] == 'onednn True'


@pytest.mark.parametrize('imports', [
    'import tf_simclr, tensorflow',
    'import run',  # The entry point imports flags (and TensorFlow) after tf_simclr.
    'import bench.train_step',
])
def test_entry_points_turn_on_onednn(imports: str) -> None:
  assert _onednn_enabled(imports)


@pytest.mark.slow
def test_user_setting_wins() -> None:
  assert not _onednn_enabled('import tf_simclr, tensorflow', TF_ENABLE_ONEDNN_OPTS='0')
