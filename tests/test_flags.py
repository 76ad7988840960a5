"""Tests of flags/: the official flag contract, the config adapter, flags.json."""

import json
import pathlib
import re
import subprocess
import sys

from absl import flags as absl_flags
import pytest

import flags as flags_lib
from flags import table as table_lib
from tf_simclr import config as config_lib

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

# google-research/simclr tf2/run.py, typed from its source independently of flags/.
# use_tpu is True there; False here by design (docs/flags.md and docs/differences.md say so).
OFFICIAL_DEFAULTS = {
    'learning_rate': 0.3, 'learning_rate_scaling': 'linear', 'warmup_epochs': 10.0,
    'weight_decay': 1e-6, 'batch_norm_decay': 0.9, 'train_batch_size': 512,
    'train_split': 'train', 'train_epochs': 100, 'train_steps': 0, 'eval_steps': 0,
    'eval_batch_size': 256, 'checkpoint_epochs': 1, 'checkpoint_steps': 0,
    'eval_split': 'validation', 'dataset': 'imagenet2012', 'cache_dataset': False,
    'mode': 'train', 'train_mode': 'pretrain', 'lineareval_while_pretraining': True,
    'checkpoint': None, 'zero_init_logits_layer': False, 'fine_tune_after_block': -1,
    'master': None, 'model_dir': None, 'data_dir': None, 'use_tpu': False,
    'tpu_name': None, 'tpu_zone': None, 'gcp_project': None, 'optimizer': 'lars',
    'momentum': 0.9, 'eval_name': None, 'keep_checkpoint_max': 5,
    'keep_hub_module_max': 1, 'temperature': 0.1, 'hidden_norm': True,
    'proj_head_mode': 'nonlinear', 'proj_out_dim': 128, 'num_proj_layers': 3,
    'ft_proj_selector': 0, 'global_bn': True, 'width_multiplier': 1,
    'resnet_depth': 50, 'sk_ratio': 0.0, 'se_ratio': 0.0, 'image_size': 224,
    'color_jitter_strength': 1.0, 'use_blur': True,
}
# The official enum flags and their allowed values.
OFFICIAL_ENUMS = {
    'learning_rate_scaling': {'linear', 'sqrt'},
    'mode': {'train', 'eval', 'train_then_eval'},
    'train_mode': {'pretrain', 'finetune'},
    'optimizer': {'momentum', 'adam', 'lars'},
    'proj_head_mode': {'none', 'linear', 'nonlinear'},
}

TYPICAL_ARGV = [
    '--train_mode=pretrain', '--train_batch_size=512', '--train_epochs=1000',
    '--learning_rate=1.0', '--weight_decay=1e-4', '--temperature=0.5',
    '--dataset=cifar10', '--image_size=32', '--eval_split=test', '--resnet_depth=18',
    '--use_blur=False', '--color_jitter_strength=0.5', '--model_dir=/tmp/simclr_test',
    '--use_tpu=False',
]


def fresh_flags(argv=None) -> absl_flags.FlagValues:
  """A new FlagValues with all our flags, parsed from `argv` when given."""
  flag_values = absl_flags.FlagValues()
  flags_lib.define_flags(flag_values)
  if argv is not None:
    flag_values(['run.py'] + list(argv))
  return flag_values


def test_official_flags_have_official_names_and_defaults():
  assert len(OFFICIAL_DEFAULTS) == 48
  assert sorted(flags_lib.official_flag_names()) == sorted(OFFICIAL_DEFAULTS)
  flag_values = fresh_flags()
  for name, default in OFFICIAL_DEFAULTS.items():
    value = flag_values[name].default
    assert value == default and type(value) is type(default), (name, value, default)


def test_official_enum_flags_reject_other_values_at_parse_time():
  flag_values = fresh_flags()
  ours = {'train_mode': {'distill'}}  # SimCLRv2 stage 3 (tf_simclr/distill.py).
  for name, allowed in OFFICIAL_ENUMS.items():
    assert set(flag_values[name].parser.enum_values) == allowed | ours.get(name, set()), name


def test_each_flag_is_one_config_field():
  names = flags_lib.all_flag_names()
  assert len(names) == len(set(names))
  assert sorted(names) == sorted(config_lib.Config().flat_dict())
  defined = {name for name in fresh_flags()}
  assert set(names) <= defined
  assert not set(flags_lib.our_flag_names()) & set(OFFICIAL_DEFAULTS)


def test_flag_defaults_equal_config_defaults():
  config = flags_lib.config_from_flags(fresh_flags(['--model_dir=/tmp/run']))
  assert config == config_lib.replace(config_lib.Config(), train={'model_dir': '/tmp/run'})


def test_typical_official_command_line():
  config = flags_lib.config_from_flags(fresh_flags(TYPICAL_ARGV))
  expected = config_lib.Config(
      model=config_lib.ModelConfig(resnet_depth=18),
      loss=config_lib.LossConfig(temperature=0.5),
      data=config_lib.DataConfig(dataset='cifar10', image_size=32, eval_split='test',
                                 use_blur=False, color_jitter_strength=0.5),
      optim=config_lib.OptimConfig(learning_rate=1.0, weight_decay=1e-4),
      train=config_lib.TrainConfig(train_mode='pretrain', train_batch_size=512,
                                   train_epochs=1000, model_dir='/tmp/simclr_test'),
      infra=config_lib.InfraConfig(use_tpu=False))
  assert config == expected
  assert config.model.use_cifar_stem(config.data.image_size)
  assert isinstance(config.optim.weight_decay, float)


def test_our_flags_parse():
  config = flags_lib.config_from_flags(fresh_flags([
      '--model_dir=/tmp/run', '--color_jitter_impl=simclrv1', '--steps_per_loop=7',
      '--mixed_precision=bfloat16', '--jit_compile', '--deterministic', '--seed=3',
      '--log_every_steps=2', '--export_hub_module=end', '--num_cpu_devices=4',
      '--train_batch_size=64', '--eval_batch_size=32']), num_replicas=4)
  assert (config.data.color_jitter_impl, config.train.steps_per_loop,
          config.train.mixed_precision, config.train.jit_compile,
          config.train.deterministic, config.train.seed, config.train.log_every_steps,
          config.export.export_hub_module, config.infra.num_cpu_devices) == (
              'simclrv1', 7, 'bfloat16', True, True, 3, 2, 'end', 4)


@pytest.mark.parametrize('argv, expected', [
    ([], None), (['--cifar_stem'], True), (['--nocifar_stem'], False),
    (['--cifar_stem=false'], False), (['--cifar_stem=true'], True)])
def test_cifar_stem_is_tri_state(argv, expected):
  config = flags_lib.config_from_flags(fresh_flags(['--model_dir=/m'] + argv))
  assert config.model.cifar_stem is expected


@pytest.mark.parametrize('argv, flag_name', [
    (['--optimizer=foo'], '--optimizer'),
    (['--mode=predict'], '--mode'),
    (['--train_mode=linear'], '--train_mode'),
    (['--proj_head_mode=mlp'], '--proj_head_mode'),
    (['--learning_rate_scaling=log'], '--learning_rate_scaling'),
    (['--train_batch_size=big'], '--train_batch_size'),
    (['--use_blur=maybe'], '--use_blur'),
    (['--mixed_precision=float8'], '--mixed_precision'),
    (['--no_such_flag=1'], 'no_such_flag'),
])
def test_bad_values_fail_at_parse_time_with_one_line(argv, flag_name):
  with pytest.raises(absl_flags.Error) as error:
    fresh_flags(['--model_dir=/m'] + argv)
  message = str(error.value)
  assert flag_name in message and '\n' not in message, message


@pytest.mark.parametrize('argv, flag_name', [
    (['--fine_tune_after_block=2', '--train_mode=pretrain'], '--fine_tune_after_block'),
    (['--proj_out_dim=0'], '--proj_out_dim'),
    (['--train_batch_size=0'], '--train_batch_size'),
    (['--eval_batch_size=-8'], '--eval_batch_size'),
    (['--resnet_depth=19'], '--resnet_depth'),
    (['--temperature=0'], '--temperature'),
    (['--width_multiplier=5'], '--width_multiplier'),
    (['--ft_proj_selector=4'], '--ft_proj_selector'),
    (['--momentum=1.5'], '--momentum'),
    (['--image_size=4'], '--image_size'),
    (['--zero_init_logits_layer', '--nolineareval_while_pretraining'],
     '--zero_init_logits_layer'),
    (['--use_tpu', '--num_cpu_devices=2'], '--num_cpu_devices'),
    (['--checkpoint_steps=0', '--checkpoint_epochs=0'], '--checkpoint_epochs'),
    (['--log_every_steps=-1'], '--log_every_steps'),
    (['--model_dir='], '--model_dir'),
])
def test_bad_values_and_contradictions_raise_one_line(argv, flag_name):
  flag_values = fresh_flags(['--model_dir=/m'] + argv)
  with pytest.raises(ValueError) as error:
    flags_lib.config_from_flags(flag_values)
  message = str(error.value)
  assert flag_name in message and '\n' not in message, message


def test_missing_model_dir_is_named():
  with pytest.raises(ValueError, match='--model_dir is required'):
    flags_lib.config_from_flags(fresh_flags([]))


def test_batch_size_must_divide_replicas():
  flag_values = fresh_flags(['--model_dir=/m', '--train_batch_size=512'])
  flags_lib.config_from_flags(flag_values, num_replicas=4)
  with pytest.raises(ValueError, match=r'--train_batch_size=512 .* 3 replicas'):
    flags_lib.config_from_flags(flag_values, num_replicas=3)


def test_replica_checks_can_wait_for_the_strategy():
  """run.py validates once: the values from the flags, then (with the strategy's
  replica count) only the checks that depend on it."""
  flag_values = fresh_flags(['--model_dir=/m', '--train_batch_size=15',
                             '--eval_batch_size=30', '--micro_batch_size=5'])
  config = flags_lib.config_from_flags(flag_values, num_replicas=None)
  config_lib.validate_replicas(config, 3)
  with pytest.raises(ValueError, match=r'--train_batch_size=15 .* 2 replicas'):
    config_lib.validate_replicas(config, 2)
  with pytest.raises(ValueError, match=r'--micro_batch_size=5 must divide the per-replica '
                                       r'batch 3'):
    config_lib.validate_replicas(config_lib.replace(config, train={'train_batch_size': 15,
                                                                   'eval_batch_size': 5}), 5)
  with pytest.raises(ValueError, match='--resnet_depth=19'):  # The rest is checked.
    flags_lib.config_from_flags(fresh_flags(['--model_dir=/m', '--resnet_depth=19']),
                                num_replicas=None)


def test_fine_tune_after_block_is_fine_in_finetune():
  config = flags_lib.config_from_flags(fresh_flags(
      ['--model_dir=/m', '--train_mode=finetune', '--fine_tune_after_block=4',
       '--checkpoint=/pretrained/ckpt-10', '--zero_init_logits_layer']))
  assert (config.train.fine_tune_after_block, config.train.checkpoint) == (
      4, '/pretrained/ckpt-10')


def test_unparsed_flags_are_refused():
  with pytest.raises(ValueError, match='not parsed'):
    flags_lib.config_from_flags(fresh_flags())


def test_define_is_idempotent_and_import_defines_on_global_flags():
  flag_values = fresh_flags()
  flags_lib.define_flags(flag_values)  # No DuplicateFlagError.
  assert all(name in absl_flags.FLAGS for name in flags_lib.all_flag_names())
  flags_lib.define_flags()  # The import already did; again is a no-op.


def test_partial_clash_is_reported():
  flag_values = absl_flags.FlagValues()
  absl_flags.DEFINE_integer('seed', 1, 'someone else', flag_values=flag_values)
  with pytest.raises(absl_flags.DuplicateFlagError):
    flags_lib.define_flags(flag_values)


def test_flags_json_round_trip(tmp_path):
  flag_values = fresh_flags(TYPICAL_ARGV + ['--nocifar_stem', '--seed=5'])
  text = flags_lib.flags_to_json(flag_values)
  values = json.loads(text)
  assert sorted(values) == sorted(flags_lib.all_flag_names())
  assert values['learning_rate'] == 1.0 and values['cifar_stem'] is False
  path = tmp_path / 'flags.json'
  path.write_text(text)
  assert flags_lib.config_from_flags_json(path) == flags_lib.config_from_flags(flag_values)


def test_official_flags_json_is_read(tmp_path):
  # The official code dumps every absl flag, ours and absl's, with use_tpu=True.
  official = dict(OFFICIAL_DEFAULTS, use_tpu=True, resnet_depth=18, image_size=32,
                  model_dir='gs://bucket/run', logtostderr=False, v=0,
                  log_dir='', only_check_args=False)
  path = tmp_path / 'flags.json'
  path.write_text(json.dumps(official))
  config = flags_lib.config_from_flags_json(path)
  assert (config.model.resnet_depth, config.data.image_size, config.infra.use_tpu,
          config.train.model_dir, config.model.cifar_stem) == (
              18, 32, True, 'gs://bucket/run', None)


@pytest.mark.parametrize('content, expected', [
    ({'model_dir': '/m', 'optimizer': 'foo'}, r'flags\.json: flag optimizer=.foo. is invalid'),
    ({'model_dir': '/m', 'learning_rate': None}, 'flag learning_rate=None is invalid'),
    ({'model_dir': '/m', 'proj_out_dim': 0}, r'flags\.json: --proj_out_dim=0'),
    ({'resnet_depth': 18}, r'flags\.json: --model_dir is required'),
    ([1, 2], 'JSON object'),
    ('{not json', 'not valid JSON'),
])
def test_bad_flags_json_names_file_and_flag(tmp_path, content, expected):
  path = tmp_path / 'flags.json'
  path.write_text(content if isinstance(content, str) else json.dumps(content))
  with pytest.raises(ValueError, match=expected) as error:
    flags_lib.config_from_flags_json(path)
  assert '\n' not in str(error.value)


def test_missing_flags_json(tmp_path):
  with pytest.raises(FileNotFoundError, match='flags.json not found'):
    flags_lib.config_from_flags_json(tmp_path / 'flags.json')


def _table_rows(table: str) -> dict[str, list[str]]:
  rows = {}
  for line in table.splitlines()[2:]:
    cells = [cell.strip() for cell in line.strip('|').split(' | ')]
    rows[cells[0].strip('`').removeprefix('--')] = cells
  return rows


def test_table_lists_every_flag_with_its_default():
  official = _table_rows(table_lib.official_table())
  ours = _table_rows(table_lib.our_table())
  assert list(official) == list(flags_lib.official_flag_names())
  assert list(ours) == list(flags_lib.our_flag_names())
  assert official['learning_rate'][1] == '`0.3`'
  assert official['weight_decay'][1] == '`1e-6`'
  assert official['optimizer'][1] == "`'lars'`"
  assert 'One of `linear`, `sqrt`.' in official['learning_rate_scaling'][2]
  assert 'True in the official code' in official['use_tpu'][2]
  assert all(len(cells) == 3 and cells[2] for cells in {**official, **ours}.values())


def test_table_cli_prints_the_markdown():
  result = subprocess.run([sys.executable, '-m', 'flags.table'], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60, check=True)
  assert result.stdout == table_lib.markdown()


def test_docs_flag_tables_match_the_generator():
  text = (REPO_ROOT / table_lib.DOCS_PATH).read_text(encoding='utf-8')
  start = text.index(table_lib.START_MARKER) + len(table_lib.START_MARKER)
  end = text.index(table_lib.END_MARKER)
  assert text[start:end] == '\n' + table_lib.markdown(), (
      'docs/flags.md is stale: run `python -m flags.table --update docs/flags.md`')


def test_library_never_imports_absl_flags():
  for package in ('tf_simclr', 'hub_export'):
    for path in (REPO_ROOT / package).rglob('*.py'):
      source = path.read_text(encoding='utf-8')
      assert not re.search(r'^\s*(from absl import flags|import absl\.flags|from absl\.flags )',
                           source, re.MULTILINE), path
