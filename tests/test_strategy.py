"""Tests of tf_simclr/strategy.py, each strategy built in a fresh subprocess.

Logical CPU devices and multi-worker collectives must be configured before any TF op,
so the strategies are created by tests/strategy_worker.py in child processes.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest

from tf_simclr import strategy as strategy_lib

WORKER_SCRIPT = pathlib.Path(__file__).resolve().parent / 'strategy_worker.py'
TIMEOUT_S = 240


def _env(tf_config=None) -> dict:
  env = {key: value for key, value in os.environ.items() if key != 'TF_CONFIG'}
  env['TF_CPP_MIN_LOG_LEVEL'] = '2'
  env['CUDA_VISIBLE_DEVICES'] = ''  # The CPU paths are under test.
  if tf_config is not None:
    env['TF_CONFIG'] = json.dumps(tf_config)
  return env


def _run_worker(scenario: str) -> dict:
  result = subprocess.run([sys.executable, str(WORKER_SCRIPT), scenario], env=_env(),
                          capture_output=True, text=True, timeout=TIMEOUT_S)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def _assert_one_line(message: str, *fragments: str) -> None:
  assert '\n' not in message, message
  for fragment in fragments:
    assert fragment in message, message


def test_count_cluster_workers():
  assert strategy_lib.count_cluster_workers('') == 0
  assert strategy_lib.count_cluster_workers('{}') == 0
  two_workers = {'cluster': {'worker': ['a:1', 'b:2']}, 'task': {'type': 'worker', 'index': 1}}
  assert strategy_lib.count_cluster_workers(json.dumps(two_workers)) == 2
  with_chief = {'cluster': {'chief': ['c:0'], 'worker': ['a:1'], 'ps': ['p:3']}}
  assert strategy_lib.count_cluster_workers(json.dumps(with_chief)) == 2


@pytest.mark.parametrize('tf_config', ['{"cluster": ', '[1, 2]', '{"cluster": 3}'])
def test_bad_tf_config_is_one_line(tf_config):
  with pytest.raises(ValueError) as error:
    strategy_lib.count_cluster_workers(tf_config)
  _assert_one_line(str(error.value), 'TF_CONFIG')


def test_num_cpu_devices_gives_mirrored_replicas():
  result = _run_worker('cpu4')
  assert result['class'] == 'MirroredStrategy'
  assert result['num_replicas'] == 4 and result['again_num_replicas'] == 4
  assert len(set(result['devices'])) == 4
  assert all('CPU' in device for device in result['devices'])
  # An all-reduce over the replicas: sum of (replica id + 1) = 1 + 2 + 3 + 4.
  assert result['replica_sum'] == 10.0
  assert (result['num_workers'], result['is_chief'], result['save_dir']) == (
      1, True, '/tmp/model_dir')
  _assert_one_line(result['resplit_error'], '--num_cpu_devices=2', 'before any other')


def test_default_is_one_cpu_replica_and_errors_are_clear():
  result = _run_worker('default')
  assert (result['class'], result['num_replicas'], result['replica_sum']) == (
      'OneDeviceStrategy', 1, 1.0)
  assert result['devices'][0].endswith('CPU:0')
  _assert_one_line(result['tpu_error'], '--use_tpu', 'drop --use_tpu')
  _assert_one_line(result['named_tpu_error'], '--tpu_name=no-such-tpu.invalid')
  _assert_one_line(result['late_split_error'], '--num_cpu_devices=2', 'before any other')
  _assert_one_line(result['late_worker_error'], 'TF_CONFIG names 2 workers',
                   'before any other')


def _free_port() -> int:
  with socket.socket() as sock:
    sock.bind(('127.0.0.1', 0))
    return sock.getsockname()[1]


@pytest.mark.slow
def test_two_local_workers_all_reduce():
  """2 processes with TF_CONFIG on 127.0.0.1: 20-40 s on 2 shared cores."""
  addresses = [f'127.0.0.1:{_free_port()}' for _ in range(2)]
  processes = []
  try:
    for index in range(2):
      tf_config = {'cluster': {'worker': addresses}, 'task': {'type': 'worker', 'index': index}}
      processes.append(subprocess.Popen(
          [sys.executable, str(WORKER_SCRIPT), 'worker'], env=_env(tf_config),
          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for process in processes:
      stdout, stderr = process.communicate(timeout=TIMEOUT_S)
      assert process.returncode == 0, stderr[-3000:]
      results.append(json.loads(stdout.strip().splitlines()[-1]))
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
        process.wait()
  for index, result in enumerate(results):
    assert result['class'] in ('MultiWorkerMirroredStrategy', 'CollectiveAllReduceStrategy')
    assert result['num_replicas'] == 2 and result['num_workers'] == 2
    assert f'task:{index}' in result['devices'][0]
    # The all-reduce crosses the processes: (0 + 1) + (1 + 1).
    assert result['replica_sum'] == 3.0
  assert [result['is_chief'] for result in results] == [True, False]
  assert results[0]['save_dir'] == '/tmp/model_dir'
  assert results[1]['save_dir'] != '/tmp/model_dir' and 'worker_1' in results[1]['save_dir']
