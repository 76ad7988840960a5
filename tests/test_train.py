"""Training and evaluation loops in-process on a 1-device MirroredStrategy.

One 6-step pretraining run (tiny ResNet-18, 16 px, fixed pre-augmented batches) is
shared: resuming it after a simulated crash must reproduce its weights exactly;
evaluation must count each example once and match top-k computed directly from the
restored model; finetuning from it must load the encoder only.
"""

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from tests import train_fixtures
from tf_simclr import checkpoints
from tf_simclr import config as config_lib
from tf_simclr import evaluate as evaluate_lib
from tf_simclr import metrics as metrics_lib
from tf_simclr import progress as progress_lib
from tf_simclr import run_dir
from tf_simclr import train as train_lib
from tf_simclr.models import build_model

STEPS = 6
BATCH = 8
SIZE = 16
SIZES = train_fixtures.Sizes(num_train_examples=BATCH * STEPS, num_eval_examples=20)


@pytest.fixture(scope='module')
def strategy():
  return tf.distribute.MirroredStrategy(['/cpu:0'])


@pytest.fixture(scope='module')
def batches():
  return train_fixtures.global_batches(STEPS, BATCH, SIZE)


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory, strategy, batches):
  """A 6-step pretraining run with linear eval, checkpoints every 2 steps."""
  model_dir = str(tmp_path_factory.mktemp('pretrain'))
  config = train_fixtures.tiny_config(model_dir, train_steps=STEPS, checkpoint_steps=2,
                                      keep_checkpoint_max=5)
  result = train_lib.train(config, strategy, input_fn=train_fixtures.make_input_fn(batches),
                           data_sizes=SIZES, verbose=False)
  return config, result


def _variables(checkpoint_path):
  reader = tf.train.load_checkpoint(checkpoint_path)
  return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()
          if key.startswith(('model', 'optimizer', 'global_step'))}


def test_train_writes_checkpoints_and_metrics(pretrained):
  config, result = pretrained
  assert result['global_step'] == STEPS
  model_dir = config.train.model_dir
  assert tf.train.latest_checkpoint(model_dir).endswith(f'ckpt-{STEPS}')
  assert checkpoints.checkpoint_step(os.path.join(model_dir, 'ckpt-4')) == 4
  for name in ('contrast_loss', 'contrast_acc', 'contrast_entropy', 'supervised_loss',
               'supervised_acc', 'weight_decay', 'total_loss'):
    assert np.isfinite(result[f'train/{name}']), name
  # The total is the sum of its parts (averaged over the same steps).
  np.testing.assert_allclose(
      result['train/total_loss'],
      result['train/contrast_loss'] + result['train/supervised_loss'] +
      result['train/weight_decay'], rtol=1e-5)
  # Cosine schedule ends at 0 on the last step.
  assert result['learning_rate'] == pytest.approx(0.0, abs=1e-9)


def test_resume_after_crash_reproduces_the_uninterrupted_run(pretrained, strategy, batches,
                                                             tmp_path):
  config, _ = pretrained
  model_dir = str(tmp_path / 'resumed')
  shutil.copytree(config.train.model_dir, model_dir)
  # Crash after step 4: ckpt-6 never written.
  for name in os.listdir(model_dir):
    if name.startswith('ckpt-6'):
      os.remove(os.path.join(model_dir, name))
  tf.compat.v1.train.update_checkpoint_state(model_dir, os.path.join(model_dir, 'ckpt-4'))
  resumed_config = config_lib.replace(config, train={'model_dir': model_dir})
  result = train_lib.train(resumed_config, strategy,
                           input_fn=train_fixtures.make_input_fn(batches),
                           data_sizes=SIZES, verbose=False)
  assert result['global_step'] == STEPS
  expected = _variables(os.path.join(config.train.model_dir, f'ckpt-{STEPS}'))
  actual = _variables(os.path.join(model_dir, f'ckpt-{STEPS}'))
  assert expected.keys() == actual.keys()
  for key in expected:
    np.testing.assert_allclose(actual[key], expected[key], rtol=1e-6, atol=1e-7,
                               err_msg=key)


def test_eval_counts_every_example_once_and_matches_direct_top_k(pretrained, strategy):
  config, _ = pretrained
  input_fn, images, labels = train_fixtures.eval_input_fn(
      SIZES.num_eval_examples, config.train.eval_batch_size, SIZE)
  result = evaluate_lib.evaluate(config, strategy, input_fn=input_fn, data_sizes=SIZES,
                                 verbose=False)
  assert result['num_examples'] == SIZES.num_eval_examples  # 20 of 24 padded slots.
  assert result['global_step'] == STEPS
  # Independent reference: restore the checkpoint into a fresh model, NumPy top-k.
  model = build_model(config, SIZES.num_classes)
  tf.train.Checkpoint(model=model).restore(
      tf.train.latest_checkpoint(config.train.model_dir)).expect_partial()
  logits = model(images, training=False)['logits_sup'].numpy().astype(np.float64)
  label_index = labels.argmax(axis=1)
  top5 = np.argsort(-logits, axis=1)[:, :5]
  assert result['eval/label_top_1_accuracy'] == pytest.approx(
      np.mean(logits.argmax(axis=1) == label_index), abs=1e-9)
  assert result['eval/label_top_5_accuracy'] == pytest.approx(
      np.mean([label in row for label, row in zip(label_index, top5)]), abs=1e-9)
  saved = json.load(open(os.path.join(config.train.model_dir, 'result.json')))
  assert saved['eval/label_top_1_accuracy'] == result['eval/label_top_1_accuracy']
  assert os.path.exists(os.path.join(config.train.model_dir, f'result_{STEPS}.json'))


def test_finetune_from_pretrain_loads_encoder_only(pretrained, strategy, batches, tmp_path):
  config, _ = pretrained
  pretrain_path = os.path.join(config.train.model_dir, f'ckpt-{STEPS}')
  finetune_config = config_lib.replace(
      config, train={'train_mode': 'finetune', 'checkpoint': config.train.model_dir,
                     'zero_init_logits_layer': True, 'model_dir': str(tmp_path / 'ft')})
  model = build_model(finetune_config, SIZES.num_classes)
  train_lib.restore_pretrained(model, pretrain_path, finetune_config)
  reference = build_model(config, SIZES.num_classes)
  tf.train.Checkpoint(model=reference).restore(pretrain_path).expect_partial()
  for ours, theirs in zip(model.encoder.weights, reference.encoder.weights):
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy(), err_msg=ours.path)
  for ours, theirs in zip(model.projection_head.weights, reference.projection_head.weights):
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy(), err_msg=ours.path)
  # The supervised head is not loaded: zero (--zero_init_logits_layer), not the
  # pretraining run's linear-eval head.
  assert np.abs(reference.supervised_head.weights[0].numpy()).sum() > 0
  for variable in model.supervised_head.weights:
    np.testing.assert_array_equal(variable.numpy(), 0.0)


def test_checkpoint_with_other_depth_gives_one_clear_line(pretrained, tmp_path):
  config, _ = pretrained
  model_dir = str(tmp_path)
  shutil.copytree(config.train.model_dir, model_dir, dirs_exist_ok=True)
  run_dir.write_json_atomic(os.path.join(model_dir, 'flags.json'),
                            {'resnet_depth': 50, 'proj_out_dim': 16})
  finetune_config = config_lib.replace(config, train={'train_mode': 'finetune'})
  with pytest.raises(ValueError, match='has resnet_depth 50 but --resnet_depth=18'):
    checkpoints.check_compatible(checkpoints.resolve_checkpoint(model_dir), finetune_config)
  # Without flags.json, the shape mismatch itself is reported on one line.
  os.remove(os.path.join(model_dir, 'flags.json'))
  other = config_lib.replace(finetune_config, model={'proj_out_dim': 32})
  model = build_model(other, SIZES.num_classes)
  with pytest.raises(ValueError, match='does not match this model') as error:
    train_lib.restore_pretrained(model, checkpoints.resolve_checkpoint(model_dir), other)
  assert '\n' not in str(error.value)
  with pytest.raises(FileNotFoundError, match='--checkpoint=/no/such'):
    checkpoints.resolve_checkpoint('/no/such')


def test_eval_of_pretrain_only_checkpoint_reports_contrastive_metrics(
    strategy, batches, tmp_path):
  config = train_fixtures.tiny_config(str(tmp_path), lineareval_while_pretraining=False)
  with strategy.scope():
    model = build_model(config, SIZES.num_classes)
  assert model.supervised_head is None
  tf.train.Checkpoint(model=model).save(str(tmp_path / 'ckpt'))
  # Eval asks for linear eval (the default flags) but the checkpoint has no head.
  eval_config = config_lib.replace(config, train={'lineareval_while_pretraining': True,
                                                  'eval_steps': 2})
  result = evaluate_lib.evaluate(eval_config, strategy,
                                 input_fn=train_fixtures.make_input_fn(batches),
                                 data_sizes=SIZES, verbose=False)
  assert 'eval/label_top_1_accuracy' not in result
  assert result['linear_eval'].startswith('not available')
  assert result['num_examples'] == 2 * BATCH
  assert 0.0 <= result['eval/contrast_acc'] <= 1.0
  # NT-Xent over B examples: between 0 and log(2B - 1) + 2 / temperature.
  assert 0.0 < result['eval/contrast_loss'] < np.log(2 * BATCH - 1) + 2 / 0.1


def test_top_k_correct_weights_by_mask():
  labels = tf.one_hot([0, 1, 2, 3], 4)
  logits = tf.constant([[9., 1, 0, 0], [0, 1, 9, 0], [0, 0, 9, 1], [9, 0, 0, 1]])
  mask = tf.constant([1., 1., 0., 1.])
  assert float(metrics_lib.top_k_correct(labels, logits, mask, 1)) == 1.0
  assert float(metrics_lib.top_k_correct(labels, logits, mask, 2)) == 3.0


def test_progress_line(capsys):
  progress = progress_lib.Progress(total_steps=10, global_batch_size=4, start_step=0)
  line = progress.report(5, {'loss': 1.5})
  assert line.startswith('step 5/10 (50.0%) | ')
  assert 'images/s | ETA ' in line and line.endswith('loss 1.5000')
  assert progress_lib.format_duration(3725) == '1:02:05'
  assert capsys.readouterr().out.strip() == line


def test_write_json_atomic_leaves_no_temp_files(tmp_path):
  path = tmp_path / 'result.json'
  run_dir.write_json_atomic(str(path), {'a': np.float32(0.5), 'b': np.int64(3)})
  assert json.load(open(path)) == {'a': 0.5, 'b': 3}
  assert os.listdir(tmp_path) == ['result.json']


def test_supervised_head_is_found_through_the_object_graph(pretrained):
  """The real loop stores the head's weights under optimizer/_trainable_variables/N."""
  from hub_export import __main__ as hub_export_main  # pylint: disable=g-import-not-at-top
  config, _ = pretrained
  path = os.path.join(config.train.model_dir, f'ckpt-{STEPS}')
  keys = checkpoints.checkpoint_keys(path)
  assert not any(key.startswith('model/supervised_head/') for key in keys)  # the trap
  shapes = checkpoints.object_variable_shapes(path, ('model', 'supervised_head'))
  model = build_model(config, SIZES.num_classes)
  expected = sorted(list(variable.shape) for variable in model.supervised_head.weights)
  assert sorted(shapes.values()) == expected and len(expected) == 2
  assert hub_export_main._num_classes(path) == SIZES.num_classes  # pylint: disable=protected-access
  assert checkpoints.object_variable_shapes(path, ('model', 'no_such_part')) == {}


def test_resume_with_changed_flags(pretrained, tmp_path):
  config, _ = pretrained
  model_dir = str(tmp_path)
  path = os.path.join(model_dir, f'ckpt-{STEPS}')
  for name in tf.io.gfile.glob(os.path.join(config.train.model_dir, f'ckpt-{STEPS}.*')):
    shutil.copy(name, model_dir)
  saved = run_dir.to_json_compatible(config.flat_dict())
  run_dir.write_json_atomic(os.path.join(model_dir, 'flags.json'), saved)
  assert checkpoints.check_resume_flags(path, config) == []
  changed = config_lib.replace(config, train={'train_batch_size': 16},
                               model={'resnet_depth': 34})
  with pytest.raises(ValueError) as error:
    checkpoints.check_resume_flags(path, changed)
  message = str(error.value)
  assert '--resnet_depth=18 (now 34), --train_batch_size=8 (now 16)' in message
  assert 'cannot change when a run resumes' in message and '\n' not in message
  allowed = config_lib.replace(config, train={'train_steps': STEPS + 4},
                               data={'data_dir': '/elsewhere'})
  notes = checkpoints.check_resume_flags(path, allowed)
  assert len(notes) == 2 and notes[0].startswith('warning: --data_dir changed from None')
  assert f'--train_steps={STEPS + 4} (was {STEPS})' in notes[1]


@pytest.mark.slow
def test_rerun_finishes_an_export_killed_at_the_end(pretrained, strategy, batches, tmp_path):
  """A run killed (-9) during its last export: the same command exports and cleans up."""
  from tf_simclr import export as export_lib  # pylint: disable=g-import-not-at-top
  config, _ = pretrained
  model_dir = tmp_path / 'run'
  shutil.copytree(config.train.model_dir, model_dir)
  stale = model_dir / 'saved_model' / f'.{STEPS}.tmp-somehost-1-0123abcd'  # the killed one
  (stale / 'variables').mkdir(parents=True)
  rerun = config_lib.replace(config, train={'model_dir': str(model_dir)},
                             export={'export_hub_module': 'checkpoint'})
  result = train_lib.train(rerun, strategy, input_fn=train_fixtures.make_input_fn(batches),
                           data_sizes=SIZES, verbose=False)
  assert result['global_step'] == STEPS
  assert os.listdir(model_dir / 'saved_model') == [str(STEPS)]
  assert export_lib.is_saved_model_export(str(model_dir / 'saved_model' / str(STEPS)))
