"""Multi-replica training equals single-device training on the same global batch.

Each run is a subprocess (tests/distributed_train_script.py): logical CPU devices and
MultiWorkerMirroredStrategy must be set up before any TF op. A tiny ResNet-18 with
global BN and LARS trains 3 steps on fixed pre-augmented batches; the final
checkpoints' variables (weights, BN statistics, optimizer slots) must agree within
float32 tolerance. Runs that are compared start together. Default suite: 1 vs 2
replicas; slow: 4 replicas and 2 local workers (MultiWorkerMirroredStrategy).
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = str(REPO_ROOT / 'tests' / 'distributed_train_script.py')
TIMEOUT_SECS = 600
# float32 sums in another order over 3 LARS steps.
RTOL, ATOL = 2e-4, 2e-5


def _free_ports(count: int) -> list[int]:
  sockets = [socket.socket() for _ in range(count)]
  try:
    for sock in sockets:
      sock.bind(('127.0.0.1', 0))
    return [sock.getsockname()[1] for sock in sockets]
  finally:
    for sock in sockets:
      sock.close()


def _start(args: list[str], env_updates: dict[str, str], log_path: pathlib.Path):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', **env_updates)
  env.pop('TF_CONFIG', None) if 'TF_CONFIG' not in env_updates else None
  log = open(log_path, 'w')
  return subprocess.Popen([sys.executable, SCRIPT, *args], cwd=REPO_ROOT, env=env,
                          stdout=log, stderr=subprocess.STDOUT), log


def _run_all(jobs: dict[str, tuple[list[str], dict[str, str]]], out_dir: pathlib.Path
             ) -> None:
  """Starts all jobs at once, waits (bounded), kills leftovers, fails with the log tail."""
  processes = {}
  try:
    for name, (args, env) in jobs.items():
      processes[name] = _start(args, env, out_dir / f'{name}.log')
    for name, (process, _) in processes.items():
      try:
        code = process.wait(timeout=TIMEOUT_SECS)
      except subprocess.TimeoutExpired:
        code = 'timeout'
      if code != 0:
        tail = (out_dir / f'{name}.log').read_text()[-3000:]
        pytest.fail(f'{name} exited with {code}:\n{tail}')
  finally:
    for process, log in processes.values():
      if process.poll() is None:
        process.kill()
        process.wait()
      log.close()


def _mwms_jobs(out_dir: pathlib.Path) -> dict[str, tuple[list[str], dict[str, str]]]:
  ports = _free_ports(2)
  cluster = {'worker': [f'127.0.0.1:{port}' for port in ports]}
  return {f'worker{index}': (['worker', str(out_dir)], {
      'TF_CONFIG': json.dumps({'cluster': cluster, 'task': {'type': 'worker', 'index': index}})
  }) for index in range(2)}


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
  _run_all(_mwms_jobs(tmp_path), tmp_path)
  _assert_same(single_run, np.load(tmp_path / 'weights_mwms.npz'), '2 workers')
  # Only the chief writes to model_dir; the other worker's checkpoints went to a
  # temporary directory.
  assert (tmp_path / 'run_mwms' / 'ckpt-3.index').exists()


@pytest.mark.slow
def test_four_replicas_equal_single_device(single_run, tmp_path):
  _run_all({'mirrored4': (['mirrored', str(tmp_path), '4'], {})}, tmp_path)
  _assert_same(single_run, np.load(tmp_path / 'weights_R4.npz'), '4 replicas')
