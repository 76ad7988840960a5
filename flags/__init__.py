"""Command-line flags of tf_simclr and their adapter to the typed config.

Every flag of google-research/simclr `tf2/run.py` is defined here with the same name,
default and meaning (except `--use_tpu`, False here), plus flags of ours. Importing
this package defines them all on `absl.flags.FLAGS` (once); `define_flags(flag_values)`
defines them on another `FlagValues`, e.g. a fresh one in tests. This package is the
only code that reads flag values: the library takes the `Config` built by
`config_from_flags`.
"""

import dataclasses
import json
import os
from typing import Any, Optional, Union

from absl import flags as absl_flags

from flags import checkpoints
from flags import data
from flags import infra
from flags import model
from flags import optimization
from flags import train
from tf_simclr import config as config_lib

# Topic modules, in the order of the docs/flags.md tables.
TOPIC_MODULES = (optimization, data, model, train, checkpoints, infra)


def official_flag_names() -> tuple[str, ...]:
  """The 48 flag names of google-research/simclr tf2/run.py, by topic."""
  return tuple(name for module in TOPIC_MODULES for name in module.OFFICIAL_FLAGS)


def our_flag_names() -> tuple[str, ...]:
  """The flags this project adds, by topic."""
  return tuple(name for module in TOPIC_MODULES for name in module.OUR_FLAGS)


def all_flag_names() -> tuple[str, ...]:
  """Official flag names, then ours."""
  return official_flag_names() + our_flag_names()


def define_flags(flag_values: absl_flags.FlagValues = absl_flags.FLAGS) -> None:
  """Defines all flags on `flag_values`; a no-op when they are already defined.

  Raises:
    absl.flags.DuplicateFlagError: when only some of them are defined there (a
      name clash with another module's flag).
  """
  if all(name in flag_values for name in all_flag_names()):
    return
  for module in TOPIC_MODULES:
    module.define_flags(flag_values)


def config_from_flags(flag_values: absl_flags.FlagValues = absl_flags.FLAGS,
                      num_replicas: Optional[int] = 1) -> config_lib.Config:
  """Builds the typed config from parsed flags and validates it.

  Args:
    flag_values: parsed flags holding all of `all_flag_names()`.
    num_replicas: replicas the batch sizes must divide; None leaves that check to the
      caller (`config_lib.validate_replicas` once the strategy exists, as run.py does).

  Returns:
    The frozen `Config`; each config field takes the flag of the same name.

  Raises:
    ValueError: one line naming the flag, for an invalid value or combination.
  """
  if not flag_values.is_parsed():
    raise ValueError('Flags are not parsed yet: call config_from_flags after '
                     'absl.app.run (or flag_values(argv)).')
  sections = {}
  for section in dataclasses.fields(config_lib.Config):
    section_cls = section.default_factory  # type: ignore[misc]
    sections[section.name] = section_cls(**{
        field.name: _expand_home(field.name, flag_values[field.name].value)
        for field in dataclasses.fields(section_cls)})
  config = config_lib.Config(**sections)
  config_lib.validate(config, num_replicas)
  return config


def _expand_home(name: str, value: Any) -> Any:
  """`~/x` -> `$HOME/x` for path flags (*_dir, *checkpoint): the shell leaves `~`
  in `--model_dir=~/x` unexpanded, which would create a folder named `~`."""
  if (isinstance(value, str) and value.startswith('~') and
      (name.endswith('_dir') or name.endswith('checkpoint'))):
    return os.path.expanduser(value)
  return value


def flag_values_dict(flag_values: absl_flags.FlagValues = absl_flags.FLAGS
                     ) -> dict[str, Any]:
  """{name: value} of all our flags (absl's own flags left out)."""
  return {name: flag_values[name].value for name in all_flag_names()}


def flags_to_json(flag_values: absl_flags.FlagValues = absl_flags.FLAGS,
                  model_config: Optional[config_lib.ModelConfig] = None) -> str:
  """JSON text of all our flags, for `model_dir/flags.json`.

  `model_config` overrides the model-structure values (e.g. the architecture read from
  an official --checkpoint), so the file describes the model that was built.
  """
  values = flag_values_dict(flag_values)
  if model_config is not None:
    values.update({field.name: getattr(model_config, field.name)
                   for field in dataclasses.fields(model_config)})
  return json.dumps(values, indent=2, sort_keys=True)


def explicit_flag_names(flag_values: absl_flags.FlagValues = absl_flags.FLAGS
                        ) -> frozenset[str]:
  """Our flags given on the command line (as opposed to left at their defaults)."""
  return frozenset(name for name in all_flag_names() if flag_values[name].present)


def override_flags(values: dict[str, Any],
                   flag_values: absl_flags.FlagValues = absl_flags.FLAGS) -> None:
  """Sets flag values the run changed (e.g. the linear head turned off for unlabelled
  data), so that flags.json and flags.txt describe the model that is trained; a flag
  stays `present` (given on the command line) or not as it was."""
  for name, value in values.items():
    flag_values[name].value = value


def explicit_flag_names(flag_values: absl_flags.FlagValues = absl_flags.FLAGS
                        ) -> frozenset[str]:
  """Names of our flags given on the command line (or in a --flagfile)."""
  return frozenset(name for name in all_flag_names() if flag_values[name].present)


FLAGFILE_HEADER = (
    '# The flags of a tf_simclr run, one per line (absl flagfile); to repeat the run:\n'
    '#   python run.py --flagfile=<this file>\n'
    '# Flags given after --flagfile override these.\n')


def flags_to_flagfile(flag_values: absl_flags.FlagValues = absl_flags.FLAGS,
                      model_config: Optional[config_lib.ModelConfig] = None) -> str:
  """Text of an absl flagfile that repeats the run: `--name=value` for all our flags.

  Every flag is written, not only those given, so the file means the same run if a
  default changes later; a flag whose value is None (unset optional flags such as
  --data_dir or --cifar_stem) is left out, which keeps it None. `model_config`
  overrides the model-structure values, as in `flags_to_json`.
  """
  overrides = {} if model_config is None else {
      field.name: getattr(model_config, field.name) for field in dataclasses.fields(model_config)}
  lines = []
  for name in all_flag_names():
    flag = flag_values[name]
    value = overrides.get(name, flag.value)
    if value is not None:
      lines.append(flag._serialize(value) if name in overrides else flag.serialize())  # pylint: disable=protected-access
  return FLAGFILE_HEADER + '\n'.join(lines) + '\n'


def config_from_flags_json(path: Union[str, os.PathLike[str]]
                           ) -> config_lib.Config:
  """Rebuilds a run's `Config` from its `flags.json`.

  Works with files written by `flags_to_json` and by the official code (whose
  extra absl flags such as `logtostderr` are ignored). Flags missing from the file
  take their defaults. Values are checked as on the command line.

  Raises:
    FileNotFoundError: the file does not exist.
    ValueError: one line naming the file and flag, for a bad value or bad JSON.
  """
  from tf_simclr import run_dir  # pylint: disable=g-import-not-at-top
  path = os.fspath(path)
  values = run_dir.load_flags_json(path)
  flag_values = absl_flags.FlagValues()
  define_flags(flag_values)
  for name in all_flag_names():
    if name not in values:
      continue
    value = values[name]
    flag = flag_values[name]
    try:
      if value is None and flag.default is not None:
        raise ValueError(f'null is not allowed (default {flag.default!r})')
      if value is None:
        flag.value = None
      else:
        flag.parse(value)
    except (absl_flags.Error, TypeError, ValueError) as error:
      raise ValueError(f'{path}: flag {name}={value!r} is invalid: '
                       f'{_one_line(error)}') from None
  flag_values.mark_as_parsed()
  try:
    return config_from_flags(flag_values)
  except ValueError as error:
    raise ValueError(f'{path}: {error}') from None


def _one_line(error: Exception) -> str:
  return ' '.join(str(error).split())


define_flags(absl_flags.FLAGS)
