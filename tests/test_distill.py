"""--train_mode=distill (tf_simclr/distill.py): frozen teacher, loss, splits, resume, errors.

The teacher is a tiny fine-tuned-shaped model (ResNet-18, 16 px) saved as a checkpoint,
with random BN moving statistics and a large head so that inference-mode and
training-mode outputs differ and its soft labels are not uniform. References are
independent: a separately restored Keras model of the teacher, the NumPy float64
formula of the loss (tests/test_losses.py), a single-device run, an uninterrupted run.
"""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests import reliability_helpers as helpers
from tests import train_fixtures
from tests.test_losses import numpy_distillation
from tf_simclr import checkpoints
from tf_simclr import config as config_lib
from tf_simclr import distill
from tf_simclr import models
from tf_simclr import optim
from tf_simclr import run_dir
from tf_simclr.models import build_model

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
IMAGE_SIZE = 16


def write_teacher(model_dir: pathlib.Path, num_classes: int = train_fixtures.NUM_CLASSES,
                  seed: int = 11) -> config_lib.Config:
  """A finetune-mode ResNet-18 checkpoint (ckpt-3) + flags.json; returns its config.

  BN moving statistics and the head are randomised (seeded) so inference-mode BN
  matters and the teacher's soft labels are far from uniform.
  """
  config = train_fixtures.tiny_config(str(model_dir), train_mode='finetune')
  keras.utils.set_random_seed(seed)
  model = build_model(config, num_classes)
  rng = np.random.default_rng(seed)
  for variable in model.weights:
    if 'moving_mean' in variable.path:
      variable.assign(rng.normal(scale=0.2, size=variable.shape).astype(np.float32))
    elif 'moving_variance' in variable.path:
      variable.assign(rng.uniform(0.5, 2.0, size=variable.shape).astype(np.float32))
    elif 'head_supervised' in variable.path:
      variable.assign(rng.normal(scale=1.0, size=variable.shape).astype(np.float32))
  tf.train.CheckpointManager(tf.train.Checkpoint(model=model), str(model_dir), 1).save(
      checkpoint_number=3)
  run_dir.write_json_atomic(str(model_dir / 'flags.json'), {
      'resnet_depth': 18, 'proj_out_dim': 16, 'image_size': IMAGE_SIZE,
      'train_mode': 'finetune', 'model_dir': str(model_dir)})
  return config


def distill_config(model_dir, teacher_dir, **distill_fields) -> config_lib.Config:
  fields = dict(teacher_checkpoint=str(teacher_dir), distill_temperature=2.0,
                distill_label_weight=0.5, distill_labeled_split='train[:50%]')
  fields.update(distill_fields)
  config = train_fixtures.tiny_config(str(model_dir), train_mode='distill')
  return config_lib.replace(config, distill=fields)


def restored_teacher(teacher_config, teacher_dir, num_classes=train_fixtures.NUM_CLASSES):
  """An independent Keras copy of the teacher checkpoint."""
  model = build_model(teacher_config, num_classes)
  tf.train.Checkpoint(model=model).restore(
      tf.train.latest_checkpoint(str(teacher_dir))).expect_partial()
  return model


def test_teacher_is_frozen_in_inference_mode_and_the_step_loss_matches_numpy(tmp_path):
  teacher_dir = tmp_path / 'teacher'
  teacher_config = write_teacher(teacher_dir)
  config = distill_config(tmp_path / 'student', teacher_dir)
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  teacher = distill.load_teacher(config, strategy, train_fixtures.NUM_CLASSES)
  reference = restored_teacher(teacher_config, teacher_dir)
  keras.utils.set_random_seed(3)
  with strategy.scope():
    student = models.build_model_for(config, train_fixtures.NUM_CLASSES)
    optimizer = optim.build_optimizer(config.optim, 0.5)
    optimizer.build(student.trainable_variables)
  rng = np.random.default_rng(0)
  batch = {
      'image': rng.uniform(size=(8, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32),
      'labeled_image': rng.uniform(size=(8, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32),
      'labeled_label': np.eye(10, dtype=np.float32)[rng.integers(0, 10, 8)]}
  batch['label'] = np.zeros((8, 10), np.float32)  # Unlabelled: ignored.
  teacher_before = [variable.numpy().copy() for variable in teacher.variables]
  student_before = [variable.numpy().copy() for variable in student.trainable_variables]

  # The teacher's logits are the inference-mode logits of the checkpointed model.
  teacher_logits = reference(batch['image'], training=False)['logits_sup'].numpy()
  np.testing.assert_allclose(teacher(batch['image']).numpy(), teacher_logits,
                             rtol=1e-5, atol=1e-5)
  training_mode = reference(batch['image'], training=True)['logits_sup'].numpy()
  assert np.abs(training_mode - teacher_logits).max() > 0.1  # BN mode matters here.
  # Student logits of the step's forward pass (one BN batch: unlabelled then labelled).
  student_logits = student(np.concatenate([batch['image'], batch['labeled_image']]),
                           training=True)['logits_sup'].numpy()
  expected = numpy_distillation(teacher_logits, student_logits[:8], 2.0,
                                batch['labeled_label'], student_logits[8:], 0.5)

  names = distill.metric_names(config)
  step_fn = distill.build_train_step(config, student, teacher, optimizer, strategy)
  step = tf.function(lambda batch: strategy.run(step_fn, args=(batch,)))
  metrics = dict(zip(names, step(batch).numpy()))
  np.testing.assert_allclose(
      [metrics['distill_loss'], metrics['supervised_loss']], expected[1:], rtol=2e-5)
  assert metrics['total_loss'] == pytest.approx(
      expected[0] + metrics['weight_decay'], rel=2e-5)
  assert metrics['weight_decay'] > 0  # LARS: L2 of the supervised head in the loss
  for _ in range(2):
    step(batch)
  for before, variable in zip(teacher_before, teacher.variables):
    np.testing.assert_array_equal(variable.numpy(), before, err_msg=variable.name)
  assert len(teacher.variables) > 100  # weights and BN moving statistics
  # The encoder and the classifier learn (the projection head gets no gradient with
  # --ft_proj_selector=0, as in finetuning).
  changed = [not np.array_equal(before, variable.numpy())
             for before, variable in zip(student_before, student.trainable_variables)
             if 'projection_head' not in variable.path]
  assert len(changed) > 50 and all(changed)
  assert not set(map(id, teacher.variables)) & set(map(id, optimizer.variables))


@pytest.mark.slow
def test_hub_export_teacher_gives_the_checkpoint_teachers_logits(tmp_path):
  # About 8 s idle (the export traces the model); the slow 2-replica test also uses one.
  from tf_simclr import export as export_lib  # pylint: disable=g-import-not-at-top
  teacher_dir = tmp_path / 'teacher'
  teacher_config = write_teacher(teacher_dir)
  export_dir = export_lib.export_encoder(restored_teacher(teacher_config, teacher_dir),
                                         str(tmp_path / 'export'), image_size=IMAGE_SIZE)
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  images = np.random.default_rng(1).uniform(size=(4, IMAGE_SIZE, IMAGE_SIZE, 3))
  images = images.astype(np.float32)
  from_checkpoint = distill.load_teacher(
      distill_config(tmp_path / 'a', teacher_dir), strategy, 10)(images).numpy()
  from_export = distill.load_teacher(
      distill_config(tmp_path / 'b', export_dir), strategy, 10)(images).numpy()
  np.testing.assert_allclose(from_export, from_checkpoint, rtol=1e-5, atol=1e-5)
  assert np.std(from_checkpoint) > 0.5  # Far from uniform soft labels.
  with pytest.raises(ValueError, match='the teacher has 10 classes but --dataset=synthetic has 3'):
    distill.check_inputs(distill_config(tmp_path / 'c', export_dir, distill_label_weight=0.0),
                         3)


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory):
  return helpers.write_image_folder(tmp_path_factory.mktemp('data') / 'folder')


@pytest.mark.slow
def test_resume_in_distill_mode_is_bit_identical(image_folder, tmp_path):
  """In-process: a crash after step 2 (ckpt-3, ckpt-4 lost), then the same call; the
  zipped unlabelled + labelled iterator position and the student resume, the teacher
  is loaded again."""
  write_teacher(tmp_path / 'teacher', num_classes=2)
  data = config_lib.DataConfig(dataset='image_folder', data_dir=str(image_folder),
                               train_split='train', eval_split='test', image_size=16,
                               use_blur=False)
  result, expected, resumed_dir = helpers.train_crash_and_resume(config_lib.replace(
      distill_config(tmp_path / 'reference', tmp_path / 'teacher'),
      data=dataclasses.asdict(data), train={'seed': 7}), tmp_path)
  assert {'train/distill_loss', 'train/supervised_loss'} <= set(result)
  # The student checkpoint holds the student only (the teacher is not saved with it).
  teacher_tensors = helpers.checkpoint_tensors(str(tmp_path / 'teacher' / 'ckpt-3'))
  assert len(expected) > len(teacher_tensors)
  assert checkpoints.checkpoint_has_object(str(resumed_dir / 'ckpt-4'),
                                           ('model', 'supervised_head'))


def test_labelled_subsets_of_the_cifar10_folder_hold_every_class(cifar10_dir):
  """train[:1%] and train[:10%] of the image folder: all 10 classes, near-balanced
  (the reader shuffles each split once, with a fixed seed, before slicing)."""
  from tf_simclr import data as data_lib  # pylint: disable=g-import-not-at-top
  data_config = config_lib.DataConfig(dataset='image_folder', data_dir=str(cifar10_dir),
                                      image_size=8)
  for split, size in (('train[:1%]', 500), ('train[:10%]', 5000)):
    input_fn = data_lib.build_input_fn(data_config, split=split, is_training=False,
                                       train_mode='finetune', global_batch_size=500,
                                       flag='distill_labeled_split')
    counts = np.zeros(10)
    for batch in input_fn(None):
      counts += (batch['label'].numpy() * batch['mask'].numpy()[:, None]).sum(axis=0)
    assert counts.sum() == size, split
    assert counts.min() >= 0.6 * size / 10, (split, counts)  # every class, none starved
  with pytest.raises(ValueError, match=r'--distill_labeled_split=valid\[:10%\]: image folder'):
    data_lib.build_input_fn(data_config, split='valid[:10%]', is_training=True,
                            train_mode='finetune', global_batch_size=8,
                            flag='distill_labeled_split')


@pytest.mark.slow
def test_bad_distill_input_is_one_line_exit_2_and_leaves_model_dir_alone(image_folder,
                                                                         tmp_path):
  from tests.test_reliability import _run_bad_inputs  # pylint: disable=g-import-not-at-top
  write_teacher(tmp_path / 'teacher10', num_classes=10)
  write_teacher(tmp_path / 'teacher2', num_classes=2)

  def run(name, *extra):
    return helpers.run_command(tmp_path / name, image_folder, '--train_mode=distill', *extra)

  cases = [
      ('other_classes', run('other_classes', f'--teacher_checkpoint={tmp_path / "teacher10"}'),
       'the teacher has 10 classes but --dataset=image_folder has 2'),
      ('missing_teacher', run('missing_teacher', f'--teacher_checkpoint={tmp_path / "none"}'),
       f'--teacher_checkpoint={tmp_path / "none"} does not exist'),
      ('temperature', run('temperature', f'--teacher_checkpoint={tmp_path / "teacher2"}',
                          '--distill_temperature=0'), '--distill_temperature=0.0 must be > 0'),
      ('no_teacher', run('no_teacher'), '--train_mode=distill needs --teacher_checkpoint'),
      ('bad_labeled_split', run('bad_labeled_split',
                                f'--teacher_checkpoint={tmp_path / "teacher2"}',
                                '--distill_label_weight=1', '--distill_labeled_split=lab[:5]'),
       "--distill_labeled_split=lab[:5]: image folder"),
  ]
  _run_bad_inputs(cases, tmp_path)
  for name, _, _ in cases:
    assert not (tmp_path / name).exists(), name


@pytest.mark.slow
def test_two_replicas_equal_single_device_in_distill_mode(tmp_path):
  """R1 and R2 (2 logical CPUs, MirroredStrategy, checkpoint teacher) and R2 with the
  teacher's hub export: the same student after 3 steps (about 3 min on 2 busy cores)."""
  command = [sys.executable, str(REPO_ROOT / 'tests' / 'distill_replicas_script.py'),
             str(tmp_path)]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  env.pop('TF_CONFIG', None)
  process = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                           timeout=900)
  assert process.returncode == 0, process.stderr[-3000:]
  single = np.load(tmp_path / 'weights_R1.npz')
  for name in ('R2', 'R2_export'):
    other = np.load(tmp_path / f'weights_{name}.npz')
    assert set(single.files) == set(other.files) and len(single.files) > 100
    for key in single.files:
      np.testing.assert_allclose(other[key], single[key], rtol=2e-4, atol=2e-5,
                                 err_msg=f'{name}: {key}')


@pytest.mark.slow
def test_sigkill_in_distill_mode_then_restart_is_bit_identical(image_folder, tmp_path):
  """run.py killed (SIGKILL) during a checkpoint write and at a random moment, restarted
  with the same command: the same student as an uninterrupted run (about 5 min on 2
  busy cores)."""
  from tests.test_reliability import _assert_bit_identical  # pylint: disable=g-import-not-at-top
  from tests.test_reliability import _finish  # pylint: disable=g-import-not-at-top
  from tests.test_reliability import _kill_and_resume  # pylint: disable=g-import-not-at-top
  write_teacher(tmp_path / 'teacher', num_classes=2)
  extra = ('--train_mode=distill', f'--teacher_checkpoint={tmp_path / "teacher"}',
           '--distill_temperature=2', '--distill_label_weight=0.5',
           '--distill_labeled_split=train[:50%]')
  reference_dir, resumed_dir = tmp_path / 'reference', tmp_path / 'resumed'
  reference = helpers.start(helpers.run_command(reference_dir, image_folder, *extra),
                            tmp_path / 'reference.log')
  try:
    code, _ = _kill_and_resume(helpers.run_command(resumed_dir, image_folder, *extra),
                               resumed_dir, tmp_path / 'resumed.log', ['save', 0.7])
    assert code == 0, (tmp_path / 'resumed.log').read_text()[-3000:]
    assert _finish(reference) == 0, (tmp_path / 'reference.log').read_text()[-3000:]
  finally:
    helpers.kill(reference)
  assert (tmp_path / 'resumed.log').read_text().count('Resuming from') == 2
  _assert_bit_identical(reference_dir, resumed_dir)


@pytest.mark.slow
def test_official_model_teacher_gives_the_official_logits(tmp_path):
  """A google-research/simclr tf2 model written by the official code (subprocess,
  random weights and BN statistics): as a teacher, checkpoint and SavedModel give the
  official SavedModel's inference-mode logits_sup (about 3 min on 2 busy cores)."""
  from tests import test_official_import  # pylint: disable=g-import-not-at-top
  if not (test_official_import.OFFICIAL_DIR / 'run.py').is_file():
    pytest.skip('official SimCLR tf2 code not found')
  run_dir = test_official_import.write_official(tmp_path / 'official', '--resnet_depth=18',
                                                '--proj_out_dim=32', '--ft_proj_selector=1')
  reference = np.load(run_dir / 'reference.npz')
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  for path in (run_dir, run_dir / 'saved_model' / '1'):
    config = config_lib.replace(
        distill_config(tmp_path / 'student', path, distill_label_weight=0.0),
        model={'ft_proj_selector': 1})  # The official head reads projection layer 1.
    distill.check_inputs(config, 10)
    teacher = distill.load_teacher(config, strategy, 10)
    logits = teacher(tf.constant(reference['inputs'])).numpy()
    error = np.abs(logits - reference['logits_sup']).max() / np.abs(reference['logits_sup']).max()
    assert error < 1e-4, (path, error)
  with pytest.raises(ValueError, match='the teacher has 10 classes but --dataset=synthetic has 3'):
    distill.check_inputs(config, 3)


@pytest.mark.slow
def test_run_py_distill_writes_results_summaries_and_a_hub_export(image_folder, tmp_path):
  """`run.py --train_mode=distill --mode=train_then_eval` like other modes: checkpoints,
  TensorBoard scalars, result.json and a hub export, which then serves as a teacher
  (about 4 min on 2 busy cores)."""
  from tests.test_run_cli import _scalars  # pylint: disable=g-import-not-at-top
  write_teacher(tmp_path / 'teacher', num_classes=2)
  model_dir = tmp_path / 'student'
  command = helpers.run_command(
      model_dir, image_folder, '--train_mode=distill', '--mode=train_then_eval',
      f'--teacher_checkpoint={tmp_path / "teacher"}', '--distill_label_weight=0.5',
      '--distill_labeled_split=train[:25%]', '--train_steps=4', '--checkpoint_steps=2',
      '--export_hub_module=end')
  result = subprocess.run(command, cwd=REPO_ROOT, env=helpers.environment(),
                          capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'teacher_agreement' in result.stdout
  outcome = json.loads((model_dir / 'result.json').read_text())
  assert outcome['global_step'] == 4 and outcome['num_examples'] == 32
  assert 0 <= outcome['eval/label_top_1_accuracy'] <= 1
  for tag in ('train/distill_loss', 'train/teacher_agreement', 'train/supervised_loss',
              'train/supervised_acc', 'train/weight_decay', 'train/total_loss',
              'learning_rate', 'eval/label_top_1_accuracy'):
    assert _scalars(str(model_dir), tag), tag
  assert helpers.saved_steps(model_dir) == [2, 4]
  export_dir = model_dir / 'saved_model' / '4'
  assert (export_dir / 'saved_model.pb').exists()
  # The distilled student's export is a teacher in turn (distillation chains).
  config = distill_config(tmp_path / 'next', export_dir, distill_label_weight=0.0)
  teacher = distill.load_teacher(config, tf.distribute.OneDeviceStrategy('/cpu:0'), 2)
  assert teacher(np.zeros((2, IMAGE_SIZE, IMAGE_SIZE, 3), np.float32)).shape == (2, 2)
