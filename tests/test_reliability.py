"""Failure and resume: SIGKILL/SIGTERM of real runs, atomic outputs, NaN guard, bad input.

Runs are subprocesses of run.py on a tiny generated image folder (ResNet-18, 16 px,
batch 8, 6 steps, a checkpoint every step, --deterministic). A run killed and
restarted with the same command must end with the same weights, bit for bit, as an
uninterrupted run. Each run.py start costs ~10-20 s here (TF import and tracing).
"""

import dataclasses
import glob
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tests import reliability_helpers as helpers
from tests import train_fixtures
from tf_simclr import checkpoints
from tf_simclr import config as config_lib
from tf_simclr import data as data_lib
from tf_simclr import evaluate as evaluate_lib
from tf_simclr import run_dir
from tf_simclr import train as train_lib
from tf_simclr.models import build_model

RUN_TIMEOUT_SECS = 400
STEPS = helpers.TRAIN_STEPS


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory):
  return helpers.write_image_folder(tmp_path_factory.mktemp('data') / 'folder')


def _finish(process, timeout=RUN_TIMEOUT_SECS):
  try:
    return process.wait(timeout=timeout)
  finally:
    helpers.kill(process)


def _assert_bit_identical(reference_dir, other_dir):
  expected = helpers.checkpoint_tensors(str(reference_dir / f'ckpt-{STEPS}'))
  actual = helpers.checkpoint_tensors(str(other_dir / f'ckpt-{STEPS}'))
  assert expected.keys() == actual.keys()
  assert len(expected) > 100  # weights, BN statistics, LARS momenta, step
  different = [key for key in expected if not np.array_equal(expected[key], actual[key])]
  assert not different, f'{len(different)} tensors differ, e.g. {different[:3]}'


def _kill_and_resume(command, model_dir, log_path, kill_points):
  """Runs `command`, SIGKILLs it at each kill point, restarts; returns the exit code.

  A kill point is 'save' (while a checkpoint write is under way, else right after
  the next checkpoint appears) or a float (seconds after the first checkpoint).
  """
  killed_during_save = 0
  for point in kill_points:
    process = helpers.start(command, log_path)
    try:
      first = max(helpers.saved_steps(model_dir), default=0)
      assert helpers.wait_for(process, lambda: max(helpers.saved_steps(model_dir),
                                                   default=0) > first, 300), (
          log_path.read_text()[-3000:])
      if point == 'save':
        if helpers.wait_for(process, lambda: helpers.save_in_progress(model_dir), 60,
                            poll_secs=0.0005):
          killed_during_save += 1
      else:
        time.sleep(point)
    finally:
      helpers.kill(process)
    assert max(helpers.saved_steps(model_dir), default=0) < STEPS, 'killed too late'
  process = helpers.start(command, log_path)
  return _finish(process), killed_during_save


@pytest.mark.slow
def test_resume_with_the_image_folder_pipeline_is_bit_identical(image_folder, tmp_path):
  """In-process: a crash after step 2 (ckpt-3 and ckpt-4 lost), then the same call."""
  data = config_lib.DataConfig(dataset='image_folder', data_dir=str(image_folder),
                               train_split='train', eval_split='test', image_size=16,
                               use_blur=False)
  helpers.train_crash_and_resume(
      config_lib.replace(train_fixtures.tiny_config('', seed=7),
                         data=dataclasses.asdict(data)), tmp_path)


@pytest.mark.slow
def test_sigkill_during_checkpoint_write_then_restart_is_bit_identical(image_folder, tmp_path):
  reference_dir, resumed_dir = tmp_path / 'reference', tmp_path / 'resumed'
  reference = helpers.start(helpers.run_command(reference_dir, image_folder),
                            tmp_path / 'reference.log')
  try:
    code, during_save = _kill_and_resume(helpers.run_command(resumed_dir, image_folder),
                                         resumed_dir, tmp_path / 'resumed.log', ['save'])
    assert code == 0, (tmp_path / 'resumed.log').read_text()[-3000:]
    assert _finish(reference) == 0, (tmp_path / 'reference.log').read_text()[-3000:]
  finally:
    helpers.kill(reference)
  log = (tmp_path / 'resumed.log').read_text()
  assert 'Resuming from' in log
  _assert_bit_identical(reference_dir, resumed_dir)
  assert not glob.glob(str(resumed_dir / '*_temp*'))
  print(f'killed during a save: {during_save} of 1')


@pytest.mark.slow
def test_sigkill_at_several_moments_then_restart_is_bit_identical(image_folder, tmp_path):
  reference_dir, resumed_dir = tmp_path / 'reference', tmp_path / 'resumed'
  reference = helpers.start(helpers.run_command(reference_dir, image_folder),
                            tmp_path / 'reference.log')
  rng = random.Random(0)
  try:
    kill_points = [rng.uniform(0.0, 1.5), 'save', rng.uniform(0.0, 1.5), 'save']
    code, during_save = _kill_and_resume(
        helpers.run_command(resumed_dir, image_folder, '--keep_checkpoint_max=1'),
        resumed_dir, tmp_path / 'resumed.log', kill_points)
    assert code == 0, (tmp_path / 'resumed.log').read_text()[-3000:]
    assert _finish(reference) == 0, (tmp_path / 'reference.log').read_text()[-3000:]
  finally:
    helpers.kill(reference)
  assert during_save >= 1
  _assert_bit_identical(reference_dir, resumed_dir)


def test_sigkill_mid_write_leaves_the_previous_checkpoint_and_result(tmp_path):
  """A loop writing 32 MB checkpoints and 4 MB result.json files, killed mid-write."""
  directory = tmp_path / 'saves'
  directory.mkdir()
  log_path = tmp_path / 'save_loop.log'
  command = [sys.executable, str(pathlib.Path(helpers.__file__)), 'save_loop', str(directory)]
  rng = random.Random(1)
  during_save = 0
  saves_logged = lambda: sum(line.strip().isdigit()  # noqa: E731
                             for line in log_path.read_text().splitlines())
  for attempt in range(2):
    logged_before = saves_logged() if log_path.exists() else 0
    process = helpers.start(command, log_path)
    try:
      # This process wrote a checkpoint and a result.json (TF's start-up under load
      # can take longer than the wait for a save in progress below).
      assert helpers.wait_for(process, lambda: saves_logged() > logged_before, 120), (
          log_path.read_text()[-2000:])
      if attempt == 0:
        time.sleep(rng.uniform(0.0, 0.5))
      elif helpers.wait_for(process, lambda: helpers.save_in_progress(directory), 30,
                            poll_secs=0.0005):
        during_save += 1
    finally:
      helpers.kill(process)
    latest = checkpoints.latest_complete_checkpoint(str(directory))
    assert latest is not None
    reader = tf.train.load_checkpoint(latest)
    number = int(reader.get_tensor('global_step/.ATTRIBUTES/VARIABLE_VALUE'))
    assert latest.endswith(f'ckpt-{number}')
    weights = reader.get_tensor('weights/.ATTRIBUTES/VARIABLE_VALUE')
    assert weights.shape == (8 * 1024 * 1024,) and np.all(weights == number)
    result = json.loads((directory / 'result.json').read_text())  # Never half-written.
    assert result['step'] in (number - 1, number)
    checkpoints.remove_partial_saves(str(directory))
    assert not glob.glob(str(directory / '*_temp*'))
  assert during_save >= 1


def test_lost_newest_checkpoint_falls_back_to_the_previous(tmp_path):
  variable = tf.Variable(0.0)
  manager = tf.train.CheckpointManager(tf.train.Checkpoint(v=variable), str(tmp_path), 3)
  for number in (1, 2, 3):
    variable.assign(float(number))
    manager.save(checkpoint_number=number)
  os.remove(glob.glob(str(tmp_path / 'ckpt-3.data-*'))[0])  # Newest one damaged.
  assert tf.train.latest_checkpoint(str(tmp_path)).endswith('ckpt-3')
  assert checkpoints.latest_complete_checkpoint(str(tmp_path)) == str(tmp_path / 'ckpt-2')
  removed = checkpoints.remove_partial_saves(str(tmp_path))
  assert removed == [] and (tmp_path / 'ckpt-3.index').exists()
  os.remove(tmp_path / 'ckpt-2.index')  # Data without an index: removed.
  assert checkpoints.latest_complete_checkpoint(str(tmp_path)) == str(tmp_path / 'ckpt-1')
  assert len(checkpoints.remove_partial_saves(str(tmp_path))) == 1
  assert checkpoints.latest_complete_checkpoint(str(tmp_path / 'none')) is None


@pytest.mark.slow
@pytest.mark.parametrize('signal_number', [signal.SIGTERM, signal.SIGINT])
def test_sigterm_saves_a_checkpoint_and_exits_143(image_folder, tmp_path, signal_number):
  """SIGTERM: exit 143; SIGINT (Ctrl-C): the same, exit 130 (each ~60 s idle)."""
  model_dir = tmp_path / 'run'
  log_path = tmp_path / 'run.log'
  process = helpers.start(helpers.run_command(
      model_dir, image_folder, '--train_steps=100', '--checkpoint_steps=100',
      '--steps_per_loop=1'), log_path)
  try:
    assert helpers.wait_for(process, lambda: 'step 2/100' in log_path.read_text(), 300), (
        log_path.read_text()[-3000:])
    assert not helpers.saved_steps(model_dir)
    process.send_signal(signal_number)
    code = process.wait(timeout=60)
  finally:
    helpers.kill(process)
  log = log_path.read_text()
  assert code == (143 if signal_number == signal.SIGTERM else 130), log[-3000:]
  steps = helpers.saved_steps(model_dir)
  assert len(steps) == 1 and 2 <= steps[0] < 100, steps
  name = 'SIGTERM' if signal_number == signal.SIGTERM else 'Ctrl-C (SIGINT)'
  assert f'preempted: stopped by {name} at step {steps[0]}; checkpoint' in log
  assert 'Traceback' not in log and 'KeyboardInterrupt' not in log
  assert not glob.glob(str(model_dir / 'checkpoint.tmp*'))
  assert not glob.glob(str(model_dir / 'ckpt-*_temp*'))
  assert not (model_dir / 'result.json').exists()


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  batches = train_fixtures.global_batches(4, 8, 16)
  batches[2]['view1'][:] = np.nan  # The third step sees NaN images.
  config = train_fixtures.tiny_config(str(tmp_path), train_steps=4, checkpoint_steps=1,
                                      steps_per_loop=1)
  with pytest.raises(train_lib.NonFiniteLossError) as error:
    train_lib.train(config, strategy, input_fn=train_fixtures.make_input_fn(batches),
                    data_sizes=train_fixtures.Sizes(32, 8), verbose=False)
  message = str(error.value)
  assert message.startswith('training loss is nan at step 3;') and '\n' not in message
  assert helpers.saved_steps(tmp_path) == [1, 2]
  assert checkpoints.latest_complete_checkpoint(str(tmp_path)).endswith('ckpt-2')
  weights = helpers.checkpoint_tensors(str(tmp_path / 'ckpt-2'))
  assert all(np.all(np.isfinite(value)) for value in weights.values())


def test_input_position_is_checkpointed_on_one_device(tmp_path):
  """OneDeviceStrategy (the default): the restored iterator continues where it was."""
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')

  def input_fn(context):
    del context
    return tf.data.Dataset.range(100).shuffle(10, seed=1).batch(2)

  iterator = train_lib.make_iterator(strategy, input_fn)
  trackables = checkpoints.iterator_trackables(iterator)
  assert list(trackables) == ['replica_0']
  checkpoint = tf.train.Checkpoint(**trackables)
  next(iterator)
  path = checkpoint.save(str(tmp_path / 'it'))
  expected = [next(iterator).numpy().tolist() for _ in range(3)]
  checkpoint.restore(path)
  assert [next(iterator).numpy().tolist() for _ in range(3)] == expected


def test_eval_timeout_stops_waiting_for_new_checkpoints(tmp_path, capsys):
  config = train_fixtures.tiny_config(str(tmp_path), train_steps=6, eval_timeout_secs=0.5)
  model = build_model(config, train_fixtures.NUM_CLASSES)
  step = tf.Variable(2, dtype=tf.int64)
  tf.train.CheckpointManager(tf.train.Checkpoint(model=model, global_step=step),
                             str(tmp_path), 1).save(checkpoint_number=2)
  input_fn, _, _ = train_fixtures.eval_input_fn(8, 8, 16)
  start = time.monotonic()
  result = evaluate_lib.evaluate_continuously(
      config, tf.distribute.OneDeviceStrategy('/cpu:0'), min_interval_secs=0.1,
      data_sizes=train_fixtures.Sizes(48, 8), input_fn=input_fn)
  assert result['global_step'] == 2 and time.monotonic() - start < 60
  assert 'no new checkpoint for 0 s; stopped at step 2 of 6' in capsys.readouterr().err
  with pytest.raises(ValueError, match='--eval_timeout_secs=-1.0 must be >= 0'):
    config_lib.validate(config_lib.replace(config, train={'eval_timeout_secs': -1.0}))


def test_grayscale_and_rgba_images_are_converted_to_rgb(tmp_path):
  from tf_simclr import data as data_lib  # pylint: disable=g-import-not-at-top
  for mode in ('L', 'RGBA'):
    root = helpers.write_image_folder(tmp_path / mode, per_class=2, size=8, mode=mode,
                                      splits=('test',))
    data_config = config_lib.DataConfig(dataset='image_folder', data_dir=str(root),
                                        eval_split='test', image_size=8)
    input_fn = data_lib.build_input_fn(data_config, split='test', is_training=False,
                                       train_mode='finetune', global_batch_size=4)
    images = next(iter(input_fn(None)))['image'].numpy()
    assert images.shape == (4, 8, 8, 3), mode
    if mode == 'L':  # Gray replicated to 3 equal channels.
      np.testing.assert_array_equal(images[..., 0], images[..., 2])


# --- Bad input through the CLI: one line `error: ...`, exit 2, model_dir untouched. ---


def _write_run_dir(model_dir: pathlib.Path, with_flags: bool = True) -> None:
  """A model_dir holding a ResNet-18 (proj_out_dim 16) checkpoint and flags.json."""
  config = train_fixtures.tiny_config(str(model_dir))
  model = build_model(config, 2)
  tf.train.CheckpointManager(tf.train.Checkpoint(model=model), str(model_dir), 1).save(
      checkpoint_number=3)
  if with_flags:
    run_dir.write_json_atomic(str(model_dir / 'flags.json'),
                              {'resnet_depth': 18, 'proj_out_dim': 16,
                               'dataset': 'image_folder', 'image_size': 16,
                               'train_batch_size': 8,
                               'model_dir': str(model_dir)})


def _bad_input_cases(root: pathlib.Path, image_folder: pathlib.Path):
  """(name, command, message in the error line, model_dir that must stay as it was)."""
  run = lambda name, *extra, data=image_folder: helpers.run_command(  # noqa: E731
      root / name, data, *extra)
  empty = root / 'empty_data'
  (empty / 'train' / 'a').mkdir(parents=True)
  (empty / 'test' / 'a').mkdir(parents=True)
  garbage = root / 'garbage_data'
  for split in ('train', 'test'):
    (garbage / split / 'a').mkdir(parents=True)
    (garbage / split / 'a' / 'x.jpg').write_bytes(b'not an image')
  hub = [sys.executable, '-m', 'hub_export', f'--model_dir={root / "other_arch"}',
         f'--export_dir={root / "other_arch"}']
  return [
      ('unknown_flag', run('unknown_flag', '--no_such_flag=1'), 'no_such_flag'),
      ('contradictory', run('contradictory', '--fine_tune_after_block=2'),
       '--fine_tune_after_block=2 only applies to --train_mode=finetune'),
      ('not_divisible', run('not_divisible', '--num_cpu_devices=2', '--train_batch_size=3'),
       '--train_batch_size=3 is not divisible by the 2 replicas'),
      ('other_arch', run('other_arch', '--resnet_depth=34'),
       'started with --resnet_depth=18 (now 34); these flags cannot change'),
      # Resuming with another batch size: refused before flags.json is replaced.
      ('changed_batch', run('changed_batch', '--train_batch_size=16', '--train_steps=20'),
       '--train_batch_size=8 (now 16); these flags cannot change when a run resumes'),
      ('empty_folder', run('empty_folder', data=empty), 'no readable image files'),
      ('unreadable_folder', run('unreadable_folder', data=garbage),
       'no readable image files'),
      ('eval_timeout', run('eval_timeout', '--eval_timeout_secs=-1'),
       '--eval_timeout_secs=-1.0 must be >= 0'),
      ('hub_export_exists', hub, 'already exists; pass --overwrite'),
  ]


def _slow_bad_input_cases(root: pathlib.Path, image_folder: pathlib.Path):
  """Cases that fail only after the model is built (about 2x the cost)."""
  return [
      ('own_ckpt_no_flags', helpers.run_command(root / 'own_ckpt_no_flags', image_folder,
                                                '--proj_out_dim=32'),
       'holds checkpoint'),
      ('checkpoint_mismatch', helpers.run_command(
          root / 'checkpoint_mismatch', image_folder, '--proj_out_dim=32',
          f'--checkpoint={root / "own_ckpt_no_flags"}'), 'does not match this model'),
  ]


def _snapshot(directory: pathlib.Path) -> dict[str, bytes]:
  if not directory.exists():
    return {}
  return {path.name: path.read_bytes() for path in directory.iterdir() if path.is_file()}


def _run_bad_inputs(cases, root):
  snapshots = {name: _snapshot(root / name) for name, _, _ in cases}
  processes = []
  try:
    for _, command, _ in cases:  # All at once: TF start-up dominates.
      processes.append(subprocess.Popen(command, cwd=helpers.REPO_ROOT, text=True,
                                        env=helpers.environment(), stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE))
    for (name, _, message), process in zip(cases, processes):
      _, stderr = process.communicate(timeout=300)
      assert process.returncode == 2, (name, stderr[-2000:])
      lines = [line for line in stderr.splitlines() if line.startswith('error: ')]
      assert len(lines) == 1 and message in lines[0], (name, stderr[-2000:])
      assert 'Traceback' not in stderr, name
      assert _snapshot(root / name) == snapshots[name], name  # Nothing added or changed.
  finally:
    for process in processes:
      helpers.kill(process)


@pytest.mark.slow
def test_bad_input_is_one_line_exit_2_and_leaves_model_dir_alone(image_folder, tmp_path):
  _write_run_dir(tmp_path / 'other_arch')
  _write_run_dir(tmp_path / 'changed_batch')
  _run_bad_inputs(_bad_input_cases(tmp_path, image_folder), tmp_path)


@pytest.mark.slow
def test_bad_checkpoint_shapes_are_one_line_exit_2(image_folder, tmp_path):
  _write_run_dir(tmp_path / 'own_ckpt_no_flags', with_flags=False)
  _run_bad_inputs(_slow_bad_input_cases(tmp_path, image_folder), tmp_path)
  assert not (tmp_path / 'checkpoint_mismatch').exists()


@pytest.mark.slow
@pytest.mark.parametrize('failure', ['killed', 'hung'])
def test_multi_worker_run_fails_within_the_collective_timeout_when_a_worker_dies(
    image_folder, tmp_path, failure):
  """2 local MultiWorkerMirroredStrategy workers; worker 1 is SIGKILLed or SIGSTOPped."""
  from tests.test_distributed_train import _free_ports  # pylint: disable=g-import-not-at-top
  cluster = {'worker': [f'127.0.0.1:{port}' for port in _free_ports(2)]}
  model_dir = tmp_path / 'run'
  command = helpers.run_command(model_dir, image_folder, '--train_steps=40',
                                '--collective_timeout_secs=20', '--steps_per_loop=1')
  processes = []
  try:
    for index in range(2):
      env = dict(helpers.environment(), TF_CONFIG=json.dumps(
          {'cluster': cluster, 'task': {'type': 'worker', 'index': index}}))
      log = open(tmp_path / f'worker{index}.log', 'w')
      processes.append(subprocess.Popen(command, cwd=helpers.REPO_ROOT, env=env,
                                        stdout=log, stderr=subprocess.STDOUT))
    assert helpers.wait_for(processes[0], lambda: len(helpers.saved_steps(model_dir)) >= 2,
                            300), (tmp_path / 'worker0.log').read_text()[-3000:]
    processes[1].send_signal(signal.SIGKILL if failure == 'killed' else signal.SIGSTOP)
    killed_at = time.monotonic()
    code = processes[0].wait(timeout=120)
    waited = time.monotonic() - killed_at
  finally:
    for process in processes:
      helpers.kill(process)
  log = (tmp_path / 'worker0.log').read_text()
  assert code == 4, log[-3000:]
  errors = [line for line in log.splitlines() if line.startswith('error: ')]
  assert len(errors) == 1 and 'restart all workers' in errors[0], log[-3000:]
  assert waited < 90, waited
  print(f'worker 0 stopped {waited:.0f} s after worker 1 {failure}: {errors[0][:220]}')


# --- Unreadable checkpoints, empty splits, unusable model_dir: one line each. ---


def test_unreadable_checkpoints_are_one_line_and_resume_falls_back(tmp_path):
  variable = tf.Variable(tf.zeros([1000]))
  checkpoint = tf.train.Checkpoint(v=variable)
  saver = checkpoints.CheckpointSaver(checkpoint, str(tmp_path), 5,
                                      tf.distribute.OneDeviceStrategy('/cpu:0'))
  for number in (1, 2, 3):
    variable.assign(tf.fill([1000], float(number)))
    saver.save(number)
  data = glob.glob(str(tmp_path / 'ckpt-3.data-*'))[0]
  with open(data, 'r+b') as data_file:
    data_file.truncate(1000)  # ckpt-3 truncated: its index still reads.
  # Resuming falls back to the newest readable checkpoint and says so.
  path, notes = saver.restore_latest()
  assert path == str(tmp_path / 'ckpt-2') and float(variable[0]) == 2.0
  assert len(notes) == 1 and 'ckpt-3 is truncated or corrupt' in notes[0], notes
  # --checkpoint=<truncated> / <garbage>: one line, not IndexError / OpError.
  with pytest.raises(checkpoints.UnreadableCheckpointError, match='truncated or corrupt'):
    checkpoints.restore_or_explain(checkpoint, str(tmp_path / 'ckpt-3'))
  (tmp_path / 'garbage.index').write_bytes(b'not a checkpoint' * 4)
  with pytest.raises(ValueError, match='garbage is not a readable checkpoint') as error:
    checkpoints.resolve_checkpoint(str(tmp_path / 'garbage'))
  assert '\n' not in str(error.value)
  for number in (1, 2):
    with open(glob.glob(str(tmp_path / f'ckpt-{number}.data-*'))[0], 'r+b') as data_file:
      data_file.truncate(1000)
  with pytest.raises(ValueError, match='no readable checkpoint'):
    saver.restore_latest()


def test_empty_or_unused_splits(tmp_path):
  """Empty splits fail on one line naming the flag; an unused eval split is not read."""
  root = helpers.write_image_folder(tmp_path / 'data', per_class=2, size=8)
  data = config_lib.DataConfig(dataset='image_folder', data_dir=str(root),
                               train_split='train', eval_split='test', image_size=8)
  config = config_lib.replace(train_fixtures.tiny_config(str(tmp_path / 'run')),
                              data=dataclasses.asdict(data))
  assert data_lib.dataset_info(config).num_train_examples == 4
  with pytest.raises(ValueError, match=r'--train_split=train\[:0\] selects no examples'):
    data_lib.dataset_info(config_lib.replace(config, data={'train_split': 'train[:0]'}))
  evaluating = config_lib.replace(config, train={'mode': 'train_then_eval'},
                                  data={'eval_split': 'test[:0]'})
  with pytest.raises(ValueError, match=r'--eval_split=test\[:0\] selects no examples'):
    data_lib.dataset_info(evaluating)
  # --mode=train never reads the eval split: the default 'validation' need not exist.
  training = config_lib.replace(config, train={'mode': 'train'},
                                data={'eval_split': 'validation'})
  assert data_lib.dataset_info(training).num_eval_examples == 0
  with pytest.raises(ValueError, match="has no split 'validation'"):
    data_lib.dataset_info(config_lib.replace(training, train={'mode': 'train_then_eval'}))


def test_unusable_model_dir_is_one_line(tmp_path, capsys):
  import run  # pylint: disable=g-import-not-at-top
  a_file = tmp_path / 'a_file'
  a_file.write_text('mine')
  for model_dir, message in ((a_file, 'is a file'),
                             (a_file / 'run', f'is under {a_file}, which is a file')):
    with pytest.raises(SystemExit) as exit_:
      run._check_model_dir(str(model_dir))  # pylint: disable=protected-access
    assert exit_.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith('error: --model_dir=') and message in error, error
  run._check_model_dir(str(tmp_path / 'new' / 'run'))  # pylint: disable=protected-access
  assert sorted(os.listdir(tmp_path)) == ['a_file']  # nothing created


def test_home_paths_are_expanded_and_help_lists_our_flags():
  """`--model_dir=~/x` is $HOME/x (not a folder named '~'); `run.py --help` shows the
  official flags and ours (absl shows only the main module's key flags)."""
  from absl import flags as absl_flags  # pylint: disable=g-import-not-at-top

  import flags as simclr_flags  # pylint: disable=g-import-not-at-top
  import run  # pylint: disable=g-import-not-at-top
  flag_values = absl_flags.FlagValues()
  simclr_flags.define_flags(flag_values)
  flag_values(['run.py', '--model_dir=~/runs/a', '--data_dir=~/data', '--checkpoint=~/c/ckpt-1'])
  config = simclr_flags.config_from_flags(flag_values)
  home = os.path.expanduser('~')
  assert config.train.model_dir == f'{home}/runs/a'
  assert config.data.data_dir == f'{home}/data'
  assert config.train.checkpoint == f'{home}/c/ckpt-1'
  key_flags = {flag.name for flag in absl_flags.FLAGS.get_key_flags_for_module(run)}
  assert set(simclr_flags.all_flag_names()) <= key_flags


@pytest.mark.slow
def test_all_training_images_corrupt_is_one_line(tmp_path):
  """Files with a PNG signature and end marker and garbage between pass the folder scan,
  then all fail to decode: one ValueError line instead of a 138-line OutOfRangeError
  (~30 s idle)."""
  root = tmp_path / 'data'
  for split in ('train', 'test'):
    for class_name in ('a', 'b'):
      (root / split / class_name).mkdir(parents=True)
      for index in range(4):
        (root / split / class_name / f'{index}.png').write_bytes(
            b'\x89PNG\r\n\x1a\n' + b'garbage' * 20 + b'IEND\xaeB`\x82')
  data = config_lib.DataConfig(dataset='image_folder', data_dir=str(root),
                               train_split='train', eval_split='test', image_size=16,
                               use_blur=False)
  config = config_lib.replace(train_fixtures.tiny_config(str(tmp_path / 'run')),
                              data=dataclasses.asdict(data))
  with pytest.raises(ValueError, match='the training input yielded no images at step 0') as error:
    train_lib.train(config, tf.distribute.OneDeviceStrategy('/cpu:0'), verbose=False)
  assert '\n' not in str(error.value)
