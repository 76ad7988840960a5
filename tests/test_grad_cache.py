"""--micro_batch_size (gradient caching) gives the gradients of a run with more replicas.

With micro-batches of m examples, BN normalises each micro-batch alone, so the
reference is the plain step on b / m times more replicas with --global_bn=false: one
step's replica-summed gradients (NT-Xent over all negatives, supervised head, weight
decay) must agree to 1e-5 of each variable's largest gradient, the step's metrics
likewise, and the BN moving statistics must equal the replica mean of the reference's
per-replica copies. Each side runs in a subprocess (tests/grad_cache_check.py: logical
CPU devices must exist before any TF op; runs with different replica counts cannot
share a process, their collectives' group keys clash). ResNet-18, 16 px, global batch 8.
"""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from tf_simclr import config as config_lib
from tf_simclr import grad_cache
from tests import train_fixtures

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = str(REPO_ROOT / 'tests' / 'grad_cache_check.py')
RELATIVE_TOLERANCE = 1e-5
TIMEOUT_SECS = 900


def _run_in_parallel(out_dir: pathlib.Path, train_mode: str, groups: list[str]) -> None:
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  processes = []
  for index, runs in enumerate(groups):
    log = open(out_dir / f'group{index}.log', 'w')
    processes.append((subprocess.Popen([sys.executable, SCRIPT, str(out_dir), train_mode, runs],
                                       cwd=REPO_ROOT, env=env, stdout=log,
                                       stderr=subprocess.STDOUT), log, index))
  try:
    for process, log, index in processes:
      try:
        code = process.wait(timeout=TIMEOUT_SECS)
      except subprocess.TimeoutExpired:
        code = 'timeout'
      log.close()
      if code != 0:
        pytest.fail(f'{groups[index]} exited with {code}:\n'
                    f'{(out_dir / f"group{index}.log").read_text()[-3000:]}')
  finally:
    for process, log, _ in processes:
      if process.poll() is None:
        process.kill()
        process.wait()
      log.close()


def _assert_same(reference: dict, cached: dict, label: str) -> None:
  assert set(reference.files) == set(cached.files), label
  gradients = [name for name in reference.files if name.startswith('grad_')]
  statistics = [name for name in reference.files if name.startswith('stat_')]
  assert len(gradients) > 50 and len(statistics) > 30, label  # ResNet-18 + heads.
  for name in gradients + statistics:
    scale = max(1.0, float(np.max(np.abs(reference[name]))))
    error = float(np.max(np.abs(reference[name] - cached[name])))
    assert error <= RELATIVE_TOLERANCE * scale, (label, name, error, scale)
  np.testing.assert_allclose(cached['metrics'], reference['metrics'], rtol=1e-5, atol=1e-6,
                             err_msg=label)


def _check(tmp_path: pathlib.Path, train_mode: str, groups: list[str],
           reference: str, cached_runs: list[str]) -> None:
  _run_in_parallel(tmp_path, train_mode, groups)
  expected = np.load(tmp_path / f'{reference}.npz')
  assert float(np.max(np.abs(expected['grad_0']))) > 0  # Something to compare.
  for run in cached_runs:
    _assert_same(expected, np.load(tmp_path / f'{run}.npz'), f'{run} vs {reference}')


def test_pretrain_gradients_equal_more_replicas_without_global_bn(tmp_path):
  """1 replica x 4 micro-batches vs the plain step on 4 replicas; about 25 s idle."""
  _check(tmp_path, 'pretrain', ['4x0,1x2'], '4x0', ['1x2'])


@pytest.mark.slow
def test_pretrain_gradients_with_negatives_gathered_across_replicas(tmp_path):
  """2 replicas x 2 micro-batches (NT-Xent negatives all-gathered across replicas) vs
  the plain step on 4 replicas (separate processes); about 30 s idle."""
  _check(tmp_path, 'pretrain', ['4x0', '2x2'], '4x0', ['2x2'])


@pytest.mark.slow
def test_finetune_gradients_equal_more_replicas_without_global_bn(tmp_path):
  """Supervised loss only (no pass 1); about 30 s idle."""
  _check(tmp_path, 'finetune', ['4x0,1x2'], '4x0', ['1x2'])


def test_micro_batches_keep_examples_and_views_together():
  """Micro-batch k holds examples k*m..k*m+m-1 of view 1 then view 2; projections go
  back to the batch's row order."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  batch, micro = 6, 2
  rows = np.arange(2 * batch, dtype=np.float32)  # View 1 rows 0..5, view 2 rows 6..11.
  images = tf.constant(np.broadcast_to(rows[:, None, None, None], (2 * batch, 1, 1, 1)))
  labels = tf.constant(np.arange(batch, dtype=np.float32)[:, None])
  parts = [grad_cache.micro_batch(images, labels, tf.constant(k), micro, 2) for k in range(3)]
  np.testing.assert_array_equal([part[0].numpy()[:, 0, 0, 0] for part in parts],
                                [[0, 1, 6, 7], [2, 3, 8, 9], [4, 5, 10, 11]])
  np.testing.assert_array_equal([part[1].numpy()[:, 0] for part in parts],
                                [[0, 1], [2, 3], [4, 5]])
  one_view = grad_cache.micro_batch(images[:batch], labels, tf.constant(2), micro, 1)
  np.testing.assert_array_equal(one_view[0].numpy()[:, 0, 0, 0], [4, 5])
  projections = tf.stack([tf.reshape(part[0], [2 * micro, 1]) for part in parts])
  merged = grad_cache.merge_micro_projections(projections, 2)
  np.testing.assert_array_equal(merged.numpy()[:, 0], rows)


def test_describe_names_the_split():
  config = config_lib.replace(train_fixtures.tiny_config('/tmp/x', train_batch_size=4096,
                                                         micro_batch_size=64),
                              train={'train_mode': 'pretrain'})
  assert grad_cache.describe(config, 2) == (
      "gradient caching (--micro_batch_size=64): each replica's 2048 examples in 32 "
      'micro-batches of 64 (128 images); exact NT-Xent over the whole batch, batch norm '
      'statistics per micro-batch.')


def test_micro_batch_size_must_divide_the_replica_batch():
  config = config_lib.Config(train=config_lib.TrainConfig(
      train_batch_size=96, eval_batch_size=96, micro_batch_size=64, model_dir='/tmp/x',
      train_steps=1))
  with pytest.raises(ValueError, match='--micro_batch_size=64 must divide'):
    config_lib.validate(config, 1)
  config_lib.validate(config_lib.replace(config, train={'micro_batch_size': 48}), 1)
  with pytest.raises(ValueError, match='--micro_batch_size=48 must divide the per-replica'):
    config_lib.validate(config_lib.replace(config, train={'micro_batch_size': 48}), 3)
  with pytest.raises(ValueError, match='--micro_batch_size applies to'):
    config_lib.validate(config_lib.replace(config, train={'micro_batch_size': 32,
                                                          'train_mode': 'distill'}), 1)
  assert grad_cache.uses_grad_cache(config_lib.replace(config, train={'micro_batch_size': 32}), 1)
  assert not grad_cache.uses_grad_cache(config_lib.replace(config, train={'micro_batch_size': 96}), 1)
  assert not grad_cache.uses_grad_cache(config_lib.replace(config, train={'micro_batch_size': 0}), 1)
