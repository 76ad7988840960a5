r"""Where a training step's time goes: total op time per TensorFlow op type.

    python bench/op_profile.py --resnet_depth=50 --image_size=96 --cifar_stem=false \
        --train_batch_size=32 --bench_steps=2
    python bench/op_profile.py --resnet_depth=18 --image_size=32 --cifar_stem=false \
        --train_batch_size=256 --micro_batch_size=64

Takes run.py's flags (model, data, optimizer, --cpu_kernels, --micro_batch_size, ...)
plus --bench_* flags. Builds the real step and loop of `tf_simclr.train` on one fixed
random batch (as bench/train_step.py), runs the warm-up steps, then traces
--bench_steps steps with TensorFlow's profiler and reads the trace it writes
(`*.xplane.pb`, parsed with TensorFlow's own protobuf, no TensorBoard needed). Each op
execution on the host is one event; the table sums their durations per op type
(Conv2D, Conv2DBackpropFilter, FusedBatchNormV3, Transpose, ...), with the share of
the summed op time and the call count. Op times overlap when the executor runs ops in
parallel, so the sum can exceed the wall time; the shares still say which op types
dominate. The last line is one JSON object: wall seconds per step, the summed op
seconds per step, and per op type its seconds per step and calls per step.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags as absl_flags
import tf_simclr  # Before TensorFlow: turns on its oneDNN CPU kernels.
import tensorflow as tf

from bench import common
import flags as simclr_flags
from tf_simclr.models import kernel_choice

simclr_flags.define_flags()
absl_flags.DEFINE_integer('bench_steps', 2, 'Profiled training steps.')
absl_flags.DEFINE_integer('bench_warmup_steps', 1, 'Steps before profiling (tracing).')
absl_flags.DEFINE_integer('bench_num_classes', 1000, 'Classes of the supervised head.')
absl_flags.DEFINE_integer('bench_top', 25, 'Op types listed in the table.')
FLAGS = absl_flags.FLAGS


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  common.fill_run_flags(FLAGS, 'bench_op_profile_', 100)
  try:
    config = simclr_flags.config_from_flags(FLAGS)
  except ValueError as error:
    sys.exit(f'error: {error}')
  strategy = tf.distribute.get_strategy()
  one_step, _ = common.timed_step_fn(config, strategy, FLAGS.bench_num_classes,
                                     FLAGS.bench_warmup_steps)
  result: dict[str, Any] = common.profile_op_types(one_step, FLAGS.bench_steps,
                                                    FLAGS.bench_top)
  result.update({
      'config': {'resnet_depth': config.model.resnet_depth,
                 'image_size': config.data.image_size,
                 'train_batch_size': config.train.train_batch_size,
                 'micro_batch_size': config.train.micro_batch_size,
                 'cpu_kernels': config.train.cpu_kernels,
                 'onednn': common.onednn_enabled()},
      'cpu': kernel_choice.cpu_description(),
      'load_average_1min': common.load_average()})
  print(json.dumps(result, sort_keys=True), flush=True)


if __name__ == '__main__':
  app.run(main)
