"""`python run.py` end to end on the real CIFAR-10 folder, resume, and bad input."""

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest
import tensorflow as tf
from absl import flags as absl_flags

import flags as simclr_flags

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT_SECS = 600


def _command(model_dir, data_dir, *extra):
  return [sys.executable, str(REPO_ROOT / 'run.py'), '--dataset=image_folder',
          f'--data_dir={data_dir}', '--train_split=train[:512]', '--eval_split=test[:40]',
          '--image_size=16', '--resnet_depth=18', '--proj_out_dim=16',
          '--train_batch_size=16', '--eval_batch_size=16', '--checkpoint_steps=2',
          '--learning_rate=1.0', '--warmup_epochs=0', '--temperature=0.5',
          '--use_blur=False', '--color_jitter_strength=0.5', '--seed=3',
          '--export_hub_module=never', f'--model_dir={model_dir}', *extra]


def _run(command, timeout=TIMEOUT_SECS):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  env.pop('TF_CONFIG', None)
  return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                        timeout=timeout)


def _scalars(model_dir, tag):
  """{step: value} of a scalar summary in model_dir's event files."""
  values = {}
  for path in tf.io.gfile.glob(os.path.join(model_dir, 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag == tag:
          values[event.step] = float(tf.make_ndarray(value.tensor))
  return values


def _official_learning_rate(step, total_steps, base=1.0, batch=16):
  """Official schedule without warm-up: lr * B / 256 * 0.5 * (1 + cos(pi * s / T))."""
  return base * batch / 256 * 0.5 * (1 + math.cos(math.pi * step / total_steps))


def test_train_then_eval_then_resume(cifar10_dir, tmp_path):
  model_dir = tmp_path / 'run'
  first = _run(_command(model_dir, cifar10_dir, '--mode=train_then_eval',
                        '--train_steps=4'))
  assert first.returncode == 0, first.stderr[-3000:]
  assert 'step 4/4 (100.0%)' in first.stdout and 'images/s | ETA' in first.stdout
  result = json.loads((model_dir / 'result.json').read_text())
  assert result['global_step'] == 4 and result['num_examples'] == 40
  assert 0 <= result['eval/label_top_1_accuracy'] <= result['eval/label_top_5_accuracy'] <= 1
  assert (model_dir / 'result_4.json').exists()
  flags = json.loads((model_dir / 'flags.json').read_text())
  assert flags['resnet_depth'] == 18 and flags['train_steps'] == 4
  # flags.txt repeats the run: read back as a flagfile it gives the same flags.
  repeated = absl_flags.FlagValues()
  simclr_flags.define_flags(repeated)
  repeated(['run.py', f'--flagfile={model_dir / "flags.txt"}'])
  assert json.loads(simclr_flags.flags_to_json(repeated)) == flags
  assert tf.train.latest_checkpoint(str(model_dir)).endswith('ckpt-4')
  assert (model_dir / 'ckpt-2.index').exists()
  for tag in ('train/contrast_loss', 'train/contrast_acc', 'train/contrast_entropy',
              'train/supervised_loss', 'train/supervised_acc', 'train/weight_decay',
              'train/total_loss', 'learning_rate', 'eval/label_top_1_accuracy',
              'eval/label_top_5_accuracy', 'eval/regularization_loss'):
    assert _scalars(str(model_dir), tag), tag
  assert [name for name in os.listdir(model_dir) if name.endswith('.tmp')] == []

  # The same command with more steps continues at step 4 under the 6-step schedule.
  second = _run(_command(model_dir, cifar10_dir, '--mode=train', '--train_steps=6',
                         '--steps_per_loop=1'))
  assert second.returncode == 0, second.stderr[-3000:]
  assert 'Resuming from' in second.stdout
  assert 'step 5/6' in second.stdout and 'step 6/6 (100.0%)' in second.stdout
  assert 'step 2/6' not in second.stdout
  assert tf.train.latest_checkpoint(str(model_dir)).endswith('ckpt-6')
  learning_rates = _scalars(str(model_dir), 'learning_rate')
  assert learning_rates[2] == pytest.approx(_official_learning_rate(2, 4), abs=1e-7)
  # The resumed steps follow the 6-step schedule (a 4-step one would give 0 at step 5).
  assert learning_rates[5] == pytest.approx(_official_learning_rate(5, 6), abs=1e-7)
  assert learning_rates[5] > 1e-3
  assert learning_rates[6] == pytest.approx(_official_learning_rate(6, 6), abs=1e-7)

  # Finetuning from this run with another depth is refused on one line.
  bad = _run(_command(tmp_path / 'ft', cifar10_dir, '--train_mode=finetune',
                      f'--checkpoint={model_dir}', '--resnet_depth=34', '--train_steps=1'))
  assert bad.returncode == 2
  assert bad.stderr.strip().splitlines()[-1] == (
      f'error: checkpoint {model_dir}/ckpt-6 has resnet_depth 18 but --resnet_depth=34; '
      'use --resnet_depth=18 or another checkpoint.')
  assert not (tmp_path / 'ft').exists()


BAD_INPUTS = (
    (['--resnet_depth=19'], '--resnet_depth=19 is not supported'),
    (['--train_batch_size=abc'], 'train_batch_size'),
    (['--data_dir=/no/such/dir'], '/no/such/dir'),
    (['--checkpoint=/no/such/ckpt'], '--checkpoint=/no/such/ckpt does not exist'),
    (['--mode=eval', '--model_dir=/no/such/model_dir'], '--model_dir=/no/such/model_dir'),
    # Checked once, when the strategy gives the replica count.
    (['--num_cpu_devices=2', '--train_batch_size=15'],
     '--train_batch_size=15 is not divisible by the 2 replicas'),
)


def test_bad_input_is_one_line_and_exit_2(tmp_path, cifar10_dir):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  env.pop('TF_CONFIG', None)
  # A class folder only in the eval split (test/frog): its images could never be learnt.
  extra_class = tmp_path / 'extra_class'
  for split, class_names in (('train', ('cat', 'ship')), ('test', ('cat', 'frog', 'ship'))):
    (extra_class / split).mkdir(parents=True)
    for class_name in class_names:
      (extra_class / split / class_name).symlink_to(cifar10_dir / split / class_name)
  bad_inputs = BAD_INPUTS + (
      ([f'--data_dir={extra_class}', '--mode=train_then_eval'],
       f"--eval_split=test[:40]: class 'frog' ({extra_class / 'test' / 'frog'}) has no images "
       f'in the --train_split=train[:512] folder(s) {extra_class / "train"}'),)
  processes = []
  try:
    for index, (extra, _) in enumerate(bad_inputs):  # All at once: TF start-up dominates.
      command = _command(tmp_path / f'run{index}', cifar10_dir, '--train_steps=1', *extra)
      processes.append(subprocess.Popen(command, cwd=REPO_ROOT, env=env, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    for index, ((extra, message), process) in enumerate(zip(bad_inputs, processes)):
      _, stderr = process.communicate(timeout=300)
      assert process.returncode == 2, (extra, stderr[-2000:])
      lines = [line for line in stderr.splitlines() if line.startswith('error: ')]
      assert len(lines) == 1 and message in lines[0], (extra, stderr[-2000:])
      assert 'Traceback' not in stderr, extra
      model_dir = tmp_path / f'run{index}'
      assert not model_dir.exists(), extra  # This run created it: removed again.
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
        process.wait()


@pytest.mark.slow
def test_micro_batch_size_trains_and_evaluates_end_to_end(cifar10_dir, tmp_path):
  """run.py with --micro_batch_size: the gradient-caching step through the whole run
  (kernel choice, loop, checkpoint, eval); its gradients are tests/test_grad_cache.py's."""
  model_dir = tmp_path / 'run'
  run = _run(_command(model_dir, cifar10_dir, '--mode=train_then_eval', '--train_steps=2',
                      '--micro_batch_size=4'))
  assert run.returncode == 0, run.stderr[-3000:]
  assert ("gradient caching (--micro_batch_size=4): each replica's 16 examples in 4 "
          'micro-batches of 4 (8 images)') in run.stdout
  assert 'step 2/2 (100.0%)' in run.stdout
  losses = _scalars(str(model_dir), 'train/contrast_loss')
  assert losses and all(math.isfinite(value) for value in losses.values())
  assert tf.train.latest_checkpoint(str(model_dir)).endswith('ckpt-2')
  assert json.loads((model_dir / 'result.json').read_text())['global_step'] == 2
