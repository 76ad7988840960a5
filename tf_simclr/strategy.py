"""Choice of the tf.distribute strategy: TPU, multi-worker, multi-GPU or CPU.

`create_strategy` must run before any other TensorFlow op of the program: splitting
the CPU into logical devices and configuring multi-worker collectives are only
possible before the TF runtime initialises. Call it first thing in `main`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Optional

from absl import logging
import tensorflow as tf

from tf_simclr.config import InfraConfig


def count_cluster_workers(tf_config: Optional[str] = None) -> int:
  """Number of training tasks (chief + worker) in a TF_CONFIG JSON string.

  Args:
    tf_config: the TF_CONFIG text; None reads the environment variable.

  Returns:
    0 when TF_CONFIG is unset or empty, else the number of chief and worker tasks.

  Raises:
    ValueError: one line when TF_CONFIG is not a JSON object.
  """
  if tf_config is None:
    tf_config = os.environ.get('TF_CONFIG', '')
  if not tf_config.strip():
    return 0
  try:
    parsed = json.loads(tf_config)
  except json.JSONDecodeError as error:
    raise ValueError(f'TF_CONFIG is not valid JSON ({error}); fix or unset it.') from None
  if not isinstance(parsed, dict) or not isinstance(parsed.get('cluster', {}), dict):
    raise ValueError('TF_CONFIG must be a JSON object with a "cluster" object; fix or unset it.')
  cluster = parsed.get('cluster', {})
  return len(cluster.get('chief', [])) + len(cluster.get('worker', []))


def _create_tpu_strategy(infra_config: InfraConfig) -> tf.distribute.Strategy:
  """TPUStrategy on the TPU named by --tpu_name, else --master."""
  tpu = infra_config.tpu_name or infra_config.master
  try:
    if infra_config.tpu_name:
      resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
          tpu=infra_config.tpu_name, zone=infra_config.tpu_zone,
          project=infra_config.gcp_project)
    else:
      resolver = tf.distribute.cluster_resolver.TPUClusterResolver(infra_config.master)
    tf.config.experimental_connect_to_cluster(resolver)
    topology = tf.tpu.experimental.initialize_tpu_system(resolver)
  except (ValueError, RuntimeError, OSError, tf.errors.OpError) as error:
    reason = ' '.join(str(error).split()).rstrip('.') or type(error).__name__
    raise ValueError(
        f'--use_tpu: cannot reach a TPU (--tpu_name={tpu}): {reason}; set --tpu_name '
        '(or --master) to a reachable Cloud TPU, or drop --use_tpu to run on CPU/GPU.'
    ) from None
  logging.info('TPU topology: %d tasks, %d TPUs per task', topology.num_tasks,
               topology.num_tpus_per_task)
  return tf.distribute.TPUStrategy(resolver)


def _split_cpu(num_cpu_devices: int) -> list[str]:
  """Splits the first CPU into `num_cpu_devices` logical devices; returns their names."""
  cpu = tf.config.list_physical_devices('CPU')[0]
  current = tf.config.get_logical_device_configuration(cpu)
  if current is None or len(current) != num_cpu_devices:
    try:
      tf.config.set_logical_device_configuration(
          cpu, [tf.config.LogicalDeviceConfiguration()] * num_cpu_devices)
    except RuntimeError:
      raise ValueError(
          f'--num_cpu_devices={num_cpu_devices}: TensorFlow already ran an op in this '
          'process, so the CPU can no longer be split; call create_strategy before any '
          'other TensorFlow op.') from None
  return [device.name for device in tf.config.list_logical_devices('CPU')]


def communication_options(infra_config: InfraConfig
                          ) -> tf.distribute.experimental.CommunicationOptions:
  """Collective options of multi-worker runs: `--collective_timeout_secs` (0: none).

  With a timeout, a collective that a dead or hung worker never joins fails with
  DeadlineExceededError on the others instead of blocking them forever.
  """
  timeout = infra_config.collective_timeout_secs
  return tf.distribute.experimental.CommunicationOptions(
      timeout_seconds=timeout if timeout > 0 else None)


def create_strategy(infra_config: InfraConfig) -> tf.distribute.Strategy:
  """Creates the distribution strategy for this machine and configuration.

  In order of precedence:
  - `use_tpu`: TPUStrategy (TPUClusterResolver on `tpu_name`, else `master`).
  - TF_CONFIG naming several chief/worker tasks: MultiWorkerMirroredStrategy (one
    replica per local GPU, or one CPU replica per worker).
  - `num_cpu_devices > 1`: the CPU is split into that many logical devices and a
    MirroredStrategy runs one replica on each.
  - more than one GPU: MirroredStrategy over all local GPUs.
  - otherwise OneDeviceStrategy on the single GPU, or on the CPU.

  It must be called before any other TensorFlow op in the process.

  Args:
    infra_config: where to run.

  Returns:
    The strategy; its `num_replicas_in_sync` is the replica count.

  Raises:
    ValueError: one line naming the flag or TF_CONFIG, e.g. no TPU reachable, or
      the CPU cannot be split because TF already ran an op.
  """
  num_cpu_devices = infra_config.num_cpu_devices
  if infra_config.use_tpu:
    if num_cpu_devices > 1:
      raise ValueError('--num_cpu_devices cannot be combined with --use_tpu.')
    strategy = _create_tpu_strategy(infra_config)
    description = 'TPUStrategy'
  elif count_cluster_workers() > 1:
    if num_cpu_devices > 1:
      raise ValueError(
          f'--num_cpu_devices={num_cpu_devices} cannot be combined with a multi-worker '
          'TF_CONFIG (each worker runs one CPU replica); drop one of them.')
    # Collectives are configured here, so this must come before any eager op.
    try:
      strategy = tf.distribute.MultiWorkerMirroredStrategy(
          communication_options=communication_options(infra_config))
    except RuntimeError as error:
      raise ValueError(
          f'TF_CONFIG names {count_cluster_workers()} workers, but multi-worker '
          f'collectives cannot be set up ({" ".join(str(error).split())}): call '
          'create_strategy before any other TensorFlow op.') from None
    resolver = strategy.cluster_resolver
    description = (f'MultiWorkerMirroredStrategy over {count_cluster_workers()} workers '
                   f'(this is {resolver.task_type} {resolver.task_id})')
  elif num_cpu_devices > 1:
    devices = _split_cpu(num_cpu_devices)
    strategy = tf.distribute.MirroredStrategy(devices=devices)
    description = f'MirroredStrategy over {num_cpu_devices} logical CPU devices'
  else:
    gpus = tf.config.list_physical_devices('GPU')
    if len(gpus) > 1:
      strategy = tf.distribute.MirroredStrategy()
      description = f'MirroredStrategy over {len(gpus)} GPUs'
    elif gpus:
      strategy = tf.distribute.OneDeviceStrategy('/gpu:0')
      description = 'OneDeviceStrategy on /gpu:0'
    else:
      strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
      description = 'OneDeviceStrategy on /cpu:0'
  logging.info('Distribution: %s, %d replicas in sync.', description,
               strategy.num_replicas_in_sync)
  return strategy


def _task(strategy: tf.distribute.Strategy) -> tuple[Optional[str], Optional[int]]:
  if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return None, None
  resolver = strategy.cluster_resolver
  return resolver.task_type, resolver.task_id


def num_workers(strategy: tf.distribute.Strategy) -> int:
  """Number of worker processes that take part in training (1 unless multi-worker)."""
  if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return 1
  cluster = strategy.cluster_resolver.cluster_spec().as_dict()
  return max(1, len(cluster.get('chief', [])) + len(cluster.get('worker', [])))


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """Whether this process writes the run's outputs (checkpoints, exports, results).

  The chief is the `chief` task, else worker 0 when the cluster has no chief; every
  process is the chief when not multi-worker.
  """
  task_type, task_id = _task(strategy)
  if task_type is None or task_type == 'chief':
    return True
  cluster = strategy.cluster_resolver.cluster_spec().as_dict()
  return task_type == 'worker' and task_id == 0 and 'chief' not in cluster


def chief_or_temp_dir(strategy: tf.distribute.Strategy, model_dir: str) -> str:
  """Where this process saves checkpoints: `model_dir` on the chief, else a temp dir.

  With MultiWorkerMirroredStrategy every worker must call save (saving runs
  collectives), but only the chief's files are the run's; the others write to a
  local directory private to the run and task, which they may delete afterwards.
  All workers restore from `model_dir`.
  """
  if is_chief(strategy):
    return model_dir
  task_type, task_id = _task(strategy)
  run_key = hashlib.sha1(model_dir.encode('utf-8')).hexdigest()[:12]
  return os.path.join(tempfile.gettempdir(), 'tf_simclr_workers', run_key,
                      f'{task_type}_{task_id}')
