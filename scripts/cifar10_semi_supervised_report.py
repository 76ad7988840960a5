"""Report of scripts/cifar10_semi_supervised.sh: test top-1 per stage, JSON and plot.

Reads ROOT/{pretrain,finetune,distill,scratch}/result.json (and wall_seconds.txt,
flags.json), writes ROOT/semi_supervised_result.json and a bar plot of test top-1.

Usage: .venv/bin/python scripts/cifar10_semi_supervised_report.py --root=ROOT [--plot=PNG]
"""

from __future__ import annotations

import argparse
import json
import os

STAGES = (('finetune', 'fine-tuned\n(10% labels)'),
          ('distill', 'self-distilled\n(all images)'),
          ('scratch', 'from scratch\n(10% labels)'))


def _read_json(path: str) -> dict:
  with open(path, encoding='utf-8') as json_file:
    return json.load(json_file)


def stage_summary(root: str, name: str) -> dict:
  """{'global_step', 'top_1', 'top_5', 'eval_examples', 'wall_seconds', ...} of a stage."""
  stage_dir = os.path.join(root, name)
  result = _read_json(os.path.join(stage_dir, 'result.json'))
  flags = _read_json(os.path.join(stage_dir, 'flags.json'))
  summary = {'global_step': result['global_step'], 'eval_examples': result['num_examples'],
             'train_split': flags['train_split'], 'train_mode': flags['train_mode'],
             'train_batch_size': flags['train_batch_size'],
             'learning_rate': flags['learning_rate']}
  for key, name_out in (('eval/label_top_1_accuracy', 'top_1'),
                        ('eval/label_top_5_accuracy', 'top_5'),
                        ('eval/contrast_acc', 'contrast_acc')):
    if key in result:
      summary[name_out] = result[key]
  wall_path = os.path.join(stage_dir, 'wall_seconds.txt')
  if os.path.exists(wall_path):
    with open(wall_path, encoding='utf-8') as wall_file:
      summary['wall_seconds'] = int(wall_file.read().strip())
  return summary


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--root', required=True)
  parser.add_argument('--plot', default='')
  args = parser.parse_args()
  report = {'stages': {name: stage_summary(args.root, name)
                       for name in ('pretrain',) + tuple(name for name, _ in STAGES)}}
  top_1 = {name: report['stages'][name]['top_1'] for name, _ in STAGES}
  report['distilled_minus_finetuned_points'] = round(100 * (top_1['distill'] - top_1['finetune']), 2)
  report['finetuned_minus_scratch_points'] = round(100 * (top_1['finetune'] - top_1['scratch']), 2)
  report['paper_direction_holds'] = bool(top_1['distill'] >= top_1['finetune'] > top_1['scratch'])
  path = os.path.join(args.root, 'semi_supervised_result.json')
  with open(path, 'w', encoding='utf-8') as json_file:
    json.dump(report, json_file, indent=2, sort_keys=True)
    json_file.write('\n')
  print(json.dumps(report, indent=2, sort_keys=True))
  print(f'wrote {path}')
  if args.plot:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use('Agg')
    from matplotlib import pyplot  # pylint: disable=g-import-not-at-top
    figure, axes = pyplot.subplots(figsize=(6, 4))
    values = [100 * top_1[name] for name, _ in STAGES]
    bars = axes.bar([label for _, label in STAGES], values,
                    color=['tab:blue', 'tab:green', 'tab:gray'])
    for bar, value in zip(bars, values):
      axes.text(bar.get_x() + bar.get_width() / 2, value + 0.5, f'{value:.1f}', ha='center')
    steps = {name: report['stages'][name]['global_step'] for name in report['stages']}
    axes.set_ylabel(f'test top-1 (%, {report["stages"]["finetune"]["eval_examples"]} images)')
    axes.set_title(f'CIFAR-10, 10% labels: pretrain {steps["pretrain"]} + fine-tune '
                   f'{steps["finetune"]} + distil {steps["distill"]} steps\nvs from scratch '
                   f'{steps["scratch"]} steps (ResNet-18, batch '
                   f'{report["stages"]["finetune"]["train_batch_size"]})', fontsize=9)
    axes.set_ylim(0, max(values) * 1.2 + 1)
    figure.tight_layout()
    figure.savefig(args.plot, dpi=100)
    print(f'wrote {args.plot}')


if __name__ == '__main__':
  main()
