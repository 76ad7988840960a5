"""tf_simclr command line: pretrain, finetune and evaluate SimCLR models.

  python run.py --mode=train_then_eval --train_mode=pretrain --dataset=cifar10 \
      --image_size=32 --resnet_depth=18 --model_dir=/tmp/simclr ...

The flags are those of google-research/simclr tf2/run.py (see `flags/`). Exit codes:
0 done; 2 bad input (flags, data, checkpoints, an unusable --model_dir, or a file
system error before anything was trained: one line `error: ...` on stderr, and nothing
left in --model_dir by this run); 1 a file system error (e.g. disk full) after this run
saved a checkpoint (one line; that checkpoint is kept); 3 the training loss became
NaN/Inf (the last good checkpoint is kept); 4 a multi-worker collective failed or timed
out (--collective_timeout_secs: a worker died; restart all workers to resume); 130
stopped by Ctrl-C and 143 by SIGTERM, after saving a checkpoint when training (run the
same command again to resume).
"""

import errno
import os
import re
import signal
import sys
import uuid

# TensorFlow's C++ INFO lines (e.g. 100 collective lines per run with
# --num_cpu_devices=2) off unless asked for; warnings and errors still show.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')

import tf_simclr  # First: turns on the oneDNN CPU kernels before TensorFlow loads.
from absl import app
from absl import flags as absl_flags

import flags as simclr_flags
from tf_simclr import config as config_lib
from tf_simclr import cuda_quiet
from tf_simclr import run_dir
from tf_simclr import strategy as strategy_lib

# `run.py --help` lists our flags and the official ones, not only absl's.
for _module in simclr_flags.TOPIC_MODULES:
  absl_flags.adopt_module_key_flags(_module)

EXIT_BAD_INPUT = 2
EXIT_NON_FINITE_LOSS = 3
EXIT_WORKER_LOST = 4
EXIT_PREEMPTED = 143  # 128 + SIGTERM, as if killed by it, but with a checkpoint saved.
EXIT_INTERRUPTED = 130  # 128 + SIGINT (Ctrl-C); a checkpoint saved when training.
EXIT_RUNTIME_ERROR = 1  # A file system error after this run wrote a checkpoint.


def fail(message: str, exit_code: int = EXIT_BAD_INPUT) -> None:
  """Prints one line `error: message` on stderr and exits with `exit_code`."""
  print('error: ' + ' '.join(str(message).split()), file=sys.stderr, flush=True)
  sys.exit(exit_code)


def _remove_new_files(model_dir: str, before: set[str], created: bool) -> None:
  """Removes the files this run added to `model_dir`, and the folder itself when this
  run `created` it and it is empty now (gfile.remove deletes files only)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if not tf.io.gfile.isdir(model_dir):
    return
  for name in set(run_dir.list_names(model_dir)) - before:
    path = os.path.join(model_dir, name)
    if not tf.io.gfile.isdir(path):
      tf.io.gfile.remove(path)
  if created and not run_dir.list_names(model_dir):
    tf.io.gfile.rmtree(model_dir)  # Empty: removes the folder alone.


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing with a bad value turned into one line and exit code 2.

  Then TF's devices are set up, without its `failed call to cuInit` line when there
  is no GPU: here, because `app.run` calls TF's own device lookups (registered with
  `app.call_after_init`) between parsing the flags and `main`.
  """
  try:
    remaining = absl_flags.FLAGS(argv)
  except absl_flags.Error as error:
    fail(str(error))
  cuda_quiet.initialize_devices()
  return remaining


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    fail(f'unexpected arguments {argv[1:]}; flags look like --name=value.')
  try:
    # Validated once: the replica count's checks wait for the strategy.
    config = simclr_flags.config_from_flags(num_replicas=None)
    # Before any other TF op: logical CPUs and multi-worker set-up need it.
    strategy = strategy_lib.create_strategy(config.infra)
    config_lib.validate_replicas(config, strategy.num_replicas_in_sync)
  except (ValueError, FileNotFoundError) as error:
    fail(str(error))

  # Imported after the strategy exists (they touch TF at import).
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tf_simclr import checkpoints  # pylint: disable=g-import-not-at-top
  from tf_simclr import evaluate as evaluate_lib  # pylint: disable=g-import-not-at-top
  from tf_simclr import data as data_lib  # pylint: disable=g-import-not-at-top
  from tf_simclr import train as train_lib  # pylint: disable=g-import-not-at-top

  from tf_simclr import official_import  # pylint: disable=g-import-not-at-top

  mode = config.train.mode
  model_dir = config.train.model_dir
  chief = strategy_lib.is_chief(strategy)
  if mode != 'eval':
    _check_model_dir(model_dir)
  model_dir_existed = tf.io.gfile.isdir(model_dir)
  files_before = set(run_dir.list_names(model_dir))
  flags_path = run_dir.flags_json_path(model_dir)
  flags_before = run_dir.read_text(flags_path)
  flagfile_path = run_dir.flags_txt_path(model_dir)
  flagfile_before = run_dir.read_text(flagfile_path)
  checkpoint_before = checkpoints.latest_complete_checkpoint(model_dir)

  def nothing_trained() -> bool:
    return (mode != 'eval' and chief and
            checkpoints.latest_complete_checkpoint(model_dir) == checkpoint_before)

  def undo_failed_start() -> None:
    """Nothing trained: leave model_dir as it was (no flags.json of a failed start)."""
    if not nothing_trained():
      return
    try:
      _remove_new_files(model_dir, files_before, created=not model_dir_existed)
      if flags_before is not None and run_dir.read_text(flags_path) != flags_before:
        run_dir.write_text_atomic(flags_path, flags_before)
      if flagfile_before is not None and run_dir.read_text(flagfile_path) != flagfile_before:
        run_dir.write_text_atomic(flagfile_path, flagfile_before)
    except (OSError, tf.errors.OpError):
      pass  # The cause itself (e.g. a read-only or full disk): nothing more to undo.

  def fail_on_io_error(error: BaseException) -> None:
    """One line for a file system error (disk full, permissions, unreadable file)."""
    trained = not nothing_trained()
    if chief and mode != 'eval':
      try:  # A save cut short (e.g. by a full disk) leaves ckpt-N_temp/: free its space.
        checkpoints.remove_partial_saves(model_dir)
      except (OSError, tf.errors.OpError):
        pass  # A read-only or vanished model_dir: the next start deletes them.
    undo_failed_start()
    try:
      latest = checkpoints.latest_complete_checkpoint(model_dir) if chief else None
    except (OSError, tf.errors.OpError):
      latest = None
    fail(_describe_io_error(error, model_dir, latest), EXIT_RUNTIME_ERROR if trained else
         EXIT_BAD_INPUT)

  try:
    official_source = None
    if config.train.checkpoint:
      # A published google-research/simclr model: its architecture replaces the
      # structure flags the user did not set (one that contradicts it is an error).
      official_source = official_import.find_source(config.train.checkpoint)
    if official_source is not None:
      architecture = official_import.read_architecture(official_source)
      if strategy_lib.is_chief(strategy):
        print(f'--checkpoint={config.train.checkpoint}: official SimCLR tf2 '
              f'{official_source.kind.replace("_", " ")}: {architecture.describe()}', flush=True)
      config = official_import.config_for_architecture(
          config, architecture, simclr_flags.explicit_flag_names(), config.train.checkpoint)
      config_lib.validate_model(config.model)  # Its structure, e.g. with --ft_proj_selector.
    data_sizes = data_lib.dataset_info(config)
    if not data_sizes.labelled:  # Pretraining only: what needs labels is off or refused.
      from tf_simclr import unlabelled  # pylint: disable=g-import-not-at-top
      config, note = unlabelled.config_for_unlabelled(
          config, simclr_flags.explicit_flag_names(),
          where=f'--data_dir={config.data.data_dir} ({data_sizes.labels_note})')
      if note:
        print(note, file=sys.stderr, flush=True)
        # flags.json and flags.txt describe the model that is trained.
        simclr_flags.override_flags(
            {'lineareval_while_pretraining': config.train.lineareval_while_pretraining})
    if mode in ('train', 'train_then_eval') and checkpoint_before:
      # Resuming: the flags that the checkpoint depends on must not have changed
      # (checked after the data: unlabelled data turn the linear head off).
      for note in checkpoints.check_resume_flags(checkpoint_before, config):
        print(note, file=sys.stderr, flush=True)
    if mode in ('train', 'train_then_eval'):
      # Check the inputs before the first file goes to model_dir.
      if config.train.checkpoint and official_source is None:
        checkpoints.check_compatible(checkpoints.resolve_checkpoint(config.train.checkpoint),
                                     config)
      if config.train.train_mode == 'distill':
        from tf_simclr import distill  # pylint: disable=g-import-not-at-top
        distill.check_inputs(config, data_sizes.num_classes)
      if checkpoint_before:  # Before flags.json is replaced: it describes that checkpoint.
        checkpoints.check_compatible(checkpoint_before, config)
      # The files describe the model built: for an official --checkpoint, its structure.
      model_override = config.model if official_source else None
      if chief:  # flags.txt repeats this run: python run.py --flagfile=MODEL_DIR/flags.txt
        run_dir.write_flags(model_dir, simclr_flags.flags_to_json(model_config=model_override),
                            simclr_flags.flags_to_flagfile(model_config=model_override))
      train_lib.train(config, strategy, data_sizes=data_sizes)
    if mode == 'train_then_eval':
      evaluate_lib.evaluate(config, strategy, data_sizes=data_sizes)
    elif mode == 'eval' and official_source is not None:
      evaluate_lib.evaluate(config, strategy, config.train.checkpoint, data_sizes=data_sizes)
    elif mode == 'eval':
      evaluate_lib.evaluate_continuously(config, strategy, data_sizes=data_sizes)
  except (ValueError, FileNotFoundError) as error:
    undo_failed_start()
    fail(str(error))
  except train_lib.NonFiniteLossError as error:
    fail(str(error), EXIT_NON_FINITE_LOSS)
  except train_lib.TrainingPreempted as error:
    print(f'preempted: {error}', file=sys.stderr, flush=True)
    sys.exit(EXIT_INTERRUPTED if error.signal_number == signal.SIGINT else EXIT_PREEMPTED)
  except KeyboardInterrupt:
    # Ctrl-C outside the training loop (or twice): nothing half-written is kept.
    undo_failed_start()
    if chief and mode != 'eval':
      checkpoints.remove_partial_saves(model_dir)
    latest = checkpoints.latest_complete_checkpoint(model_dir) if chief else None
    fail('interrupted (Ctrl-C)' + (f'; the last checkpoint {latest} is kept: run the same '
                                   'command to resume.' if latest else '.'), EXIT_INTERRUPTED)
  except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
          tf.errors.AbortedError, tf.errors.CancelledError) as error:
    if strategy_lib.num_workers(strategy) <= 1:
      fail_on_io_error(error)
    lines = [line.strip() for line in str(error).splitlines() if line.strip() and not
             line.strip().startswith(('Graph execution error', 'Detected at node', 'File '))]
    reason = lines[0][:200] if lines else type(error).__name__
    print(f'error: a collective with the other workers failed ({type(error).__name__}: '
          f'{" ".join(reason.split())}); a worker died or hung (--collective_timeout_secs='
          f'{config.infra.collective_timeout_secs:g}); restart all workers with the same '
          'command to resume from the last checkpoint.', file=sys.stderr, flush=True)
    os._exit(EXIT_WORKER_LOST)  # Collective threads may still block a normal exit.
  except (OSError, tf.errors.OpError) as error:
    fail_on_io_error(error)


def _describe_error(error: BaseException) -> str:
  """'TypeName: first meaningful line' of an OSError or TF error (no TF graph context)."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip() and not
           line.strip().startswith(('Graph execution error', 'Detected at node', 'File ',
                                    '[[', 'Traceback'))]
  # TF's eager errors start with `{{function_node __wrapped__SaveV2_...}}` and end
  # with ` [Op:SaveV2]`: the path and the reason are in between.
  reason = re.sub(r'^\{\{function_node [^}]*\}\}\s*|\s*\[Op:\w+\]$', '',
                  lines[0]) if lines else ''
  reason = reason[:300]
  return f'{type(error).__name__}: {reason}' if reason else type(error).__name__


def _io_error_kind(error: BaseException) -> str | None:
  """'disk full', 'read-only file system' or 'permission denied' when `error` (an
  OSError or a TF error) says so; else None."""
  text = str(error)
  number = getattr(error, 'errno', None)
  if number in (errno.ENOSPC, errno.EDQUOT) or any(
      reason in text for reason in ('No space left on device', 'Disk quota exceeded')):
    return 'disk full'
  if number == errno.EROFS or 'Read-only file system' in text:
    return 'read-only file system'
  if number in (errno.EACCES, errno.EPERM) or 'Permission denied' in text:
    return 'permission denied'
  return None


def _describe_io_error(error: BaseException, model_dir: str, latest: str | None) -> str:
  """The message of a file system error: what happened, where, and what to do."""
  kind = _io_error_kind(error)
  where = f' in --model_dir={model_dir}' if model_dir and model_dir in str(error) else ''
  details = _describe_error(error)
  remedy = {'disk full': 'free disk space (or pass another --model_dir)',
            'read-only file system': 'make --model_dir writable',
            'permission denied': 'make the files named writable'}.get(kind, 'fix the cause')
  if latest:
    advice = (f'the last checkpoint {latest} is kept: {remedy} and run the same command '
              'to resume.')
  else:
    advice = f'{remedy} and run again.'
  head = f'{kind}{where} ({details})' if kind else details + where
  return f'{head}; {advice}'


def _check_model_dir(model_dir: str) -> None:
  """Exits with one line when --model_dir is a file, is under a file or is not writable
  (tested by writing and deleting a hidden file; nothing else is created)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if tf.io.gfile.exists(model_dir) and not tf.io.gfile.isdir(model_dir):
    fail(f'--model_dir={model_dir} is a file; pass a folder (new, or of a run to resume).')
  existing = model_dir
  while existing and not tf.io.gfile.exists(existing):
    parent = os.path.dirname(existing.rstrip('/'))
    if parent == existing or parent.endswith(':/') or not parent:
      existing = ''
      break
    existing = parent
  if existing and existing != model_dir and not tf.io.gfile.isdir(existing):
    fail(f'--model_dir={model_dir} is under {existing}, which is a file; pass a folder path.')
  # Write a file and delete it (through tf.io.gfile, so gs:// too): the permission bits
  # alone do not tell (root, read-only mounts, bucket permissions).
  if '://' in model_dir:
    probe_dir = model_dir  # Object stores need no folder; ram:// one that exists.
  else:
    probe_dir = existing or '.'  # '' only for a relative path: the working directory.
  probe = os.path.join(probe_dir, f'.tf_simclr_write_test.{uuid.uuid4().hex}.tmp')
  try:
    with tf.io.gfile.GFile(probe, 'w') as probe_file:
      probe_file.write('x')  # A byte: an object store may skip an empty upload.
  except (OSError, tf.errors.OpError) as error:
    write_error = error
  else:
    write_error = None
  try:
    tf.io.gfile.remove(probe)  # Also after a failed write (e.g. a full disk).
  except tf.errors.NotFoundError:
    pass
  except (OSError, tf.errors.OpError) as error:
    if write_error is None:
      fail(f'--model_dir={model_dir}: cannot delete the test file {probe} '
           f'({_describe_error(error)}); pass a folder where files can be written and '
           'deleted.')
  if write_error is None:
    return
  if '://' in model_dir and isinstance(write_error, tf.errors.NotFoundError):
    return  # A file system that needs folders (ram://): makedirs comes first.
  state = {'disk full': 'on a full disk; free disk space or pass another folder.',
           'read-only file system': 'on a read-only file system; pass a folder you can '
                                    'write to.',
           'permission denied': 'not writable; pass a folder you can write to.'}.get(
               _io_error_kind(write_error))
  fail(f'--model_dir={model_dir}: {probe_dir} is ' + (
      state or f'not writable ({_describe_error(write_error)}); pass a folder you can '
      'write to.'))


def cli() -> None:
  """The `tf-simclr` console command: the same as `python run.py`."""
  app.run(main, flags_parser=parse_flags)


if __name__ == '__main__':
  cli()
