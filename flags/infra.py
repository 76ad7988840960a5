"""Where to run: TPU, multi-worker or local devices."""

from absl import flags as absl_flags

OFFICIAL_FLAGS = ('use_tpu', 'tpu_name', 'tpu_zone', 'gcp_project', 'master')
OUR_FLAGS = ('num_cpu_devices', 'collective_timeout_secs')


def define_flags(flag_values: absl_flags.FlagValues = absl_flags.FLAGS) -> None:
  """Defines this topic's flags on `flag_values`."""
  absl_flags.DEFINE_bool(
      'use_tpu', False,
      'Run on a Cloud TPU with TPUStrategy. Default False here (True in the '
      'official code) so CPU and GPU runs need no flag.',
      flag_values=flag_values)
  absl_flags.DEFINE_string(
      'tpu_name', None,
      'Cloud TPU to use: its name or a grpc://ip:8470 address.',
      flag_values=flag_values)
  absl_flags.DEFINE_string(
      'tpu_zone', None,
      'GCE zone of the Cloud TPU; detected from metadata when unset.',
      flag_values=flag_values)
  absl_flags.DEFINE_string(
      'gcp_project', None,
      'GCP project of the Cloud TPU; detected from metadata when unset.',
      flag_values=flag_values)
  absl_flags.DEFINE_string(
      'master', None,
      'TPU master address, used when --tpu_name is unset.',
      flag_values=flag_values)
  absl_flags.DEFINE_integer(
      'num_cpu_devices', 0,
      'When > 1, split the CPU into this many logical devices and train with '
      'MirroredStrategy over them (multi-replica runs without accelerators).',
      flag_values=flag_values)
  absl_flags.DEFINE_float(
      'collective_timeout_secs', 600.0,
      'Multi-worker runs: fail with a clear error when a cross-worker collective '
      'waits longer than this (a worker died or hangs) instead of hanging; 0: no '
      'limit. Restart all workers with the same command to resume.',
      flag_values=flag_values)
