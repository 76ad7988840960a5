r"""Time and memory of importing an official google-research/simclr tf2 model.

    python bench/import_official.py --checkpoint=gs://simclr-checkpoints-tf2/simclrv2/pretrained/r50_2x_sk1/saved_model/
    python bench/import_official.py --write_official=/tmp/official_r50_2x_sk \
        --official_dir=../shared/official-simclr-tf2 -- --resnet_depth=50 --width_multiplier=2 --sk_ratio=0.0625

With --write_official, the official code (subprocess, tests/official_model_writer.py)
first writes a checkpoint of that architecture with random weights (1000 classes).
Then, in this process: read the architecture, build our model, import the weights.
Prints the architecture line, the model's size (all variables, float32), the time of
each phase, the resident memory (RSS) after building the model, the peak RSS during
the import (sampled every 5 ms from /proc/self/status) and the import's peak over the
model: the importer reads one tensor at a time, so that should stay near the largest
tensor, far below the model's size. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import threading
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))


def _rss_bytes() -> int:
  with open('/proc/self/status') as status:
    for line in status:
      if line.startswith('VmRSS:'):
        return int(line.split()[1]) * 1024
  return 0


class PeakRss:
  """Samples RSS in a thread; `peak` is the largest seen between start and stop."""

  def __init__(self, interval_secs: float = 0.005) -> None:
    self.interval_secs = interval_secs
    self.peak = 0
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)

  def _run(self) -> None:
    while not self._stop.is_set():
      self.peak = max(self.peak, _rss_bytes())
      time.sleep(self.interval_secs)

  def __enter__(self) -> 'PeakRss':
    self.peak = _rss_bytes()
    self._thread.start()
    return self

  def __exit__(self, *exc) -> None:
    self._stop.set()
    self._thread.join()
    self.peak = max(self.peak, _rss_bytes())


def main(argv: list[str]) -> None:
  own, official_flags = (argv[:argv.index('--')], argv[argv.index('--') + 1:]) if '--' in argv \
      else (argv, [])
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--checkpoint', help='An official checkpoint or SavedModel path.')
  parser.add_argument('--write_official', help='Write an official checkpoint here first.')
  parser.add_argument('--official_dir', default=str(REPO_ROOT.parent / 'shared' /
                                                    'official-simclr-tf2'))
  parser.add_argument('--num_classes', type=int, default=1000)
  args = parser.parse_args(own)
  path = args.checkpoint
  if args.write_official:
    if not os.path.exists(os.path.join(args.write_official, 'checkpoint')):
      start = time.perf_counter()
      subprocess.run([sys.executable, str(REPO_ROOT / 'tests' / 'official_model_writer.py'),
                      f'--official_dir={args.official_dir}',
                      f'--out_dir={args.write_official}', f'--num_classes={args.num_classes}',
                      '--image_size=64', '--no_saved_model', '--', *official_flags],
                     check=True, env=dict(os.environ, TF_USE_LEGACY_KERAS='1',
                                          TF_CPP_MIN_LOG_LEVEL='2'))
      print(f'official checkpoint written in {time.perf_counter() - start:.1f} s', flush=True)
    path = path or args.write_official
  if not path:
    sys.exit('error: pass --checkpoint=PATH or --write_official=DIR.')

  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  import tf_simclr  # pylint: disable=g-import-not-at-top,unused-import
  from tf_simclr import config as config_lib  # pylint: disable=g-import-not-at-top
  from tf_simclr import official_import  # pylint: disable=g-import-not-at-top
  from tf_simclr.models import build_model  # pylint: disable=g-import-not-at-top

  rss_before_build = _rss_bytes()
  start = time.perf_counter()
  source = official_import.find_source(path)
  architecture = official_import.read_architecture(source)
  read_secs = time.perf_counter() - start
  print(f'{path}: {architecture.describe()}', flush=True)
  start = time.perf_counter()
  config = official_import.config_for_architecture(config_lib.Config(), architecture)
  model = build_model(config, architecture.num_classes)
  build_secs = time.perf_counter() - start
  model_bytes = sum(int(variable.numpy().nbytes) for variable in model.variables)
  rss_after_build = _rss_bytes()
  start = time.perf_counter()
  with PeakRss() as peak:
    count = official_import.load_weights(model, source)
  import_secs = time.perf_counter() - start
  mib = 2**20
  result = {
      'checkpoint': path, 'architecture': architecture.describe(), 'tensors': count,
      'model_mib': round(model_bytes / mib, 1),
      'read_architecture_secs': round(read_secs, 2), 'build_model_secs': round(build_secs, 2),
      'import_secs': round(import_secs, 2),
      'rss_before_build_mib': round(rss_before_build / mib, 1),
      'rss_after_build_mib': round(rss_after_build / mib, 1),
      'peak_rss_during_import_mib': round(peak.peak / mib, 1),
      'import_peak_over_built_model_mib': round((peak.peak - rss_after_build) / mib, 1),
      # The process's memory for the model and its import, over the model's size.
      'peak_rss_over_model_size': round((peak.peak - rss_before_build) / model_bytes, 2),
  }
  print(f'model {result["model_mib"]} MiB ({count} tensors); architecture read in '
        f'{read_secs:.2f} s, model built in {build_secs:.1f} s, weights imported in '
        f'{import_secs:.1f} s; RSS {result["rss_before_build_mib"]} MiB before building, '
        f'{result["rss_after_build_mib"]} MiB after, '
        f'peak {result["peak_rss_during_import_mib"]} MiB during the import '
        f'(+{result["import_peak_over_built_model_mib"]} MiB); peak over the TF runtime '
        f'{result["peak_rss_over_model_size"]}x the model size', flush=True)
  print(json.dumps(result))


if __name__ == '__main__':
  main(sys.argv[1:])
