"""Multi-replica training equals single-device training on the same global batch.

Each run is a subprocess (tests/distributed_train_script.py): logical CPU devices and
MultiWorkerMirroredStrategy must be set up before any TF op. A tiny ResNet-18 with
global BN and LARS trains 3 steps on fixed pre-augmented batches; the final
checkpoints' variables (weights, BN statistics, optimizer slots) must agree within
float32 tolerance. Runs that are compared start together. Default suite: 1 vs 2
replicas; slow: 4 replicas and 2 local workers (MultiWorkerMirroredStrategy).
"""

import pathlib

import numpy as np
import pytest

from tests import train_fixtures

SCRIPT = str(pathlib.Path(__file__).resolve().parent / 'distributed_train_script.py')
TIMEOUT_SECS = 600
# float32 sums in another order over 3 LARS steps.
RTOL, ATOL = 2e-4, 2e-5


def _run_all(jobs: train_fixtures.Jobs, out_dir: pathlib.Path) -> None:
  train_fixtures.run_together(SCRIPT, jobs, out_dir, TIMEOUT_SECS)


def _assert_same(reference: dict, other: dict, label: str) -> None:
  assert set(reference.files) == set(other.files), label
  assert len(reference.files) > 100  # model weights, BN statistics, LARS momenta
  for key in reference.files:
    np.testing.assert_allclose(other[key], reference[key], rtol=RTOL, atol=ATOL,
                               err_msg=f'{label}: {key}')


@pytest.fixture(scope='module')
def single_run(tmp_path_factory):
  out_dir = tmp_path_factory.mktemp('single')
  _run_all({'single': (['mirrored', str(out_dir), '1'], {})}, out_dir)
  return np.load(out_dir / 'weights_R1.npz')


def test_two_replicas_equal_single_device(tmp_path_factory):
  # Default suite: the two runs start together (about 2 min of CPU on 2 cores).
  out_dir = tmp_path_factory.mktemp('two_replicas')
  _run_all({'single': (['mirrored', str(out_dir), '1'], {}),
            'mirrored2': (['mirrored', str(out_dir), '2'], {})}, out_dir)
  _assert_same(np.load(out_dir / 'weights_R1.npz'), np.load(out_dir / 'weights_R2.npz'),
               '2 replicas')


@pytest.mark.slow
def test_two_local_workers_equal_single_process(single_run, tmp_path):
  _run_all(train_fixtures.worker_jobs(['worker', str(tmp_path)]), tmp_path)
  _assert_same(single_run, np.load(tmp_path / 'weights_mwms.npz'), '2 workers')
  # Only the chief writes to model_dir; the other worker's checkpoints went to a
  # temporary directory.
  assert (tmp_path / 'run_mwms' / 'ckpt-3.index').exists()


@pytest.mark.slow
def test_four_replicas_equal_single_device(single_run, tmp_path):
  _run_all({'mirrored4': (['mirrored', str(tmp_path), '4'], {})}, tmp_path)
  _assert_same(single_run, np.load(tmp_path / 'weights_R4.npz'), '4 replicas')
