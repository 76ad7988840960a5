r"""Loss curves of real CIFAR-10 pretraining runs in two precisions, against seed noise.

    python bench/precision_curve.py --data_dir=../shared/data/cifar10 \
        --precisions=float32,bfloat16 --seeds=0,1 --train_steps=200 \
        --output_json=docs/bfloat16_cifar10_curve.json --plot=docs/bfloat16_cifar10_curve.png

Runs `run.py` once per (precision, seed) with the CPU budget preset
(configs/cpu_budget_cifar10.flags: ResNet-18, ImageNet stem, 32 px, batch 128, LARS),
`--deterministic` so that runs with the same seed see the same images and
augmentations, and reads each run's `train/total_loss` (the mean of each
`--steps_per_loop` loop) from its TensorBoard events. It then compares:

- precision: for each seed, |loss(precision) - loss(first precision)| per loop;
- noise: for each pair of seeds, |loss(s1) - loss(s2)| per loop, in the first precision
  (what a different seed alone changes).

A precision is "within noise" when its mean and largest per-loop deviation from the
first precision are at most the seed noise's. Prints a human summary and a last JSON
line (also written to --output_json); --plot draws the curves. The run directories are
made under --work_dir (a fresh temporary folder by default) and left there.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Optional, Sequence

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
sys.path.insert(0, REPO_ROOT)

import tf_simclr  # pylint: disable=g-import-not-at-top,unused-import  (before TF)
import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

from tf_simclr.models import kernel_choice  # pylint: disable=g-import-not-at-top

LOSS_TAG = 'train/total_loss'
PRESET = os.path.join(REPO_ROOT, 'configs', 'cpu_budget_cifar10.flags')


def read_loss_curve(model_dir: str, tag: str = LOSS_TAG) -> list[tuple[int, float]]:
  """(step, value) of scalar `tag` in the TensorBoard event files directly in
  `model_dir`, sorted by step (the last value written wins for a repeated step)."""
  values: dict[int, float] = {}
  for path in sorted(tf.io.gfile.glob(os.path.join(model_dir, 'events.out.tfevents.*'))):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag == tag:
          values[int(event.step)] = float(tf.make_ndarray(value.tensor))
  return sorted(values.items())


def compare_curves(curves: dict[str, dict[int, list[tuple[int, float]]]]) -> dict[str, Any]:
  """Deviation of each precision from the first one against seed-to-seed noise.

  Args:
    curves: precision -> seed -> [(step, loss)], precisions in order (the first is the
      reference); every run logged at the same steps.

  Returns:
    {'noise': {'mean', 'max', 'pairs'}, 'precisions': {name: {'mean', 'max',
    'within_noise', 'final_mean'}}}: absolute loss differences per logged loop,
    mean and max over loops (and over seeds / seed pairs); final_mean is the mean of
    the last quarter of the curve over seeds.
  """
  names = list(curves)
  reference = curves[names[0]]
  seeds = sorted(reference)

  def losses(curve: list[tuple[int, float]]) -> np.ndarray:
    return np.array([loss for _, loss in curve])

  steps = [step for step, _ in reference[seeds[0]]]
  for name in names:
    for seed, curve in curves[name].items():
      if [step for step, _ in curve] != steps:
        raise ValueError(f'{name}, seed {seed}: logged steps differ from the reference run '
                         f'({[step for step, _ in curve][:5]}... vs {steps[:5]}...)')
  pair_differences = [np.abs(losses(reference[a]) - losses(reference[b]))
                      for a, b in itertools.combinations(seeds, 2)]
  noise = ({'mean': float(np.mean(pair_differences)), 'max': float(np.max(pair_differences)),
            'pairs': len(pair_differences)} if pair_differences else None)
  tail = max(1, len(steps) // 4)
  result: dict[str, Any] = {'noise': noise, 'precisions': {}}
  for name in names:
    final_mean = float(np.mean([losses(curves[name][seed])[-tail:] for seed in seeds]))
    entry: dict[str, Any] = {'final_mean': final_mean}
    if name != names[0]:
      differences = [np.abs(losses(curves[name][seed]) - losses(reference[seed]))
                     for seed in seeds]
      entry.update(mean=float(np.mean(differences)), max=float(np.max(differences)))
      if noise is not None:
        entry['within_noise'] = bool(entry['mean'] <= noise['mean'] and
                                     entry['max'] <= noise['max'])
    result['precisions'][name] = entry
  return result


def _plot(curves: dict[str, dict[int, list[tuple[int, float]]]], path: str,
          title: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  figure, axes = plt.subplots(figsize=(7, 4))
  styles = ['-', '--', ':', '-.']
  for (name, runs), style in zip(curves.items(), styles):
    for seed, curve in sorted(runs.items()):
      axes.plot([step for step, _ in curve], [loss for _, loss in curve], style,
                label=f'{name}, seed {seed}')
  axes.set_xlabel('step')
  axes.set_ylabel('total loss (mean of each loop)')
  axes.set_title(title, fontsize=9)
  axes.legend(fontsize=8)
  figure.tight_layout()
  with tf.io.gfile.GFile(path, 'wb') as stream:
    figure.savefig(stream, format='png', dpi=110)


def _run(python: str, data_dir: str, model_dir: str, precision: str, seed: int,
         train_steps: int, steps_per_loop: int, extra_flags: Sequence[str]) -> float:
  command = [python, os.path.join(REPO_ROOT, 'run.py'), f'--flagfile={PRESET}',
             f'--data_dir={data_dir}', f'--model_dir={model_dir}',
             f'--train_steps={train_steps}', f'--steps_per_loop={steps_per_loop}',
             f'--checkpoint_steps={train_steps}', '--knn_every_steps=0',
             f'--seed={seed}', '--deterministic', f'--mixed_precision={precision}',
             *extra_flags]
  start = time.perf_counter()
  completed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True,
                             check=False)
  if completed.returncode != 0:
    tail = '\n'.join((completed.stdout + completed.stderr).splitlines()[-15:])
    raise SystemExit(f'error: {precision}, seed {seed} failed (exit '
                     f'{completed.returncode}):\n{tail}')
  for line in completed.stdout.splitlines() + completed.stderr.splitlines():
    if line.startswith('note: --mixed_precision'):
      print(f'{precision}, seed {seed}: {line}', flush=True)
  return time.perf_counter() - start


def main(argv: Optional[Sequence[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--data_dir', required=True,
                      help='CIFAR-10 as an image folder: train/<class>/*.jpg, test/...')
  parser.add_argument('--precisions', default='float32,bfloat16',
                      help='--mixed_precision values; the first is the reference.')
  parser.add_argument('--seeds', default='0,1', help='Seeds; two or more measure noise.')
  parser.add_argument('--train_steps', type=int, default=200)
  parser.add_argument('--steps_per_loop', type=int, default=5)
  parser.add_argument('--work_dir', default='', help='Run folders go here (default: new '
                      'temporary folder).')
  parser.add_argument('--output_json', default='', help='Also write the result here.')
  parser.add_argument('--plot', default='', help='PNG of the curves.')
  parser.add_argument('--python', default=sys.executable)
  parser.add_argument('--extra_flags', default='',
                      help='More run.py flags, space-separated (e.g. --force_bfloat16).')
  args = parser.parse_args(argv)
  precisions = [name for name in args.precisions.split(',') if name]
  seeds = [int(seed) for seed in args.seeds.split(',') if seed]
  if not tf.io.gfile.isdir(os.path.join(args.data_dir, 'train')):
    raise SystemExit(f'error: --data_dir={args.data_dir} has no train/ folder; give '
                     'CIFAR-10 as an image folder (train/<class>/*.jpg).')
  if len(precisions) < 2 or not seeds:
    raise SystemExit('error: --precisions needs two or more names and --seeds one or more.')
  work_dir = args.work_dir or tempfile.mkdtemp(prefix='precision_curve_')
  curves: dict[str, dict[int, list[tuple[int, float]]]] = {}
  seconds: dict[str, dict[int, float]] = {}
  for precision, seed in itertools.product(precisions, seeds):
    model_dir = os.path.join(work_dir, f'{precision}_seed{seed}')
    if tf.io.gfile.exists(model_dir):
      raise SystemExit(f'error: {model_dir} exists; give a new --work_dir.')
    seconds.setdefault(precision, {})[seed] = _run(
        args.python, args.data_dir, model_dir, precision, seed, args.train_steps,
        args.steps_per_loop, args.extra_flags.split())
    curves.setdefault(precision, {})[seed] = read_loss_curve(model_dir)
    print(f'{precision}, seed {seed}: {seconds[precision][seed]:.0f} s, loss '
          f'{curves[precision][seed][0][1]:.3f} -> {curves[precision][seed][-1][1]:.3f}',
          flush=True)
  comparison = compare_curves(curves)
  noise = comparison['noise']
  for name, entry in comparison['precisions'].items():
    if 'mean' in entry:
      verdict = ('' if noise is None else
                 f' vs seed noise mean {noise["mean"]:.4f}, max {noise["max"]:.4f}: '
                 f'{"within" if entry["within_noise"] else "NOT within"} noise')
      print(f'{name} vs {precisions[0]}: per-loop |difference| mean {entry["mean"]:.4f}, '
            f'max {entry["max"]:.4f}{verdict}; final loss {entry["final_mean"]:.4f}')
  result = {
      'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
      'cpu': kernel_choice.cpu_description(),
      'command': ' '.join(['python bench/precision_curve.py'] + (argv or sys.argv[1:])),
      'preset': os.path.relpath(PRESET, REPO_ROOT),
      'loss_is': f'{LOSS_TAG}: mean total loss of each {args.steps_per_loop}-step loop',
      'run_seconds': {name: {str(seed): value for seed, value in runs.items()}
                      for name, runs in seconds.items()},
      'comparison': comparison,
      'curves': {name: {str(seed): curve for seed, curve in runs.items()}
                 for name, runs in curves.items()},
  }
  if args.plot:
    _plot(curves, args.plot, f'CIFAR-10, ResNet-18 (ImageNet stem), 32 px, batch 128, '
          f'{args.train_steps} steps ({result["date"]})')
  text = json.dumps(result)
  if args.output_json:
    with tf.io.gfile.GFile(args.output_json, 'w') as stream:
      stream.write(json.dumps(result, indent=1) + '\n')
  print(text)


if __name__ == '__main__':
  main()
