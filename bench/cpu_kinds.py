r"""One speed table for this CPU kind: ours vs the peers, measured in the same sitting.

    python bench/cpu_kinds.py --official_tf2_dir=/path/to/simclr/tf2
    python bench/cpu_kinds.py --official_tf2_dir=... --configs=r18_cifar_32,r50_imagenet_32 \
        --steps=4 --pytorch_python=/path/to/torch-venv/bin/python

For each config, one after the other in this sitting: our step (`bench/train_step.py`,
`--cpu_kernels=auto`, alternating with the same step built with `--cpu_kernels=ours`
and `--cpu_kernels=stock`), the official google-research/simclr tf2 step
(`bench/peer_official_tf2.py`, oneDNN on) and the PyTorch peer (`bench/peer_pytorch.py`)
when torch imports. Prints the CPU (model, whether it has avx512f / avx512_bf16 /
amx_bf16), a markdown table (images/s and ours / peer ratios) and a last JSON line with
every number and the full CPU flag list.

`--rounds=N` runs the three sides N times in turn per config (ours, official, PyTorch,
ours, ...), so that a machine whose speed drifts during the sitting (2-core virtual
machines here moved by 1.5x between runs of the same command) is seen by every side
alike: the table then gives the median images/s and the median of the per-round ratios
with their range (the alternating comparison of our kernel settings runs in the first
round only).

`--isa_limit=avx2` caps every process's kernels to that instruction set (oneDNN in
TensorFlow and PyTorch: ONEDNN_MAX_CPU_ISA; PyTorch's MKL matmuls and ATen kernels:
MKL_ENABLE_INSTRUCTIONS, ATEN_CPU_CAPABILITY): AVX2 code paths measured on an AVX-512
CPU. A proxy, not an AVX2 CPU: the core, caches and memory stay this machine's.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import statistics
import subprocess
import sys
from typing import Any, Optional

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCH_DIR))

# name: (depth, stem, image size, batch)
CONFIGS = {
    'r18_cifar_32': (18, 'cifar', 32, 64),
    'r50_imagenet_32': (50, 'imagenet', 32, 64),
    'r50_imagenet_96': (50, 'imagenet', 96, 32),
    'r50_imagenet_128': (50, 'imagenet', 128, 32),
}
FLAGS_OF_INTEREST = ('avx2', 'avx512f', 'avx512_bf16', 'amx_bf16', 'amx_tile')
# --isa_limit: the environment that caps each library's kernels to that instruction set.
ISA_LIMITS = {
    'avx2': {'ONEDNN_MAX_CPU_ISA': 'AVX2', 'MKL_ENABLE_INSTRUCTIONS': 'AVX2',
             'ATEN_CPU_CAPABILITY': 'avx2'},
    'avx512_core': {'ONEDNN_MAX_CPU_ISA': 'AVX512_CORE', 'MKL_ENABLE_INSTRUCTIONS': 'AVX512',
                    'ATEN_CPU_CAPABILITY': 'avx512'},
}


def _last_json(command: list[str], timeout: float, extra_env: dict[str, str]
               ) -> Optional[dict[str, Any]]:
  """Runs `command` (with `extra_env`); its last stdout line as JSON, or None (the
  error on stderr)."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', **extra_env)
  try:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                            env=env, check=False)
  except subprocess.TimeoutExpired:
    print(f'timed out: {" ".join(command)}', file=sys.stderr, flush=True)
    return None
  lines = result.stdout.strip().splitlines()
  if result.returncode or not lines:
    print(f'failed ({result.returncode}): {" ".join(command)}\n{result.stderr[-1500:]}',
          file=sys.stderr, flush=True)
    return None
  return json.loads(lines[-1])


def rate(result: Optional[dict[str, Any]]) -> Optional[float]:
  """images/s of one side's result (None: that side did not run)."""
  return None if result is None else result.get('images_per_sec')


def summarize_rounds(rounds: list[dict[str, Optional[dict[str, Any]]]]) -> dict[str, Any]:
  """Per config: the median images/s of each side over the rounds, and our ratio to each
  peer per round (both measured in that round), their median and range.

  Args:
    rounds: one dict per round, side name ('ours', 'official_tf2', 'pytorch') -> that
      side's result (None where it did not run).

  Returns:
    {'images_per_sec': {side: median or None}, 'ratios': {peer: [per-round ratio]},
     'ratio_median': {peer: median or None}, 'ratio_range': {peer: (min, max) or None}}.
  """
  sides = ('ours', 'official_tf2', 'pytorch')
  rates = {side: [r for r in (rate(one.get(side)) for one in rounds) if r] for side in sides}
  ratios = {peer: [rate(one['ours']) / rate(one.get(peer)) for one in rounds
                   if rate(one.get('ours')) and rate(one.get(peer))]
            for peer in ('official_tf2', 'pytorch')}
  return {'images_per_sec': {side: statistics.median(values) if values else None
                             for side, values in rates.items()},
          'ratios': ratios,
          'ratio_median': {peer: statistics.median(values) if values else None
                           for peer, values in ratios.items()},
          'ratio_range': {peer: (min(values), max(values)) if values else None
                          for peer, values in ratios.items()}}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--official_tf2_dir', default='',
                      help='tf2/ of a google-research/simclr checkout; empty: no official peer.')
  parser.add_argument('--configs', default='r18_cifar_32,r50_imagenet_32,r50_imagenet_96')
  parser.add_argument('--steps', type=int, default=4)
  parser.add_argument('--pytorch_python', default=sys.executable,
                      help='A Python interpreter with torch for the PyTorch peer (e.g. '
                           'another virtual environment); default: this one.')
  parser.add_argument('--rounds', type=int, default=1,
                      help='Run ours, the official step and the PyTorch peer this many '
                           'times in turn per config; report medians and per-round ratios.')
  parser.add_argument('--timeout', type=float, default=3600)
  parser.add_argument('--isa_limit', default='', choices=['', *ISA_LIMITS],
                      help='Cap every process\'s kernels to this instruction set (a proxy '
                           'for a CPU without the newer ones); empty: no cap.')
  args = parser.parse_args()
  extra_env = ISA_LIMITS.get(args.isa_limit, {})
  os.environ.update(extra_env)  # This process's record of the CPU says so too.
  from tf_simclr.models import kernel_choice  # pylint: disable=g-import-not-at-top
  cpu = kernel_choice.cpu_description()
  has = {flag: flag in cpu['flags'] for flag in FLAGS_OF_INTEREST}
  if args.pytorch_python == sys.executable:
    torch_available = importlib.util.find_spec('torch') is not None
  else:
    torch_available = subprocess.run([args.pytorch_python, '-c', 'import torch'],
                                     capture_output=True, check=False).returncode == 0
  print(f"CPU: {cpu['model']}; {os.cpu_count()} logical CPUs; "
        + ', '.join(f'{flag} {"yes" if value else "no"}' for flag, value in has.items())
        + (f'; kernels capped to {args.isa_limit} ({extra_env})' if extra_env else ''),
        flush=True)
  rows, results = [], {}
  for name in args.configs.split(','):
    depth, stem, size, batch = CONFIGS[name]
    rounds = []
    for round_index in range(args.rounds):
      ours = _last_json([
          sys.executable, os.path.join(BENCH_DIR, 'train_step.py'), f'--resnet_depth={depth}',
          f'--image_size={size}', f'--cifar_stem={stem == "cifar"}',
          f'--train_batch_size={batch}', f'--bench_steps={args.steps}',
          '--bench_warmup_steps=1', '--cpu_kernels=auto',
          f'--bench_compare_cpu_kernels={round_index == 0}',
          '--train_steps=1000',  # As a long run: `auto` times each shape (or reads its cache).
          '--bench_matmul_sizes=2048'], args.timeout, extra_env)
      official = None
      if args.official_tf2_dir:
        official = _last_json([
            sys.executable, os.path.join(BENCH_DIR, 'peer_official_tf2.py'),
            f'--official_tf2_dir={args.official_tf2_dir}', f'--depth={depth}',
            f'--stem={stem}', f'--image_size={size}', f'--batch_size={batch}',
            f'--steps={args.steps}', '--warmup_steps=1'], args.timeout, extra_env)
      pytorch = None
      if torch_available:
        pytorch = _last_json([
            args.pytorch_python, os.path.join(BENCH_DIR, 'peer_pytorch.py'),
            f'--depth={depth}', f'--stem={stem}', f'--image_size={size}',
            f'--batch_size={batch}', f'--steps={args.steps}', '--warmup_steps=1'],
            args.timeout, extra_env)
      rounds.append({'ours': ours, 'official_tf2': official, 'pytorch': pytorch})
      if args.rounds > 1:
        print(f'{name} round {round_index + 1}: images/s ours {rate(ours)}, official '
              f'{rate(official)}, PyTorch {rate(pytorch)}', flush=True)
    summary = summarize_rounds(rounds)
    results[name] = {**rounds[0], 'rounds': rounds, 'summary': summary}

    def text(value: Optional[float], digits: int = 1, suffix: str = '') -> str:
      return 'n/a' if value is None else f'{value:.{digits}f}{suffix}'

    def ratio_text(peer: str) -> str:
      median, span = summary['ratio_median'][peer], summary['ratio_range'][peer]
      if median is None or args.rounds == 1:
        return text(median, 2, 'x')
      return f'{median:.2f}x ({span[0]:.2f}-{span[1]:.2f})'

    first_ours = rounds[0]['ours'] or {}
    auto_vs = {mode: first_ours.get(f'speedup_vs_cpu_kernels_{mode}') for mode in
               ('ours', 'stock')}
    rates = summary['images_per_sec']
    rows.append(f"| {name} (b{batch}) | {text(rates['ours'])} | {text(auto_vs['ours'], 2, 'x')} | "
                f"{text(auto_vs['stock'], 2, 'x')} | {text(rates['official_tf2'])} | "
                f"{ratio_text('official_tf2')} | {text(rates['pytorch'])} | "
                f"{ratio_text('pytorch')} |")
    print(rows[-1], flush=True)
  print('\n| config | ours (auto), images/s | auto vs ours-everywhere | auto vs stock-everywhere '
        '| official tf2 | ours / official | PyTorch peer | ours / PyTorch |\n'
        '|---|---|---|---|---|---|---|---|', flush=True)
  print('\n'.join(rows), flush=True)
  print(json.dumps({'date': datetime.datetime.now(datetime.timezone.utc).isoformat(),
                    'cpu': cpu, 'cpu_flags_of_interest': has, 'isa_limit_env': extra_env,
                    'torch_available': torch_available, 'results': results}), flush=True)


if __name__ == '__main__':
  main()
