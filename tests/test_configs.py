"""Presets in configs/ and the flags.txt flagfile each run writes.

Every preset is parsed the way its header comment's command line runs it (its `python
run.py ...` lines, placeholders included), turned into a validated `Config`, and its
encoder counted (without allocating weights) against the published size; the ResNet-18
presets build the whole model and run it once.
"""

import functools
import pathlib
import shlex

import pytest
import tensorflow as tf
from absl import flags as absl_flags

import flags as flags_lib
from tf_simclr import run_dir
from tf_simclr.models import build_model
from tf_simclr.models.resnet import count_encoder_params

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIGS_DIR = REPO_ROOT / 'configs'
PRESETS = sorted(path.name for path in CONFIGS_DIR.glob('*.flags'))

# Encoder parameters in millions: the SimCLRv2 README (R50-1x 24M, R152-3x+SK 795M);
# ResNet-18 (11.2M) is torchvision's count without its classifier.
EXPECTED_ENCODER_MILLIONS = {
    'cifar10_resnet18.flags': 11, 'cpu_budget_cifar10.flags': 11,
    'imagenet_r50_1x_tpu.flags': 24, 'simclrv2_r152_3x_sk.flags': 795,
    'finetune_1pct.flags': 795, 'finetune_10pct.flags': 795, 'linear_eval.flags': 24,
}


def _header_command(preset: str) -> list[str]:
  """The flags of the first `python run.py ...` command in the preset's header comment."""
  lines = (CONFIGS_DIR / preset).read_text(encoding='utf-8').splitlines()
  start = next(i for i, line in enumerate(lines) if line.startswith('#   python run.py'))
  command = ''
  for line in lines[start:]:
    command += ' ' + line.lstrip('#').strip().removesuffix('\\')
    if not line.rstrip().endswith('\\'):
      break
  arguments = shlex.split(command)
  assert arguments[:2] == ['python', 'run.py'], command
  return [argument.replace('--flagfile=configs/', f'--flagfile={CONFIGS_DIR}/')
          for argument in arguments[2:]]


@functools.lru_cache(maxsize=None)
def _encoder_params(*args, **kwargs) -> int:
  """count_encoder_params, once per architecture (R152-3x+SK takes seconds)."""
  return count_encoder_params(*args, **kwargs)


def _parse(arguments: list[str]) -> absl_flags.FlagValues:
  flag_values = absl_flags.FlagValues()
  flags_lib.define_flags(flag_values)
  flag_values(['run.py', *arguments])
  return flag_values


def test_every_preset_is_tested():
  assert set(PRESETS) == set(EXPECTED_ENCODER_MILLIONS)


@pytest.mark.parametrize('preset', PRESETS)
def test_preset_command_parses_validates_and_has_the_published_encoder_size(preset):
  arguments = _header_command(preset)
  assert f'--flagfile={CONFIGS_DIR}/{preset}' in arguments
  config = flags_lib.config_from_flags(_parse(arguments))  # Validates too.
  assert config.train.model_dir
  model = config.model
  encoder_params = _encoder_params(
      model.resnet_depth, model.width_multiplier, sk_ratio=model.sk_ratio,
      se_ratio=model.se_ratio, cifar_stem=model.use_cifar_stem(config.data.image_size))
  assert round(encoder_params / 1e6) == EXPECTED_ENCODER_MILLIONS[preset], encoder_params


@pytest.mark.parametrize('preset', ['cifar10_resnet18.flags', 'cpu_budget_cifar10.flags'])
def test_small_preset_builds_and_runs_its_model(preset):
  config = flags_lib.config_from_flags(_parse(_header_command(preset)))
  model = build_model(config, num_classes=10)
  images = tf.random.uniform([2, config.data.image_size, config.data.image_size, 3], seed=1)
  outputs = model(images, training=False)
  assert outputs['final_avg_pool'].shape == (2, 512)
  assert outputs['proj_head_output'].shape == (2, config.model.proj_out_dim)


def test_finetune_preset_overrides_the_pretraining_flags_before_it():
  config = flags_lib.config_from_flags(_parse(_header_command('finetune_1pct.flags')))
  assert (config.model.resnet_depth, config.model.width_multiplier) == (152, 3)
  assert config.model.sk_ratio == 0.0625
  assert config.train.train_mode == 'finetune' and config.train.train_epochs == 60
  assert config.data.dataset == 'imagenet2012_subset/1pct'
  assert (config.optim.learning_rate, config.optim.weight_decay) == (0.005, 0.0)


def test_flagfile_repeats_the_run(tmp_path):
  given = _parse([f'--flagfile={CONFIGS_DIR}/cifar10_resnet18.flags',
                  '--model_dir=/tmp/run one', '--data_dir=/data/cifar 10', '--cifar_stem=false',
                  '--learning_rate=0.123456789012345', '--sk_ratio=0.0625'])
  text = flags_lib.flags_to_flagfile(given)
  # Every set flag is written, defaults included, so a later default change keeps the run.
  written = [line for line in text.splitlines() if line.startswith('--')]
  assert len(written) == sum(given[name].value is not None
                             for name in flags_lib.all_flag_names())
  flagfile = tmp_path / 'flags.txt'
  flagfile.write_text(text, encoding='utf-8')
  repeated = _parse([f'--flagfile={flagfile}'])
  assert flags_lib.flag_values_dict(repeated) == flags_lib.flag_values_dict(given)
  assert repeated['model_dir'].value == '/tmp/run one'
  assert repeated['learning_rate'].value == 0.123456789012345
  # Flags given after it still override it.
  assert _parse([f'--flagfile={flagfile}', '--train_epochs=7'])['train_epochs'].value == 7


def test_flagfile_leaves_unset_optional_flags_unset(tmp_path):
  given = _parse(['--model_dir=/tmp/run'])
  text = flags_lib.flags_to_flagfile(given)
  assert '--data_dir' not in text and '--cifar_stem' not in text
  flagfile = tmp_path / 'flags.txt'
  flagfile.write_text(text, encoding='utf-8')
  repeated = _parse([f'--flagfile={flagfile}'])
  assert repeated['data_dir'].value is None and repeated['cifar_stem'].value is None
  assert flags_lib.flag_values_dict(repeated) == flags_lib.flag_values_dict(given)


def test_write_text_atomic_through_gfile_leaves_no_temporary_file():
  directory = 'ram://test_configs/run'
  run_dir.write_text_atomic(f'{directory}/flags.txt', 'old\n')
  run_dir.write_text_atomic(f'{directory}/flags.txt', '--seed=3\n')
  with tf.io.gfile.GFile(f'{directory}/flags.txt') as text_file:
    assert text_file.read() == '--seed=3\n'
  assert tf.io.gfile.listdir(directory) == ['flags.txt']
