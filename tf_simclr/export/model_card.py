"""The model card written into every export: README.md, model_card.json, Kaggle metadata.

An export directory holds, next to the SavedModel files:

* `README.md`: the card for people: what the model is, its input contract (float32
  RGB in [0, 1], [batch, height, width, 3]), outputs, architecture flags, parameter
  counts, training data, split and steps, eval results (from the run's result.json),
  the commands that made it and the licence;
* `model_card.json`: the same facts for programs (`read_card`; `python -m
  tf_simclr.embed` takes the image size from it);
* `model-instance-metadata.json`: the fields of a Kaggle Models instance
  (`kaggle models instances create -p EXPORT_DIR` after filling in the slugs).
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import sys
from typing import Any, Optional

import tensorflow as tf

from tf_simclr import run_dir

README = 'README.md'
CARD_JSON = 'model_card.json'
KAGGLE_JSON = 'model-instance-metadata.json'
DEFAULT_LICENSE = 'Apache-2.0'
# Architecture fields of SimCLRModel.get_config() shown in the card.
_ARCHITECTURE_KEYS = ('resnet_depth', 'width_multiplier', 'sk_ratio', 'se_ratio', 'cifar_stem',
                      'batch_norm_decay', 'global_bn', 'proj_head_mode', 'proj_out_dim',
                      'num_proj_layers', 'ft_proj_selector', 'num_classes', 'train_mode',
                      'lineareval_while_pretraining', 'fine_tune_after_block')
# Training-data and schedule flags shown in the card's training section.
_TRAINING_KEYS = ('dataset', 'data_dir', 'train_split', 'eval_split', 'image_folder_labels',
                  'image_size', 'train_mode', 'train_batch_size', 'train_epochs', 'train_steps',
                  'optimizer', 'learning_rate', 'learning_rate_scaling', 'warmup_epochs',
                  'weight_decay', 'temperature', 'color_jitter_strength', 'use_blur',
                  'mixed_precision', 'seed')


def _num_scalars(variables: Any) -> int:
  return int(sum(int(tf.size(variable)) for variable in variables))


def _command_line() -> str:
  """This process's command, e.g. `python run.py --flag=...` or `python -m hub_export ...`."""
  argv = list(sys.argv)
  if argv and argv[0].endswith('__main__.py'):
    argv[0] = '-m ' + os.path.basename(os.path.dirname(argv[0]))
  elif argv:
    argv[0] = os.path.basename(argv[0]) if argv[0].endswith('run.py') else argv[0]
  return 'python ' + ' '.join(argv[:1] + [shlex.quote(arg) for arg in argv[1:]])


def training_command(flags: dict[str, Any]) -> str:
  """`python run.py` with the flags that differ from their defaults, in name order."""
  from tf_simclr import config as config_lib  # pylint: disable=g-import-not-at-top
  defaults = config_lib.Config().flat_dict()
  parts = ['python run.py']
  for name in sorted(flags):
    value = flags[name]
    if name in defaults and value != defaults[name] and value is not None:
      parts.append(shlex.quote(f'--{name}={value}'))
  return ' '.join(parts)


def _read_results(model_dir: Optional[str]) -> Optional[dict[str, Any]]:
  """Eval results of `model_dir/result.json` (numbers and step), or None."""
  result = run_dir.read_result(model_dir) if model_dir else None
  if result is None:
    return None
  return {key: value for key, value in result.items()
          if key.startswith('eval/') or key in ('global_step', 'num_examples', 'linear_eval')}


def build_card(model: Any,
               *,
               image_size: Optional[int] = None,
               weight_decay: float = 0.0,
               config: Any = None,
               model_dir: Optional[str] = None,
               checkpoint: Optional[str] = None,
               step: Optional[int] = None,
               command: Optional[str] = None,
               license_name: str = DEFAULT_LICENSE) -> dict[str, Any]:
  """The card's facts as a JSON-serialisable dict.

  Args:
    model: the exported model (a SimCLRModel or a `build_resnet` encoder).
    image_size: the training image size (None: unknown).
    weight_decay: the coefficient of the exported regularization losses.
    config: the run's `tf_simclr.config.Config`, for the flags (None: unknown).
    model_dir: the run's directory; its result.json gives the eval results.
    checkpoint: the checkpoint the weights come from.
    step: the training step of the weights.
    command: the command that made the export (default: this process's).
    license_name: the licence of the weights (SPDX name).
  """
  from tf_simclr.export import hub_module  # pylint: disable=g-import-not-at-top
  import tf_simclr  # pylint: disable=g-import-not-at-top
  encoder = hub_module._encoder_of(model)  # pylint: disable=protected-access
  model_config = model.get_config() if hasattr(model, 'get_config') else {}
  architecture = {key: model_config[key] for key in _ARCHITECTURE_KEYS if key in model_config}
  outputs = {}
  for name, tensor in (getattr(encoder, 'output', None) or {}).items():
    outputs[name] = [None] + [int(d) if d is not None else None for d in tensor.shape[1:]]
  feature_dim = outputs.get(hub_module.FEATURE_VECTOR_KEY, [None, None])[-1]
  flags = config.flat_dict() if config is not None else None
  card = {
      'name': (f'SimCLR ResNet-{architecture.get("resnet_depth", "?")} '
               f'{architecture.get("width_multiplier", "?")}x encoder (tf_simclr)'),
      'format': 'TF2 SavedModel, TF Hub reusable (hub.KerasLayer, keras.layers.TFSMLayer, '
                'tf.saved_model.load)',
      'input': {'name': 'images', 'dtype': 'float32', 'shape': [None, None, None, 3],
                'color': 'RGB', 'range': [0.0, 1.0], 'training_image_size': image_size or None,
                'contract': hub_module.INPUT_CONTRACT},
      'outputs': {
          'feature_vector': {'call': '__call__(images) / hub.KerasLayer',
                             'endpoint': hub_module.FEATURE_VECTOR_KEY,
                             'dtype': 'float32', 'shape': [None, feature_dim]},
          'endpoints': {'call': "serve(images) / train_call(images) / signature "
                                f"'{hub_module.SERVING_SIGNATURE}'",
                        'encoder_shapes': outputs,
                        'names': [name for name in hub_module.ENDPOINT_NAMES]},
      },
      'architecture': architecture,
      'parameters': {
          'total': _num_scalars(model.variables),
          'encoder_trainable': _num_scalars(encoder.trainable_variables),
          'encoder_total': _num_scalars(encoder.variables),
      },
      'regularization_weight_decay': weight_decay,
      'training': ({key: flags.get(key) for key in _TRAINING_KEYS if key in flags}
                   if flags else None),
      'step': step,
      'checkpoint': checkpoint,
      'eval_results': _read_results(model_dir),
      'command': command or _command_line(),
      'training_command': training_command(flags) if flags else None,
      'flags': flags,
      'license': license_name,
      'created': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ'),
      'versions': {'tf_simclr': tf_simclr.__version__, 'tensorflow': tf.__version__},
  }
  return card


def _value(value: Any) -> str:
  return f'`{json.dumps(value)}`' if not isinstance(value, str) else f'`{value}`'


def render_readme(card: dict[str, Any]) -> str:
  """README.md text of a card."""
  size = card['input']['training_image_size']
  feature = card['outputs']['feature_vector']
  params = card['parameters']
  lines = [
      f'# {card["name"]}', '',
      f'{card["format"]}. Licence: {card["license"]}.', '',
      '## Input', '',
      f'`{card["input"]["contract"]}`. Trained at {size}x{size} pixels.' if size else
      f'`{card["input"]["contract"]}`.', '',
      '## Outputs', '',
      f'- `{feature["call"]}`: the feature vector `{feature["endpoint"]}`, float32 '
      f'{feature["shape"]}.',
      f'- `{card["outputs"]["endpoints"]["call"]}`: a dict of float32 endpoints among '
      + ', '.join(f'`{name}`' for name in card['outputs']['endpoints']['names']) + '.',
      '', '## Use', '', '```python',
      'import tensorflow_hub as hub  # tf_keras',
      'features = hub.KerasLayer(EXPORT_DIR, trainable=True)(images)',
      'import keras  # Keras 3',
      "layer = keras.layers.TFSMLayer(EXPORT_DIR, call_endpoint='serve', "
      "call_training_endpoint='train_call')",
      "features = layer(images)['final_avg_pool']",
      '```', '',
      '## Architecture', '',
      '| field | value |', '|---|---|',
      *[f'| {key} | {_value(value)} |' for key, value in card['architecture'].items()],
      f'| parameters (all variables) | {params["total"]:,} |',
      f'| encoder trainable parameters | {params["encoder_trainable"]:,} |',
      '', '## Training', '',
  ]
  if card['training']:
    lines += ['| flag | value |', '|---|---|',
              *[f'| {key} | {_value(value)} |' for key, value in card['training'].items()]]
  else:
    lines.append('Unknown (exported without the run\'s flags).')
  lines += ['', f'Weights of step {card["step"]} ({card["checkpoint"]}).' if card['step']
            is not None else 'Training step unknown.', '', '## Eval results', '']
  results = card['eval_results']
  if results:
    lines += [f'From the run\'s result.json (step {results.get("global_step")}):', '',
              '| metric | value |', '|---|---|',
              *[f'| {key} | {_value(value)} |' for key, value in results.items()
                if key != 'global_step']]
  else:
    lines.append('None: the run had no result.json when this was exported.')
  lines += ['', '## Commands', '', 'This export:', '', '```', card['command'], '```']
  if card['training_command']:
    lines += ['', 'Training (flags that differ from the defaults; all in model_card.json):',
              '', '```', card['training_command'], '```']
  lines += ['', f'Created {card["created"]} with tf_simclr {card["versions"]["tf_simclr"]}, '
            f'TensorFlow {card["versions"]["tensorflow"]}.', '']
  return '\n'.join(lines)


def kaggle_metadata(card: dict[str, Any]) -> dict[str, Any]:
  """Kaggle Models instance metadata (`kaggle models instances create -p DIR`)."""
  training = card['training'] or {}
  data = [training['dataset']] if training.get('dataset') else []
  return {
      'ownerSlug': 'INSERT_OWNER_SLUG_HERE',
      'modelSlug': 'INSERT_EXISTING_MODEL_SLUG_HERE',
      'instanceSlug': 'INSERT_INSTANCE_SLUG_HERE',
      'framework': 'tensorFlow2',
      'overview': f'{card["name"]}. {card["input"]["contract"]}.',
      'usage': render_readme(card),
      'licenseName': card['license'],
      'fineTunable': True,
      'trainingData': data,
      'modelInstanceType': 'Unspecified',
  }


def write_card(export_dir: str, card: dict[str, Any]) -> None:
  """Writes README.md, model_card.json and the Kaggle metadata into `export_dir`."""
  files = {README: render_readme(card),
           CARD_JSON: json.dumps(card, indent=2, sort_keys=True) + '\n',
           KAGGLE_JSON: json.dumps(kaggle_metadata(card), indent=2) + '\n'}
  for name, text in files.items():
    with tf.io.gfile.GFile(os.path.join(export_dir, name), 'w') as card_file:
      card_file.write(text)


def read_card(export_dir: str, flag: str = '--export_dir') -> dict[str, Any]:
  """The `model_card.json` of an export.

  Raises:
    FileNotFoundError: one line when the export has no card (made before model cards,
      or not by tf_simclr) or is not an export.
  """
  if not tf.io.gfile.exists(os.path.join(export_dir, 'saved_model.pb')):
    raise FileNotFoundError(f'{flag}={export_dir} is not a SavedModel (no saved_model.pb); '
                            'pass a hub export directory such as MODEL_DIR/saved_model/<step>.')
  path = os.path.join(export_dir, CARD_JSON)
  try:
    with tf.io.gfile.GFile(path) as card_file:
      return json.load(card_file)
  except tf.errors.NotFoundError:
    raise FileNotFoundError(
        f'{flag}={export_dir} has no model card ({CARD_JSON}): it was exported before '
        'model cards or not by tf_simclr; re-export it with `python -m hub_export '
        '--model_dir=RUN --export_dir=NEW_DIR`.') from None
  except ValueError as error:
    raise ValueError(f'{path} is not valid JSON ({error}); re-export the model.') from None
