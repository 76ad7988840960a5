"""File system errors of real runs: a full disk, a read-only --model_dir.

The disks are tmpfs mounts made by the test (a full disk is a tmpfs shrunk to what
it holds; a read-only one is mounted `ro`, or bind-mounted over the model_dir and
remounted `ro` while the run goes on). Mounting needs root with CAP_SYS_ADMIN: the
tests skip, saying why, where that is not allowed. Every mount is unmounted in a
`finally`.
"""

import contextlib
import glob
import os
import pathlib
import subprocess
import sys

import pytest
import tensorflow as tf

from tests import reliability_helpers as helpers
from tf_simclr import checkpoints

RUN_TIMEOUT_SECS = 400


def _mount(*arguments: str) -> None:
  """`mount ARGUMENTS`; skips the test when mounting is not permitted here."""
  try:
    process = subprocess.run(['mount', *arguments], capture_output=True, text=True,
                             timeout=60)
  except FileNotFoundError:
    pytest.skip('no mount command here')
  if process.returncode != 0:
    pytest.skip(f'cannot mount here (needs root with CAP_SYS_ADMIN): '
                f'{" ".join(process.stderr.split())}')


def _unmount(mount_point: pathlib.Path) -> None:
  if subprocess.run(['umount', str(mount_point)], capture_output=True).returncode != 0:
    subprocess.run(['umount', '-l', str(mount_point)], capture_output=True)  # Still busy.


@contextlib.contextmanager
def _tmpfs(mount_point: pathlib.Path, options: str):
  mount_point.mkdir(parents=True, exist_ok=True)
  _mount('-t', 'tmpfs', '-o', options, 'tmpfs', str(mount_point))
  try:
    yield mount_point
  finally:
    _unmount(mount_point)


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory):
  return helpers.write_image_folder(tmp_path_factory.mktemp('data') / 'folder')


def _error_lines(log: str) -> list[str]:
  return [line for line in log.splitlines() if line.startswith('error: ')]


def _run_until_first_checkpoint_then(command, model_dir, log_path, action) -> int:
  """Starts `command`, calls `action()` once its first checkpoint is complete, and
  returns the exit code."""
  process = helpers.start(command, log_path)
  try:
    assert helpers.wait_for(
        process, lambda: checkpoints.latest_complete_checkpoint(str(model_dir)) is not None,
        300, poll_secs=0.05), log_path.read_text()[-3000:]
    action()
    return process.wait(timeout=RUN_TIMEOUT_SECS)
  finally:
    helpers.kill(process)


def _assert_resumes(command, latest, log_path) -> None:
  """The same command again resumes from `latest` and finishes."""
  process = helpers.start(command, log_path)
  try:
    code = process.wait(timeout=RUN_TIMEOUT_SECS)
  finally:
    helpers.kill(process)
  log = log_path.read_text()
  assert code == 0, log[-3000:]
  assert f'Resuming from {latest}.' in log, log[-3000:]


def test_unwritable_model_dir_is_refused_before_anything_is_written(tmp_path, capsys):
  """A model_dir on a read-only file system (as root, the permission bits would not
  tell) or a full disk: exit 2, one line, checked by writing a test file through
  tf.io.gfile and deleting it."""
  import run  # pylint: disable=g-import-not-at-top
  with _tmpfs(tmp_path / 'ro', 'ro,size=1m') as read_only:
    for model_dir in (read_only, read_only / 'new' / 'run'):
      with pytest.raises(SystemExit) as exit_:
        run._check_model_dir(str(model_dir))  # pylint: disable=protected-access
      assert exit_.value.code == 2
      error = capsys.readouterr().err.strip()
      assert error == (f'error: --model_dir={model_dir}: {read_only} is on a read-only file '
                       'system; pass a folder you can write to.'), error
    assert os.listdir(read_only) == []
  with _tmpfs(tmp_path / 'full', 'size=64k') as full:  # A full disk: the test file is
    (full / 'filler').write_bytes(b'x' * 64 * 1024)  # made, cannot be written, and is
    with pytest.raises(SystemExit) as exit_:  # deleted.
      run._check_model_dir(str(full / 'run'))  # pylint: disable=protected-access
    assert exit_.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error == (f'error: --model_dir={full / "run"}: {full} is on a full disk; free '
                     'disk space or pass another folder.'), error
    assert os.listdir(full) == ['filler']
  with _tmpfs(tmp_path / 'rw', 'size=1m') as writable:  # The same check passes, and
    run._check_model_dir(str(writable / 'run'))  # pylint: disable=protected-access
    assert os.listdir(writable) == []  # its test file is gone.


def test_file_system_errors_are_one_line_naming_the_cause(tmp_path):
  """The message of run.py's file system error handler, for errors raised by real
  writes to a full and to a read-only disk (TF's and Python's), and for others."""
  import run  # pylint: disable=g-import-not-at-top
  describe = run._describe_io_error  # pylint: disable=protected-access

  def error_of(function):
    with pytest.raises((OSError, tf.errors.OpError)) as caught:
      function()
    return caught.value

  with _tmpfs(tmp_path / 'full', 'size=64k') as full:
    model_dir = str(full / 'run')

    def write_with_gfile():
      with tf.io.gfile.GFile(os.path.join(model_dir, 'big'), 'w') as big:
        big.write('x' * 200_000)

    def save_checkpoint():  # An eager op: TF adds `{{function_node ...}}` and `[Op:...]`.
      checkpoint = tf.train.Checkpoint(weights=tf.Variable(tf.zeros([100_000])))
      tf.train.CheckpointManager(checkpoint, model_dir, 2).save(checkpoint_number=2)

    tf.io.gfile.makedirs(model_dir)
    gfile_error = error_of(write_with_gfile)
    tf.io.gfile.remove(os.path.join(model_dir, 'big'))
    save_error = error_of(save_checkpoint)
    checkpoints.remove_partial_saves(model_dir)
    python_error = error_of(lambda: (full / 'big').write_bytes(b'x' * 200_000))
  latest = f'{model_dir}/ckpt-3'
  assert describe(gfile_error, model_dir, latest) == (
      f'disk full in --model_dir={model_dir} (ResourceExhaustedError: {model_dir}/big; No '
      f'space left on device); the last checkpoint {latest} is kept: free disk space (or '
      'pass another --model_dir) and run the same command to resume.')
  message = describe(save_error, model_dir, None)
  assert message.startswith(f'disk full in --model_dir={model_dir} (ResourceExhaustedError: '
                            f'{model_dir}/ckpt-2_temp/part-00000-of-00001.data-'), message
  assert message.endswith('; No space left on device); free disk space (or pass another '
                          '--model_dir) and run again.'), message
  assert 'function_node' in str(save_error) and '[Op:SaveV2]' in str(save_error)
  assert 'function_node' not in message and '[Op:' not in message
  assert describe(python_error, model_dir, None) == (
      'disk full (OSError: [Errno 28] No space left on device); free disk space (or pass '
      'another --model_dir) and run again.')

  with _tmpfs(tmp_path / 'ro', 'ro,size=64k') as read_only:
    model_dir = str(read_only / 'run')
    read_only_error = error_of(lambda: tf.io.gfile.makedirs(model_dir))
  assert describe(read_only_error, model_dir, latest) == (
      f'read-only file system in --model_dir={model_dir} (PermissionDeniedError: '
      f'{model_dir}; Read-only file system); the last checkpoint {latest} is kept: make '
      '--model_dir writable and run the same command to resume.')
  other = error_of(lambda: tf.io.gfile.GFile(str(tmp_path / 'missing')).read())
  assert describe(other, model_dir, None) == (
      f'NotFoundError: {tmp_path / "missing"}; No such file or directory; fix the cause and '
      'run again.')


def _assert_one_line_exit_1(code: int, log: str, model_dir, prefix: str,
                            suffix: str) -> str:
  """Checks exit 1, no traceback, one error line `prefix ... the last checkpoint C suffix`
  with C the newest complete checkpoint (before step 5); returns C."""
  assert code == 1, log[-3000:]
  assert 'Traceback' not in log, log[-3000:]
  lines = _error_lines(log)
  latest = checkpoints.latest_complete_checkpoint(str(model_dir))
  assert latest is not None and checkpoints.checkpoint_step(latest) < 5
  assert len(lines) == 1 and lines[0].startswith(prefix), lines
  assert lines[0].endswith(f'the last checkpoint {latest} {suffix}'), lines
  return latest


@pytest.mark.slow
def test_disk_full_during_training_is_one_line_exit_1_and_resumes(image_folder, tmp_path):
  """The disk fills up while checkpoints are written: one `error: disk full ...` line,
  exit 1, the previous checkpoint stays the latest one (no half-written save is left),
  and the same command resumes from it once there is space (~90 s idle)."""
  with _tmpfs(tmp_path / 'disk', 'size=1g') as disk:
    model_dir = disk / 'run'
    command = helpers.run_command(model_dir, image_folder, '--train_steps=5')

    def fill_the_disk():  # Shrink the disk to what it holds plus 1 MiB.
      stat = os.statvfs(disk)
      used_kib = (stat.f_blocks - stat.f_bfree) * stat.f_frsize // 1024
      _mount('-o', f'remount,size={used_kib + 1024}k', str(disk))

    log_path = tmp_path / 'full.log'
    code = _run_until_first_checkpoint_then(command, model_dir, log_path, fill_the_disk)
    latest = _assert_one_line_exit_1(
        code, log_path.read_text(), model_dir, f'error: disk full in --model_dir={model_dir} (',
        'is kept: free disk space (or pass another --model_dir) and run the same command to '
        'resume.')
    # The checkpoint state file names that complete checkpoint; no partial save is left.
    assert tf.train.get_checkpoint_state(str(model_dir)).model_checkpoint_path == latest
    assert not glob.glob(str(model_dir / '*_temp*'))
    assert not glob.glob(str(model_dir / 'checkpoint.tmp*'))

    _mount('-o', 'remount,size=1g', str(disk))  # Space freed.
    _assert_resumes(command, latest, tmp_path / 'resumed.log')
    assert max(helpers.saved_steps(model_dir)) == 5


@pytest.mark.slow
def test_model_dir_made_read_only_during_training_is_one_line_exit_1(image_folder,
                                                                       tmp_path):
  """The model_dir turns read-only mid-run (a read-only bind mount over it, as when a
  disk is remounted read-only after errors): one line, exit 1, the last checkpoint
  kept; once writable again the same command resumes from it (~90 s idle)."""
  with _tmpfs(tmp_path / 'disk', 'size=1g') as disk:
    model_dir = disk / 'run'
    command = helpers.run_command(model_dir, image_folder, '--train_steps=5')
    bound = []

    def make_read_only():
      _mount('--bind', str(model_dir), str(model_dir))
      bound.append(model_dir)
      _mount('-o', 'remount,ro,bind', str(model_dir))

    try:
      log_path = tmp_path / 'read_only.log'
      code = _run_until_first_checkpoint_then(command, model_dir, log_path, make_read_only)
      latest = _assert_one_line_exit_1(
          code, log_path.read_text(), model_dir,
          f'error: read-only file system in --model_dir={model_dir} (',
          'is kept: make --model_dir writable and run the same command to resume.')
    finally:
      for mount_point in bound:
        _unmount(mount_point)
    _assert_resumes(command, latest, tmp_path / 'resumed.log')
    assert max(helpers.saved_steps(model_dir)) == 5


@pytest.mark.slow
def test_no_cuinit_error_line_without_a_gpu_driver(tmp_path):
  """On a machine without an NVIDIA driver, TF's first device lookup logs `E0000 ...
  failed call to cuInit: ...`; run.py, hub_export and tf_simclr.embed drop that line
  (and only it). With TF_CPP_MIN_LOG_LEVEL=0 it stays, which shows that TF does print
  it here. hub_export and embed are called with bad input, then a TF op runs: it would
  log the line had their `main` not set the devices up (~15 s idle: four TF start-ups)."""
  from tf_simclr import cuda_quiet  # pylint: disable=g-import-not-at-top
  if cuda_quiet.nvidia_driver_present():
    pytest.skip('an NVIDIA driver is installed: TF prints no cuInit line to drop')
  # The CPU is split into 2 devices (device set-up), then the batch size is refused.
  run_py = [sys.executable, str(helpers.REPO_ROOT / 'run.py'), '--num_cpu_devices=2',
            '--train_batch_size=3', f'--model_dir={tmp_path / "run"}']
  run_error = 'not divisible by the 2 replicas'

  def then_a_tf_op(module, *argv):
    return [sys.executable, '-c', f'import sys; from {module} import main; code = main('
            f'{list(argv)!r}); import tensorflow as tf; tf.constant(1.0).numpy(); '
            'sys.exit(code)']

  missing = str(tmp_path / 'none')
  commands = {
      'run.py': (run_py, run_error),
      'run.py, TF_CPP_MIN_LOG_LEVEL=0': (run_py, run_error),
      'hub_export': (then_a_tf_op('hub_export.__main__', f'--model_dir={missing}',
                                  f'--export_dir={tmp_path / "export"}'), missing),
      'embed': (then_a_tf_op('tf_simclr.embed', f'--export_dir={missing}',
                             f'--images={tmp_path}', f'--out={tmp_path / "out"}'),
                'no image files'),
  }
  processes = {}
  try:
    for name, (command, _) in commands.items():
      env = dict(helpers.environment(),
                 TF_CPP_MIN_LOG_LEVEL='0' if name.endswith('=0') else '1')
      processes[name] = subprocess.Popen(command, cwd=helpers.REPO_ROOT, env=env, text=True,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for name, process in processes.items():
      _, stderr = process.communicate(timeout=300)
      assert process.returncode == 2, (name, stderr[-2000:])
      lines = _error_lines(stderr)
      assert len(lines) == 1 and commands[name][1] in lines[0], (name, stderr[-2000:])
      assert ('failed call to cuInit' in stderr) == name.endswith('=0'), (name, stderr[-2000:])
  finally:
    for process in processes.values():
      helpers.kill(process)
