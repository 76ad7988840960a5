"""Equivalence tests against google-research/simclr tf2 (../shared/official-simclr-tf2).

Each module runs the official code once, in a subprocess (module-scoped fixture), and
compares our functions with its outputs in-process. Skipped when the official code is
absent.
"""

import pathlib

import numpy as np
import pytest

from tests.official.official_runner import OFFICIAL_DIR, run_official

HERE = pathlib.Path(__file__).resolve().parent


def official_outputs(tmp_path_factory: pytest.TempPathFactory, script: str,
                     *args: str) -> dict[str, np.ndarray]:
  """Runs tests/official/`script` on the official code; returns its .npz as a dict."""
  if not (OFFICIAL_DIR / 'data_util.py').is_file():
    pytest.skip(f'official google-research/simclr tf2 code not found at {OFFICIAL_DIR}')
  out_path = tmp_path_factory.mktemp('official') / 'outputs.npz'
  run_official(HERE / script, out_path, *args)
  with np.load(out_path) as data:
    return {key: data[key] for key in data.files}
