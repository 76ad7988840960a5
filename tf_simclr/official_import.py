"""Imports the published google-research/simclr TF2 models into our Keras 3 model.

The official tf2 code saves its `model.Model` in two forms, and the released
SimCLRv1/v2 weights (gs://simclr-checkpoints-tf2/...) come in the same forms:

- object checkpoints, `tf.train.Checkpoint(model=, global_step=, optimizer=)` written
  by its run.py's CheckpointManager: a `ckpt-N` prefix, or a directory with a
  `checkpoint` file;
- SavedModels of its `build_saved_model`: a directory holding `saved_model.pb` (its
  `variables/variables` checkpoint has an object graph too), a `saved_model/` folder
  of numbered exports (the newest is taken), or a run directory holding one.

Tensors are found through the checkpoint's object graph (`_CHECKPOINTABLE_OBJECT_GRAPH`),
never by key strings: an object checkpoint stores each variable under one path only
(in a SavedModel the trainable ones sit under `trainable_variables_list/N`). The
official ResNet is the graph node with the children `initial_conv_relu_max_pool` and
`block_groups` (wherever it sits: no root name is assumed); the heads are its
siblings with `linear_layers` (projection head) and `linear_layer` (supervised head).
The architecture (depth, width, selective kernels, squeeze-excitation, stem, heads)
is read from that structure and the tensor shapes alone. Every official encoder/head
tensor maps to exactly one of our variables; they are read and assigned one at a
time, so an import needs about the model's size in memory on top of the model.

Example:
  source = official_import.find_source('gs://.../r50_1x_sk0/saved_model/')
  architecture = official_import.read_architecture(source)
  config = official_import.config_for_architecture(config, architecture)
  model = build_model(config, architecture.num_classes)
  official_import.load_weights(model, source)
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Collection, Optional

import tensorflow as tf

from tf_simclr import checkpoints
from tf_simclr import config as config_lib
from tf_simclr.models import resnet as resnet_lib

OBJECT_GRAPH_KEY = '_CHECKPOINTABLE_OBJECT_GRAPH'
SK_RATIO_DEFAULT = 0.0625  # SimCLRv2's value; every published SK model uses it.
# Config fields of the model structure that an official checkpoint decides.
STRUCTURE_FIELDS = ('resnet_depth', 'width_multiplier', 'sk_ratio', 'se_ratio', 'cifar_stem',
                    'proj_head_mode', 'num_proj_layers', 'proj_out_dim')


@dataclasses.dataclass(frozen=True)
class OfficialSource:
  """Where an official model's variables are."""
  path: str     # As given.
  prefix: str   # The checkpoint prefix holding the variables.
  kind: str     # 'checkpoint' or 'saved_model'.


@dataclasses.dataclass(frozen=True)
class OfficialArchitecture:
  """The model structure read from an official checkpoint."""
  resnet_depth: int
  width_multiplier: int
  sk_ratio: float
  se_ratio: float
  cifar_stem: bool
  proj_head_mode: str           # 'nonlinear' (>= 1 layer) or 'none'.
  num_proj_layers: int
  proj_out_dim: int
  num_classes: Optional[int]    # Supervised head classes; None without one.
  supervised_input_dim: Optional[int]
  # (filters, squeeze dim) of each selective-kernel / squeeze-excitation layer.
  sk_dims: tuple[tuple[int, int], ...] = ()
  se_dims: tuple[tuple[int, int], ...] = ()

  def describe(self) -> str:
    """One line, e.g. 'ResNet-50 2x, sk_ratio 0.0625, ... supervised head 1000 classes'."""
    stem = 'CIFAR stem' if self.cifar_stem else 'ImageNet stem'
    head = ('no projection head' if self.proj_head_mode == 'none' else
            f'projection head {self.num_proj_layers} layers -> {self.proj_out_dim}')
    supervised = (f'supervised head {self.num_classes} classes' if self.num_classes
                  else 'no supervised head')
    return (f'ResNet-{self.resnet_depth} {self.width_multiplier}x, sk_ratio '
            f'{self.sk_ratio:g}, se_ratio {self.se_ratio:g}, {stem}, {head}, {supervised}')

  def encoder_dim(self) -> int:
    return resnet_lib.output_channels(self.resnet_depth, self.width_multiplier)

  def accepts_ratio(self, name: str, value: float) -> bool:
    """Whether --sk_ratio / --se_ratio `value` builds the same layers as the checkpoint."""
    dims = self.sk_dims if name == 'sk_ratio' else self.se_dims
    found = self.sk_ratio if name == 'sk_ratio' else self.se_ratio
    if (value > 0) != (found > 0):
      return False
    minimum = resnet_lib.SK_MIN_DIM if name == 'sk_ratio' else 1
    return all(max(int(filters * value), minimum) == dim for filters, dim in dims)


# ---------------------------------------------------------------------------------
# Finding and reading the source.


def _is_saved_model_dir(path: str) -> bool:
  return (tf.io.gfile.exists(os.path.join(path, 'saved_model.pb')) or
          tf.io.gfile.exists(os.path.join(path, 'saved_model.pbtxt')))


def _resolve(path: str, flag_name: str) -> tuple[str, str]:
  """(checkpoint prefix, kind) for a checkpoint prefix or a directory; FileNotFoundError."""
  if tf.io.gfile.isdir(path):
    if _is_saved_model_dir(path):
      return os.path.join(path, 'variables', 'variables'), 'saved_model'
    latest = tf.train.latest_checkpoint(path)
    if latest is not None:
      return latest, 'checkpoint'
    exports = os.path.join(path, 'saved_model')
    if tf.io.gfile.isdir(exports):
      return _resolve(exports, flag_name)
    steps = sorted((int(name.strip('/')) for name in tf.io.gfile.listdir(path)
                    if name.strip('/').isdigit()), reverse=True)
    for step in steps:
      if _is_saved_model_dir(os.path.join(path, str(step))):
        return os.path.join(path, str(step), 'variables', 'variables'), 'saved_model'
    raise FileNotFoundError(
        f'{flag_name}={path} is a directory without checkpoints or SavedModels; pass a '
        'ckpt-N prefix, a directory with a `checkpoint` file, or a saved_model directory.')
  if tf.io.gfile.exists(path + '.index'):
    return path, 'checkpoint'
  if path.endswith('.index') and tf.io.gfile.exists(path):
    return path[:-len('.index')], 'checkpoint'
  raise FileNotFoundError(
      f'{flag_name}={path} does not exist; pass a checkpoint prefix (e.g. model_dir/ckpt-100), '
      'a directory holding checkpoints, or a saved_model directory.')


class _ObjectGraph:
  """A checkpoint's object graph: children by name, variable keys, shapes."""

  def __init__(self, prefix: str, flag_name: str) -> None:
    from tensorflow.core.protobuf import trackable_object_graph_pb2  # pylint: disable=g-import-not-at-top
    self.prefix = prefix
    try:
      self.reader = checkpoints.checkpoint_reader(prefix)
      self.shapes = self.reader.get_variable_to_shape_map()
    except (tf.errors.OpError, ValueError) as error:
      raise ValueError(f'{flag_name}: {prefix} cannot be read as a checkpoint '
                       f'({_first_line(error)}); the files may be truncated or not a '
                       'checkpoint.') from None
    self.proto = None
    if OBJECT_GRAPH_KEY in self.shapes:
      proto = trackable_object_graph_pb2.TrackableObjectGraph()
      try:
        proto.ParseFromString(self.reader.get_tensor(OBJECT_GRAPH_KEY))
      except Exception as error:  # pylint: disable=broad-except  (DecodeError, OpError)
        raise ValueError(f'{flag_name}: the object graph of {prefix} cannot be read '
                         f'({_first_line(error)}); the checkpoint may be truncated.') from None
      self.proto = proto

  def children(self, node: int) -> dict[str, int]:
    return {child.local_name: child.node_id for child in self.proto.nodes[node].children}

  def child(self, node: int, *names: str) -> Optional[int]:
    for name in names:
      if node is None:
        return None
      node = self.children(node).get(name)
    return node

  def listed(self, node: Optional[int]) -> list[int]:
    """The elements of a tracked list node, in list order."""
    if node is None:
      return []
    items = [(int(name), child) for name, child in self.children(node).items() if name.isdigit()]
    return [child for _, child in sorted(items)]

  def variable_key(self, node: int) -> Optional[str]:
    for attribute in self.proto.nodes[node].attributes:
      if attribute.name == 'VARIABLE_VALUE':
        return attribute.checkpoint_key
    return None

  def find(self, *names: str) -> list[int]:
    """Nodes having all of `names` among their children."""
    wanted = set(names)
    return [index for index, node in enumerate(self.proto.nodes)
            if wanted <= {child.local_name for child in node.children}]

  def reachable_variables(self, node: int) -> set[int]:
    """Variable nodes reachable from `node` along any children."""
    seen, stack, found = set(), [node], set()
    while stack:
      current = stack.pop()
      if current in seen:
        continue
      seen.add(current)
      if self.variable_key(current) is not None:
        found.add(current)
      stack.extend(child.node_id for child in self.proto.nodes[current].children)
    return found


def _first_line(error: BaseException) -> str:
  text = str(error).strip()
  return ' '.join(text.splitlines()[0].split())[:200] if text else type(error).__name__


def find_source(path: str, flag_name: str = '--checkpoint') -> Optional[OfficialSource]:
  """The official model at `path`, or None when `path` is one of our own checkpoints.

  Args:
    path: a `ckpt-N` prefix, a directory with a `checkpoint` file, a SavedModel
      directory, a `saved_model/` folder of numbered exports; local or any
      tf.io.gfile URL (gs://...).
    flag_name: named in error messages.

  Raises:
    FileNotFoundError: nothing loadable at `path`.
    ValueError: one line: a TF1 checkpoint (not supported), an unreadable or
      truncated file, or a checkpoint that is neither official nor ours.
  """
  prefix, kind = _resolve(path, flag_name)
  graph = _ObjectGraph(prefix, flag_name)
  if graph.proto is None:
    names = [name for name in graph.shapes if not name.startswith('_')]
    if any('.ATTRIBUTES' not in name for name in names) or re.search(r'model\.ckpt-\d+$', prefix):
      raise ValueError(
          f'{flag_name}={path} is a TF1 checkpoint (the original SimCLR code); TF1 checkpoints '
          'are not supported: use the TF2 conversion of the model from '
          'gs://simclr-checkpoints-tf2/ (docs/official-models.md).')
    raise ValueError(f'{flag_name}={path} has no object graph; it is neither an official '
                     'SimCLR tf2 checkpoint nor one of ours.')
  if graph.find('initial_conv_relu_max_pool', 'block_groups'):
    return OfficialSource(path=path, prefix=prefix, kind=kind)
  if kind == 'checkpoint' and graph.child(0, 'model') is not None:
    return None  # Ours (restoring it checks the rest).
  raise ValueError(f'{flag_name}={path} is neither an official SimCLR tf2 model (no ResNet '
                   'with block_groups in its object graph) nor a tf_simclr checkpoint; pass '
                   'a checkpoint or SavedModel of google-research/simclr tf2 or of tf_simclr.')


# ---------------------------------------------------------------------------------
# The official structure as units of tensors.


@dataclasses.dataclass
class _Unit:
  """One layer with weights: kind ('conv', 'bn', 'sk', 'se', 'dense'), tensors in order."""
  kind: str
  name: str
  nodes: list[tuple[str, int]]   # (role, variable node), canonical order.


def _conv_nodes(graph: _ObjectGraph, node: int) -> list[tuple[str, int]]:
  inner = graph.child(node, 'conv2d')  # Conv2dFixedPadding wraps a Conv2D.
  node = inner if inner is not None else node
  return [(role, graph.child(node, role)) for role in ('kernel', 'bias')
          if graph.child(node, role) is not None]


def _bn_nodes(graph: _ObjectGraph, node: int) -> list[tuple[str, int]]:
  for wrapper in ('bn', 'bn_relu'):  # BatchNormRelu.bn; LinearLayer.bn_relu.bn
    inner = graph.child(node, wrapper)
    if inner is not None:
      return _bn_nodes(graph, inner)
  return [(role, graph.child(node, role))
          for role in ('gamma', 'beta', 'moving_mean', 'moving_variance')
          if graph.child(node, role) is not None]


def _unit(graph: _ObjectGraph, node: int, name: str) -> Optional[_Unit]:
  """The unit of an official layer node; None for layers without weights."""
  children = graph.children(node)
  if 'conv2d_fixed_padding' in children:  # SK_Conv2D
    nodes = (_conv_nodes(graph, children['conv2d_fixed_padding']) +
             _bn_nodes(graph, children['batch_norm_relu']) +
             _conv_nodes(graph, children['conv2d_0']) +
             _bn_nodes(graph, children['batch_norm_relu_1']) +
             _conv_nodes(graph, children['conv2d_1']))
    return _Unit('sk', name, nodes)
  if 'se_reduce' in children:  # SE_Layer
    return _Unit('se', name, _conv_nodes(graph, children['se_reduce']) +
                 _conv_nodes(graph, children['se_expand']))
  if 'conv2d' in children or 'kernel' in children:
    return _Unit('conv', name, _conv_nodes(graph, node))
  if 'bn' in children or 'gamma' in children:
    return _Unit('bn', name, _bn_nodes(graph, node))
  return None


@dataclasses.dataclass
class _OfficialModel:
  """The official model's units, found in a checkpoint's object graph."""
  graph: _ObjectGraph
  model_node: Optional[int]
  stem: list[_Unit]
  stem_list: list[Optional[_Unit]]            # With None for weightless layers.
  blocks: list[list[tuple[str, list[Optional[_Unit]], list[_Unit]]]]  # kind, shortcut, rest
  projection: list[tuple[_Unit, _Unit]]       # (dense, bn) per layer.
  supervised: Optional[_Unit]


def _parse(source: OfficialSource, flag_name: str = '--checkpoint') -> _OfficialModel:
  graph = _ObjectGraph(source.prefix, flag_name)
  if graph.proto is None:
    raise ValueError(f'{flag_name}={source.path} has no object graph.')
  resnets = graph.find('initial_conv_relu_max_pool', 'block_groups')
  if len(resnets) != 1:
    raise ValueError(f'{flag_name}={source.path} holds {len(resnets)} official ResNets; '
                     'expected one.')
  resnet = resnets[0]
  parents = [index for index, node in enumerate(graph.proto.nodes)
             if any(child.node_id == resnet for child in node.children)]

  def head_score(parent: int) -> int:
    return sum(1 for child in graph.children(parent).values()
               if {'linear_layers', 'linear_layer'} & set(graph.children(child)))

  model_node = max(parents, key=head_score) if parents else None
  stem_list = [_unit(graph, node, f'stem/{index}') for index, node in
               enumerate(graph.listed(graph.child(resnet, 'initial_conv_relu_max_pool')))]
  blocks = []
  for group_index, group in enumerate(graph.listed(graph.child(resnet, 'block_groups'))):
    group_blocks = []
    for block_index, block in enumerate(graph.listed(graph.child(group, 'layers'))):
      prefix = f'block_group{group_index + 1}/block_{block_index}'
      children = graph.children(block)
      if 'conv_relu_dropblock_layers' in children:
        kind, shortcut_name, rest_name = 'bottleneck', 'projection_layers', 'conv_relu_dropblock_layers'
      elif 'conv2d_bn_layers' in children:
        kind, shortcut_name, rest_name = 'basic', 'shortcut_layers', 'conv2d_bn_layers'
      else:
        raise ValueError(f'{flag_name}={source.path}: block {prefix} has neither '
                         'conv_relu_dropblock_layers nor conv2d_bn_layers; not an official '
                         'SimCLR ResNet.')
      shortcut = [_unit(graph, node, f'{prefix}/shortcut/{index}')
                  for index, node in enumerate(graph.listed(children.get(shortcut_name)))]
      rest = [_unit(graph, node, f'{prefix}/residual/{index}')
              for index, node in enumerate(graph.listed(children.get(rest_name)))]
      rest = [unit for unit in rest if unit is not None]
      if 'se_layer' in children:  # Basic blocks keep SE outside the list.
        rest.append(_unit(graph, children['se_layer'], f'{prefix}/se'))
      group_blocks.append((kind, shortcut, rest))
    blocks.append(group_blocks)
  projection, supervised = [], None
  if model_node is not None:
    for child in graph.children(model_node).values():
      grandchildren = graph.children(child)
      if 'linear_layers' in grandchildren:
        for index, layer in enumerate(graph.listed(grandchildren['linear_layers'])):
          dense = _Unit('dense', f'projection_head/{index}/dense',
                        _conv_nodes(graph, graph.child(layer, 'dense')))
          bn = _Unit('bn', f'projection_head/{index}/bn', _bn_nodes(graph, layer))
          projection.append((dense, bn))
      elif 'linear_layer' in grandchildren:
        dense = graph.child(grandchildren['linear_layer'], 'dense')
        supervised = _Unit('dense', 'supervised_head', _conv_nodes(graph, dense))
  return _OfficialModel(graph, model_node, [u for u in stem_list if u is not None], stem_list,
                        blocks, projection, supervised)


def _shape(graph: _ObjectGraph, node: int) -> list[int]:
  return list(graph.shapes[graph.variable_key(node)])


def _ratio(dims: list[tuple[int, int]], minimum: int, preferred: float) -> float:
  """A ratio r with max(int(filters * r), minimum) == dim for all (filters, dim)."""
  candidates = [preferred] + [dim / filters for filters, dim in sorted(dims, reverse=True)]
  for ratio in candidates:
    if all(max(int(filters * ratio), minimum) == dim for filters, dim in dims):
      return ratio
  return -1.0


def read_architecture(source: OfficialSource,
                      flag_name: str = '--checkpoint') -> OfficialArchitecture:
  """The architecture of the official model at `source`, from structure and shapes.

  Raises:
    ValueError: one line when the structure is not one our model can hold.
  """
  return _architecture(_parse(source, flag_name), source, flag_name)


def _architecture(parsed: _OfficialModel, source: OfficialSource,
                  flag_name: str) -> OfficialArchitecture:
  graph = parsed.graph

  def bad(what: str) -> ValueError:
    return ValueError(f'{flag_name}={source.path}: {what}; this is not an official SimCLR '
                      'model that tf_simclr can import.')

  if len(parsed.blocks) != 4 or not all(parsed.blocks):
    raise bad(f'{len(parsed.blocks)} block groups (expected 4 non-empty ones)')
  kinds = {kind for group in parsed.blocks for kind, _, _ in group}
  if len(kinds) != 1:
    raise bad('basic and bottleneck blocks mixed')
  kind = kinds.pop()
  counts = tuple(len(group) for group in parsed.blocks)
  depths = [depth for depth, spec in resnet_lib.RESNET_SPECS.items() if spec == (kind, counts)]
  if not depths:
    raise bad(f'{kind} blocks per group {counts} match no ResNet depth')
  first_conv = parsed.blocks[0][0][2][0]
  if first_conv.kind != 'conv':
    raise bad('the first block does not start with a convolution')
  width_channels = _shape(graph, first_conv.nodes[0][1])[-1]
  if width_channels % 64:
    raise bad(f'block_group1 has {width_channels} channels, not a multiple of 64')
  width = width_channels // 64
  stem_convs = [unit for unit in parsed.stem if unit.kind == 'conv']
  if not stem_convs:
    raise bad('no stem convolution')
  stem_kernel = _shape(graph, stem_convs[0].nodes[0][1])
  cifar_stem = len(stem_convs) == 1 and stem_kernel[0] == 3
  resnet_d = len(stem_convs) == 3 or any(
      shortcut and shortcut[0] is None for group in parsed.blocks for _, shortcut, _ in group)
  sk_dims, se_dims = [], []
  for group_index, group in enumerate(parsed.blocks):
    filters = width_channels * 2**group_index
    for _, _, rest in group:
      for unit in rest:
        if unit.kind == 'sk':
          sk_dims.append((filters, _shape(graph, unit.nodes[-1][1])[2]))  # mixing conv input
        elif unit.kind == 'se':
          se_dims.append((filters, _shape(graph, unit.nodes[0][1])[-1]))  # reduce output
  if sk_dims:
    sk_ratio = _ratio(sk_dims, resnet_lib.SK_MIN_DIM, SK_RATIO_DEFAULT)
    if sk_ratio < 0:
      raise bad(f'selective-kernel squeeze sizes {sk_dims[:3]} fit no sk_ratio')
  else:
    sk_ratio = SK_RATIO_DEFAULT if resnet_d else 0.0
  se_ratio = 0.0
  if se_dims:
    se_ratio = _ratio(se_dims, 1, se_dims[-1][1] / se_dims[-1][0])
    if se_ratio < 0:
      raise bad(f'squeeze-excitation sizes {se_dims[:3]} fit no se_ratio')
  num_classes = supervised_input_dim = None
  if parsed.supervised is not None:
    kernel_shape = _shape(graph, parsed.supervised.nodes[0][1])
    supervised_input_dim, num_classes = kernel_shape
  num_proj_layers = len(parsed.projection)
  proj_out_dim = (_shape(graph, parsed.projection[-1][0].nodes[0][1])[-1]
                  if parsed.projection else config_lib.ModelConfig.proj_out_dim)
  return OfficialArchitecture(
      resnet_depth=depths[0], width_multiplier=width, sk_ratio=sk_ratio, se_ratio=se_ratio,
      cifar_stem=cifar_stem, proj_head_mode='nonlinear' if num_proj_layers else 'none',
      num_proj_layers=num_proj_layers or config_lib.ModelConfig.num_proj_layers,
      proj_out_dim=proj_out_dim, num_classes=num_classes,
      supervised_input_dim=supervised_input_dim, sk_dims=tuple(sk_dims),
      se_dims=tuple(se_dims))


# ---------------------------------------------------------------------------------
# Config: the found architecture, and flags that contradict it.


def config_for_architecture(config: config_lib.Config, architecture: OfficialArchitecture,
                            explicit: Optional[Collection[str]] = (),
                            source_path: str = '') -> config_lib.Config:
  """`config` with the model structure of `architecture`.

  Args:
    config: the run's configuration.
    architecture: what `read_architecture` found.
    explicit: names of the structure flags the user set; each must agree with the
      checkpoint. None: all of `config`'s structure fields must agree.
    source_path: named in error messages.

  Raises:
    ValueError: one line naming the flag and the value found.
  """
  model = config.model
  found = {'resnet_depth': architecture.resnet_depth,
           'width_multiplier': architecture.width_multiplier,
           'sk_ratio': architecture.sk_ratio, 'se_ratio': architecture.se_ratio,
           'cifar_stem': architecture.cifar_stem,
           'proj_head_mode': architecture.proj_head_mode,
           'num_proj_layers': architecture.num_proj_layers,
           'proj_out_dim': architecture.proj_out_dim}
  checked = set(STRUCTURE_FIELDS) if explicit is None else set(explicit) & set(STRUCTURE_FIELDS)
  if explicit is None and model.cifar_stem is None:
    checked.discard('cifar_stem')
  values = dict(found)
  for name in sorted(checked):
    value = getattr(model, name)
    if name in ('sk_ratio', 'se_ratio'):
      agrees = architecture.accepts_ratio(name, value)
    elif name == 'proj_head_mode':
      # linear == nonlinear with one layer (dense without bias + BN without beta).
      agrees = value == found[name] or (value == 'linear' and architecture.num_proj_layers == 1
                                        and found[name] == 'nonlinear')
    elif name in ('num_proj_layers', 'proj_out_dim') and found['proj_head_mode'] == 'none':
      agrees = True
    elif name == 'num_proj_layers' and model.proj_head_mode == 'linear':
      agrees = True
    else:
      agrees = value == found[name]
    if not agrees:
      shown = {True: 'true', False: 'false'}.get(found[name], found[name])
      raise ValueError(
          f'--{name}={_flag_text(value)} contradicts --checkpoint={source_path}, which has '
          f'{name} {shown} ({architecture.describe()}); drop --{name} or pass '
          f'--{name}={_flag_text(found[name])}.')
    values[name] = value
  return config_lib.replace(config, model=values)


def _flag_text(value: Any) -> str:
  if isinstance(value, bool):
    return str(value).lower()
  if isinstance(value, float):
    return f'{value:g}'
  return str(value)


# ---------------------------------------------------------------------------------
# Mapping to our model and loading.


def _our_units(layer: Any, name: str) -> Optional[tuple[str, str, list[Any]]]:
  """(kind, name, variables in canonical order) of one of our layers; None: no weights."""
  import keras  # pylint: disable=g-import-not-at-top

  def conv(conv_layer):
    return [conv_layer.kernel] + ([conv_layer.bias] if conv_layer.use_bias else [])

  def bn(bn_layer):
    return [variable for variable in (bn_layer.gamma, bn_layer.beta, bn_layer.moving_mean,
                                      bn_layer.moving_variance) if variable is not None]

  if isinstance(layer, resnet_lib.SelectiveKernelConv2D):
    return ('sk', name, conv(layer.conv) + bn(layer.bn) + conv(layer.squeeze_conv) +
            bn(layer.squeeze_bn) + conv(layer.mixing_conv))
  if isinstance(layer, resnet_lib.SqueezeExcitation):
    return ('se', name, conv(layer.reduce_conv) + conv(layer.expand_conv))
  if isinstance(layer, keras.layers.BatchNormalization):
    return ('bn', name, bn(layer))
  if isinstance(layer, keras.layers.Conv2D):
    return ('conv', name, conv(layer))
  if isinstance(layer, keras.layers.Dense):
    return ('dense', name, conv(layer))
  return None


def _our_structure(model: Any) -> dict[str, Any]:
  """Our model's units, grouped as `_OfficialModel` groups the official ones."""
  encoder = model.encoder
  stem = []
  for layer in encoder.layers:
    if layer.name.startswith('stem_'):
      unit = _our_units(layer, f'resnet/{layer.name}')
      if unit is not None:
        stem.append(unit)
  blocks = []
  for group_index in range(4):
    group = encoder.get_layer(f'block_group{group_index + 1}')
    group_blocks = []
    for block in group.blocks:
      prefix = f'resnet/{group.name}/{block.name}'
      layers = list(block.shortcut_layers) + list(block.residual_layers) + (
          [block.se] if block.se is not None else [])
      units = [_our_units(layer, f'{prefix}/{layer.name}') for layer in layers]
      group_blocks.append([unit for unit in units if unit is not None])
    blocks.append(group_blocks)
  projection = []
  head = model.projection_head
  for dense, bn in zip(head.dense_layers, head.bn_layers):
    projection.append([_our_units(dense, f'projection_head/{dense.name}'),
                       _our_units(bn, f'projection_head/{bn.name}')])
  supervised = None
  if model.supervised_head is not None:
    supervised = _our_units(model.supervised_head.dense, 'head_supervised/dense')
  return {'stem': stem, 'blocks': blocks, 'projection': projection, 'supervised': supervised}


def _official_unit_lists(parsed: _OfficialModel) -> dict[str, Any]:
  blocks = [[[unit for unit in shortcut if unit is not None] + rest
             for _, shortcut, rest in group] for group in parsed.blocks]
  return {'stem': parsed.stem, 'blocks': blocks,
          'projection': [[dense, bn] for dense, bn in parsed.projection],
          'supervised': parsed.supervised}


def plan_mapping(model: Any, source: OfficialSource, *, include_supervised_head: bool = True,
                 flag_name: str = '--checkpoint') -> list[tuple[str, str, Any]]:
  """[(official checkpoint key, description, our variable)] covering both models once.

  Raises:
    ValueError: one line naming the first few official tensors left over or ours
      missing, or the first shape that differs.
  """
  parsed = _parse(source, flag_name)
  graph = parsed.graph
  official = _official_unit_lists(parsed)
  ours = _our_structure(model)
  pairs: list[tuple[_Unit, tuple[str, str, list[Any]]]] = []
  problems: list[str] = []

  def pair_lists(official_units, our_units, where):
    for index in range(max(len(official_units), len(our_units))):
      if index >= len(official_units):
        problems.append(f'{our_units[index][1]} has no official counterpart')
      elif index >= len(our_units):
        problems.append(f'official {where} {official_units[index].name} is left over')
      else:
        pairs.append((official_units[index], our_units[index]))

  pair_lists(official['stem'], ours['stem'], 'stem')
  for group_index in range(4):
    official_group = official['blocks'][group_index] if group_index < len(official['blocks']) else []
    our_group = ours['blocks'][group_index]
    if len(official_group) != len(our_group):
      problems.append(f'block_group{group_index + 1} has {len(official_group)} official blocks '
                      f'and {len(our_group)} of ours')
    for official_block, our_block in zip(official_group, our_group):
      pair_lists(official_block, our_block, 'block')
  for index in range(max(len(official['projection']), len(ours['projection']))):
    if index >= len(official['projection']):
      problems.append(f'our projection head layer {index} has no official counterpart')
    elif index >= len(ours['projection']):
      problems.append(f'official projection head layer {index} is left over')
    else:
      pair_lists(official['projection'][index], ours['projection'][index], 'projection head')
  if include_supervised_head and ours['supervised'] is not None:
    if official['supervised'] is None:
      problems.append('our supervised head has no official counterpart')
    else:
      pairs.append((official['supervised'], ours['supervised']))

  mapping: list[tuple[str, str, Any]] = []
  used_nodes: set[int] = set()
  for official_unit, (kind, our_name, variables) in pairs:
    kind_ok = official_unit.kind == kind or {official_unit.kind, kind} == {'conv', 'dense'}
    roles = [role for role, _ in official_unit.nodes]
    if not kind_ok or len(official_unit.nodes) != len(variables):
      problems.append(f'official {official_unit.name} ({official_unit.kind}: '
                      f'{", ".join(roles)}) does not fit our {our_name} ({kind}, '
                      f'{len(variables)} tensors)')
      continue
    for (role, node), variable in zip(official_unit.nodes, variables):
      shape = _shape(graph, node)
      if tuple(shape) != tuple(variable.shape):
        problems.append(f'official {official_unit.name}/{role} has shape {shape}, our '
                        f'{our_name} {variable.name} {list(variable.shape)}')
        continue
      if node in used_nodes:
        problems.append(f'official {official_unit.name}/{role} is mapped twice')
      used_nodes.add(node)
      mapping.append((graph.variable_key(node), f'{official_unit.name}/{role}', variable))
  if problems:
    raise ValueError(f'{flag_name}={source.path} does not fit the model ({len(problems)} '
                     f'problems): {"; ".join(problems[:3])}.')
  # Leftover official tensors: every variable under the model node must be used.
  if parsed.model_node is not None:
    expected = graph.reachable_variables(parsed.model_node)
    if not include_supervised_head and parsed.supervised is not None:
      expected -= {node for _, node in parsed.supervised.nodes}
    leftover = sorted(expected - used_nodes)
    if leftover:
      names = [graph.variable_key(node) for node in leftover[:3]]
      raise ValueError(f'{flag_name}={source.path}: {len(leftover)} official tensors are not '
                       f'mapped to our model, e.g. {", ".join(names)}.')
  our_variables = {id(variable) for _, _, variable in mapping}
  if len(our_variables) != len(mapping):
    raise ValueError(f'{flag_name}={source.path}: one of our variables is mapped twice.')
  wanted = list(model.encoder.weights) + list(model.projection_head.weights)
  if include_supervised_head and model.supervised_head is not None:
    wanted += list(model.supervised_head.weights)
  missing = [variable.path for variable in wanted if id(variable) not in our_variables]
  if missing:
    raise ValueError(f'{flag_name}={source.path}: {len(missing)} of our variables get no '
                     f'official tensor, e.g. {", ".join(missing[:3])}.')
  return mapping


def load_weights(model: Any, source: OfficialSource, *, include_supervised_head: bool = True,
                 flag_name: str = '--checkpoint') -> int:
  """Copies the official tensors into `model`, one tensor at a time.

  Args:
    model: a `SimCLRModel` built with the checkpoint's architecture.
    source: from `find_source`.
    include_supervised_head: also load the supervised head (the model must have
      one of the checkpoint's size).
    flag_name: named in error messages.

  Returns:
    The number of tensors copied.

  Raises:
    ValueError: one line when the checkpoint does not fit (checked before any copy,
      the model is then unchanged) or a tensor cannot be read (e.g. a truncated file).
  """
  mapping = plan_mapping(model, source, include_supervised_head=include_supervised_head,
                         flag_name=flag_name)
  reader = checkpoints.checkpoint_reader(source.prefix)
  try:
    for key, _, variable in mapping:  # One tensor in memory at a time.
      variable.assign(reader.get_tensor(key))
  except (tf.errors.OpError, ValueError) as error:
    raise ValueError(f'{flag_name}={source.path}: reading {source.prefix} failed '
                     f'({_first_line(error)}); the checkpoint may be truncated.') from None
  return len(mapping)


def checkpoint_step(source: OfficialSource) -> int:
  """`global_step` of an official checkpoint (0 for a SavedModel, which has none)."""
  reader = checkpoints.checkpoint_reader(source.prefix)
  for key in ('global_step/.ATTRIBUTES/VARIABLE_VALUE',
              'optimizer/iter/.ATTRIBUTES/VARIABLE_VALUE'):
    if reader.has_tensor(key):
      return int(reader.get_tensor(key))
  return 0


def check_supervised_head(architecture: OfficialArchitecture, config: config_lib.Config,
                          num_classes: int, source_path: str) -> None:
  """Raises ValueError (one line) when the checkpoint's supervised head cannot serve as is.

  Used by evaluation, which keeps the official `logits_sup` head: the data must have its
  number of classes and --ft_proj_selector must feed it a hidden of its input width.
  """
  if architecture.num_classes is None:
    raise ValueError(f'--checkpoint={source_path} has no supervised head to evaluate; '
                     'finetune it first (--train_mode=finetune).')
  if architecture.num_classes != num_classes:
    raise ValueError(f'--checkpoint={source_path} has a supervised head of '
                     f'{architecture.num_classes} classes but --dataset={config.data.dataset} '
                     f'has {num_classes}; evaluate it on data with its classes or finetune it.')
  dims = _hidden_dims(config, architecture)
  if dims[config.model.ft_proj_selector] != architecture.supervised_input_dim:
    fitting = [index for index, dim in enumerate(dims) if dim == architecture.supervised_input_dim]
    raise ValueError(f'--ft_proj_selector={config.model.ft_proj_selector} feeds the supervised '
                     f'head {dims[config.model.ft_proj_selector]} features, but the head of '
                     f'--checkpoint={source_path} takes {architecture.supervised_input_dim}; '
                     f'use --ft_proj_selector={fitting[0] if fitting else 0}.')


def _hidden_dims(config: config_lib.Config, architecture: OfficialArchitecture) -> list[int]:
  """Widths of the projection-head hiddens (index = ft_proj_selector) of `config`'s model."""
  from tf_simclr.models.heads import ProjectionHead  # pylint: disable=g-import-not-at-top
  model = config.model
  head = ProjectionHead(model.proj_head_mode, model.num_proj_layers, model.proj_out_dim)
  return head.hidden_dims(architecture.encoder_dim())


def load_for_training(model: Any, source: OfficialSource, architecture: OfficialArchitecture,
                      zero_init_logits_layer: bool) -> str:
  """Loads an official model to start training from; returns a one-line note.

  Encoder and projection head always load. The supervised head loads too when it has
  the model's size (as the official run.py, which restores the whole model), else it
  keeps its fresh initialisation; `zero_init_logits_layer` then zeroes it.
  """
  head = model.supervised_head
  load_head = (head is not None and architecture.num_classes == head.num_classes and
               architecture.supervised_input_dim == int(head.dense.kernel.shape[0]))
  count = load_weights(model, source, include_supervised_head=load_head)
  note = f'loaded {count} tensors of {source.path}'
  if head is not None and not load_head:
    note += (f'; its supervised head ({architecture.num_classes} classes) does not fit '
             f'({head.num_classes} classes here): a new one is trained')
  if zero_init_logits_layer and head is not None:
    head.reset_to_zeros()
    note += '; supervised head zeroed (--zero_init_logits_layer)'
  return note
