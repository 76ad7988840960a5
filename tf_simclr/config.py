"""Typed, frozen configuration for tf_simclr.

The library takes these dataclasses (or plain arguments), never absl FLAGS. `flags/`
builds a `Config` from the command line with `config_from_flags`; library users and
tests build one directly, e.g. `Config(model=ModelConfig(resnet_depth=18))`.

Field names and defaults are those of google-research/simclr `tf2/run.py`, except
`InfraConfig.use_tpu` (False here, True there) and fields marked "ours".
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Optional

PROJ_HEAD_MODES = ('none', 'linear', 'nonlinear')
OPTIMIZERS = ('lars', 'momentum', 'adam')
LEARNING_RATE_SCALINGS = ('linear', 'sqrt')
MODES = ('train', 'eval', 'train_then_eval')
TRAIN_MODES = ('pretrain', 'finetune', 'distill')  # distill: ours (SimCLRv2 stage 3).
RESNET_DEPTHS = (18, 34, 50, 101, 152, 200)
MIXED_PRECISIONS = ('float32', 'bfloat16', 'float16')
EXPORT_WHEN = ('checkpoint', 'end', 'never')
BLUR_IMPLS = ('per_image', 'per_batch')
CROP_FALLBACKS = ('whole_image', 'center_crop')
CPU_KERNELS = ('auto', 'ours', 'stock')
IMAGE_FOLDER_LABELS = ('auto', 'folders', 'none')

# Variables whose path contains one of these get neither weight decay nor LARS
# trust-ratio adaptation (official defaults).
DEFAULT_LARS_EXCLUDES = ('batch_normalization', 'bias', 'head_supervised')


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Encoder and heads."""
  resnet_depth: int = 50
  width_multiplier: int = 1
  sk_ratio: float = 0.0
  se_ratio: float = 0.0
  batch_norm_decay: float = 0.9
  global_bn: bool = True
  proj_head_mode: str = 'nonlinear'
  proj_out_dim: int = 128
  num_proj_layers: int = 3
  ft_proj_selector: int = 0
  # None: decided from the image size (CIFAR stem when image_size <= 32), as the
  # official code does. Ours.
  cifar_stem: Optional[bool] = None

  def use_cifar_stem(self, image_size: int) -> bool:
    """Whether to use the 3x3 stride-1 stem without max-pool."""
    if self.cifar_stem is not None:
      return self.cifar_stem
    return image_size <= 32


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """NT-Xent loss."""
  temperature: float = 0.1
  hidden_norm: bool = True


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Data source and augmentation."""
  dataset: str = 'imagenet2012'
  data_dir: Optional[str] = None
  train_split: str = 'train'
  eval_split: str = 'validation'
  cache_dataset: bool = False
  image_size: int = 224
  color_jitter_strength: float = 1.0
  use_blur: bool = True
  # SimCLRv2 multiplicative brightness ('simclrv2') or v1 additive ('simclrv1'). Ours.
  color_jitter_impl: str = 'simclrv2'
  # Blur sigma drawn per image with reflect padding ('per_image'), or once per view of
  # each per-replica batch with zero padding ('per_batch', the official code). Ours.
  blur_impl: str = 'per_image'
  # No crop fits after 100 tries (very elongated images): the whole image
  # ('whole_image', the official code) or a center crop with the aspect clamped. Ours.
  crop_fallback: str = 'whole_image'
  # --dataset=image_folder: labels from ROOT/<split>/<class>/ ('folders'), none
  # (images anywhere under ROOT/<split>/), or decided from the layout ('auto'). Ours.
  image_folder_labels: str = 'auto'


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """Optimizer and learning-rate schedule."""
  optimizer: str = 'lars'
  learning_rate: float = 0.3
  learning_rate_scaling: str = 'linear'
  warmup_epochs: float = 10.0
  weight_decay: float = 1e-6
  momentum: float = 0.9


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """What to run and for how long; checkpoints and outputs."""
  mode: str = 'train'
  train_mode: str = 'pretrain'
  lineareval_while_pretraining: bool = True
  checkpoint: Optional[str] = None
  zero_init_logits_layer: bool = False
  fine_tune_after_block: int = -1
  train_batch_size: int = 512
  train_epochs: int = 100
  train_steps: int = 0
  eval_batch_size: int = 256
  eval_steps: int = 0
  model_dir: Optional[str] = None
  checkpoint_epochs: int = 1
  checkpoint_steps: int = 0
  keep_checkpoint_max: int = 5
  eval_name: Optional[str] = None
  # Ours.
  steps_per_loop: int = 0          # 0: checkpoint_steps if set, else up to 100
  mixed_precision: str = 'float32'
  # Run bfloat16 even on a CPU without native bf16 (tf_simclr/precision.py). Ours.
  force_bfloat16: bool = False
  # CPU kernels per layer shape: measured at start-up (auto), ours or stock TF/Keras
  # (tf_simclr/models/kernel_choice.py). Ours.
  cpu_kernels: str = 'auto'
  jit_compile: bool = False
  deterministic: bool = False
  seed: int = 0
  log_every_steps: int = 0         # 0: once per loop
  # > 0 and below the per-replica batch: exact gradient caching over micro-batches of
  # this many examples (tf_simclr/grad_cache.py). 0: off. Ours.
  micro_batch_size: int = 0
  # --mode=eval: stop when no new checkpoint appears for this long; 0: no limit
  # (stop only after the checkpoint of the last training step). Ours.
  eval_timeout_secs: float = 3600.0


@dataclasses.dataclass(frozen=True)
class ExportConfig:
  """TF Hub SavedModel export during training."""
  keep_hub_module_max: int = 1
  export_hub_module: str = 'checkpoint'   # one of EXPORT_WHEN. Ours.


@dataclasses.dataclass(frozen=True)
class InfraConfig:
  """Where to run."""
  use_tpu: bool = False
  tpu_name: Optional[str] = None
  tpu_zone: Optional[str] = None
  gcp_project: Optional[str] = None
  master: Optional[str] = None
  num_cpu_devices: int = 0   # > 1: split the CPU into N logical devices. Ours.
  # MultiWorkerMirroredStrategy: a collective waiting longer than this fails the run
  # (a dead or hung worker) instead of hanging; 0: no limit. Ours.
  collective_timeout_secs: float = 600.0


@dataclasses.dataclass(frozen=True)
class KnnConfig:
  """Weighted kNN monitor on L2-normalised `final_avg_pool` features. Ours."""
  knn_every_steps: int = 0         # 0: no kNN during pretraining
  knn_at_eval: bool = False        # kNN top-1 in the eval results
  knn_k: int = 200
  knn_temperature: float = 0.1
  knn_train_examples: int = 10000  # memory bank: the first N of the train split; 0: all
  knn_eval_examples: int = 0       # queries: the first N of the eval split; 0: all


@dataclasses.dataclass(frozen=True)
class DistillConfig:
  """--train_mode=distill: a frozen teacher's soft labels train the student. Ours."""
  teacher_checkpoint: Optional[str] = None   # checkpoint, model_dir or hub export dir
  distill_temperature: float = 1.0
  distill_label_weight: float = 0.0           # weight of the supervised loss on labels
  distill_labeled_split: Optional[str] = None  # labelled subset, e.g. 'train[:10%]'


@dataclasses.dataclass(frozen=True)
class Config:
  """The whole configuration of a run."""
  model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
  loss: LossConfig = dataclasses.field(default_factory=LossConfig)
  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
  train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
  export: ExportConfig = dataclasses.field(default_factory=ExportConfig)
  infra: InfraConfig = dataclasses.field(default_factory=InfraConfig)
  knn: KnnConfig = dataclasses.field(default_factory=KnnConfig)
  distill: DistillConfig = dataclasses.field(default_factory=DistillConfig)

  def to_dict(self) -> dict[str, dict[str, Any]]:
    """Nested plain dict (JSON-serialisable)."""
    return dataclasses.asdict(self)

  def flat_dict(self) -> dict[str, Any]:
    """Flat {field: value} over all sections: the official flag names."""
    flat: dict[str, Any] = {}
    for section in self.to_dict().values():
      flat.update(section)
    return flat

  @classmethod
  def from_dict(cls, nested: dict[str, dict[str, Any]]) -> 'Config':
    """Inverse of `to_dict`; unknown keys raise ValueError."""
    sections = {}
    for field in dataclasses.fields(cls):
      section_cls = field.default_factory  # type: ignore[misc]
      values = dict(nested.get(field.name, {}))
      known = {f.name for f in dataclasses.fields(section_cls)}
      unknown = set(values) - known
      if unknown:
        raise ValueError(f'Unknown {field.name} config keys: {sorted(unknown)}')
      sections[field.name] = section_cls(**values)
    return cls(**sections)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def replace(config: Config, **sections: Any) -> Config:
  """Returns `config` with sections replaced by field updates.

  Example: `replace(cfg, model={'resnet_depth': 18}, train={'train_steps': 5})`.
  """
  updates = {}
  for name, fields in sections.items():
    updates[name] = dataclasses.replace(getattr(config, name), **fields)
  return dataclasses.replace(config, **updates)


def _check(condition: bool, message: str) -> None:
  if not condition:
    raise ValueError(message)


def validate(config: Config, num_replicas: Optional[int] = 1) -> None:
  """Raises ValueError with one clear line naming the flag for invalid settings.

  Checks single values and contradictory combinations, once per run at the entry
  point (`flags.config_from_flags`, run.py); the library trusts a validated config.

  Args:
    config: the configuration.
    num_replicas: replicas the batch sizes must divide; None leaves those checks
      (`validate_replicas`) until the strategy, and so the count, exists.
  """
  d, o, t, e, i, l = (config.data, config.optim, config.train, config.export,
                      config.infra, config.loss)
  check = _check
  validate_model(config.model)
  check(l.temperature > 0, f'--temperature={l.temperature} must be > 0.')
  check(d.image_size >= 8, f'--image_size={d.image_size} must be >= 8.')
  check(d.color_jitter_strength >= 0, f'--color_jitter_strength={d.color_jitter_strength} must be >= 0.')
  check(d.color_jitter_impl in ('simclrv1', 'simclrv2'),
        f'--color_jitter_impl={d.color_jitter_impl!r} is unknown; use simclrv1 or simclrv2.')
  check(d.blur_impl in BLUR_IMPLS,
        f'--blur_impl={d.blur_impl!r} is unknown; use one of {BLUR_IMPLS}.')
  check(d.crop_fallback in CROP_FALLBACKS,
        f'--crop_fallback={d.crop_fallback!r} is unknown; use one of {CROP_FALLBACKS}.')
  check(d.image_folder_labels in IMAGE_FOLDER_LABELS,
        f'--image_folder_labels={d.image_folder_labels!r} is unknown; use one of '
        f'{IMAGE_FOLDER_LABELS}.')
  check(o.optimizer in OPTIMIZERS, f'--optimizer={o.optimizer!r} is unknown; use one of {OPTIMIZERS}.')
  check(o.learning_rate_scaling in LEARNING_RATE_SCALINGS,
        f'--learning_rate_scaling={o.learning_rate_scaling!r} is unknown; use linear or sqrt.')
  check(o.learning_rate >= 0, f'--learning_rate={o.learning_rate} must be >= 0.')
  check(o.warmup_epochs >= 0, f'--warmup_epochs={o.warmup_epochs} must be >= 0.')
  check(o.weight_decay >= 0, f'--weight_decay={o.weight_decay} must be >= 0.')
  check(0 <= o.momentum < 1, f'--momentum={o.momentum} must be in [0, 1).')
  check(t.mode in MODES, f'--mode={t.mode!r} is unknown; use one of {MODES}.')
  check(t.train_mode in TRAIN_MODES,
        f'--train_mode={t.train_mode!r} is unknown; use pretrain, finetune or distill.')
  check(-1 <= t.fine_tune_after_block <= 4,
        f'--fine_tune_after_block={t.fine_tune_after_block} must be in -1..4.')
  check(t.fine_tune_after_block == -1 or t.train_mode == 'finetune',
        f'--fine_tune_after_block={t.fine_tune_after_block} only applies to --train_mode=finetune '
        f'(got --train_mode={t.train_mode}); drop it or set --train_mode=finetune.')
  check(not (t.zero_init_logits_layer and t.train_mode == 'pretrain' and not t.lineareval_while_pretraining),
        '--zero_init_logits_layer needs a supervised head: use --train_mode=finetune or '
        '--lineareval_while_pretraining.')
  check(t.train_batch_size > 0, f'--train_batch_size={t.train_batch_size} must be > 0.')
  check(t.eval_batch_size > 0, f'--eval_batch_size={t.eval_batch_size} must be > 0.')
  check(t.train_epochs >= 0 and t.train_steps >= 0,
        '--train_epochs and --train_steps must be >= 0.')
  check(t.train_epochs > 0 or t.train_steps > 0 or t.mode == 'eval',
        'Nothing to train: set --train_steps or --train_epochs > 0.')
  check(t.eval_steps >= 0, f'--eval_steps={t.eval_steps} must be >= 0.')
  check(t.checkpoint_steps >= 0 and t.checkpoint_epochs >= 0,
        '--checkpoint_steps and --checkpoint_epochs must be >= 0.')
  check(t.keep_checkpoint_max >= 1, f'--keep_checkpoint_max={t.keep_checkpoint_max} must be >= 1.')
  check(t.checkpoint_steps > 0 or t.checkpoint_epochs > 0 or t.mode == 'eval',
        '--checkpoint_steps=0 and --checkpoint_epochs=0 leave no checkpoint interval; '
        'set one of them > 0.')
  check(t.steps_per_loop >= 0, f'--steps_per_loop={t.steps_per_loop} must be >= 0.')
  check(t.micro_batch_size >= 0,
        f'--micro_batch_size={t.micro_batch_size} must be >= 0 (0: off).')
  check(t.micro_batch_size == 0 or t.train_mode != 'distill',
        '--micro_batch_size applies to --train_mode=pretrain or finetune, not distill; '
        'drop it.')
  check(t.log_every_steps >= 0, f'--log_every_steps={t.log_every_steps} must be >= 0.')
  check(t.eval_timeout_secs >= 0,
        f'--eval_timeout_secs={t.eval_timeout_secs} must be >= 0 (0: no limit).')
  check(t.mixed_precision in MIXED_PRECISIONS,
        f'--mixed_precision={t.mixed_precision!r} is unknown; use float32, bfloat16 or float16.')
  check(t.mixed_precision != 'float16' or (t.micro_batch_size == 0 and t.train_mode != 'distill'),
        '--mixed_precision=float16 (loss scaling) is not supported with --micro_batch_size or '
        '--train_mode=distill; use float32 or bfloat16 there.')
  check(t.cpu_kernels in CPU_KERNELS,
        f'--cpu_kernels={t.cpu_kernels!r} is unknown; use one of {CPU_KERNELS}.')
  check(bool(t.model_dir), '--model_dir is required: the directory for checkpoints and results.')
  check(e.keep_hub_module_max >= 0, f'--keep_hub_module_max={e.keep_hub_module_max} must be >= 0.')
  check(e.export_hub_module in EXPORT_WHEN,
        f'--export_hub_module={e.export_hub_module!r} is unknown; use one of {EXPORT_WHEN}.')
  check(i.num_cpu_devices >= 0, f'--num_cpu_devices={i.num_cpu_devices} must be >= 0.')
  check(i.collective_timeout_secs >= 0,
        f'--collective_timeout_secs={i.collective_timeout_secs} must be >= 0 (0: no limit).')
  check(not (i.use_tpu and i.num_cpu_devices > 1),
        '--num_cpu_devices splits the CPU for local multi-replica runs; it cannot be combined with --use_tpu.')
  _validate_knn(config.knn)
  _validate_distill(config.distill, t)
  if num_replicas is not None:
    validate_replicas(config, num_replicas)


def validate_model(m: ModelConfig) -> None:
  """The model-structure checks of `validate` (run again on a structure read from a
  published checkpoint); ValueError naming the flag."""
  check = _check
  check(m.resnet_depth in RESNET_DEPTHS,
        f'--resnet_depth={m.resnet_depth} is not supported; use one of {RESNET_DEPTHS}.')
  check(m.width_multiplier in (1, 2, 3, 4),
        f'--width_multiplier={m.width_multiplier} is not supported; use 1, 2, 3 or 4.')
  check(0.0 <= m.sk_ratio < 1.0, f'--sk_ratio={m.sk_ratio} must be in [0, 1) (0.0625 is the SimCLRv2 value).')
  check(0.0 <= m.se_ratio < 1.0, f'--se_ratio={m.se_ratio} must be in [0, 1).')
  check(0.0 < m.batch_norm_decay < 1.0, f'--batch_norm_decay={m.batch_norm_decay} must be in (0, 1).')
  check(m.proj_head_mode in PROJ_HEAD_MODES,
        f'--proj_head_mode={m.proj_head_mode!r} is unknown; use one of {PROJ_HEAD_MODES}.')
  check(m.proj_out_dim > 0, f'--proj_out_dim={m.proj_out_dim} must be > 0.')
  check(m.num_proj_layers >= 1 or m.proj_head_mode == 'none',
        f'--num_proj_layers={m.num_proj_layers} must be >= 1 with --proj_head_mode={m.proj_head_mode}.')
  num_hidden = 1 + (0 if m.proj_head_mode == 'none' else
                    1 if m.proj_head_mode == 'linear' else m.num_proj_layers)
  check(-num_hidden <= m.ft_proj_selector < num_hidden,
        f'--ft_proj_selector={m.ft_proj_selector} is out of range for --proj_head_mode='
        f'{m.proj_head_mode} --num_proj_layers={m.num_proj_layers}; use -{num_hidden}..{num_hidden - 1}.')


def validate_replicas(config: Config, num_replicas: int) -> None:
  """The checks of `validate` that depend on the replica count: the batch sizes divide
  by it; ValueError naming the flag."""
  t, check = config.train, _check
  check(t.train_batch_size % num_replicas == 0,
        f'--train_batch_size={t.train_batch_size} is not divisible by the {num_replicas} replicas; '
        f'use a multiple of {num_replicas}.')
  check(t.eval_batch_size % num_replicas == 0,
        f'--eval_batch_size={t.eval_batch_size} is not divisible by the {num_replicas} replicas; '
        f'use a multiple of {num_replicas}.')
  check(t.micro_batch_size == 0 or (t.train_batch_size // num_replicas) % t.micro_batch_size == 0,
        f'--micro_batch_size={t.micro_batch_size} must divide the per-replica batch '
        f'{t.train_batch_size // num_replicas} (--train_batch_size / {num_replicas} replicas).')
  check(not t.jit_compile or num_replicas == 1 or (
      t.micro_batch_size == 0 and t.train_mode != 'distill'),
        f'--jit_compile with --micro_batch_size or --train_mode=distill compiles on one '
        f'replica only (got {num_replicas}); drop --jit_compile or run on one device.')


def _validate_knn(knn: KnnConfig) -> None:
  """The kNN monitor's flags; ValueError naming the flag."""
  checks = (
      (knn.knn_every_steps >= 0, f'--knn_every_steps={knn.knn_every_steps} must be >= 0 (0: off).'),
      (knn.knn_k >= 1, f'--knn_k={knn.knn_k} must be >= 1.'),
      (knn.knn_temperature > 0, f'--knn_temperature={knn.knn_temperature} must be > 0.'),
      (knn.knn_train_examples >= 0,
       f'--knn_train_examples={knn.knn_train_examples} must be >= 0 (0: the whole train split).'),
      (knn.knn_eval_examples >= 0,
       f'--knn_eval_examples={knn.knn_eval_examples} must be >= 0 (0: the whole eval split).'),
  )
  for condition, message in checks:
    if not condition:
      raise ValueError(message)


def _validate_distill(distill: DistillConfig, train: TrainConfig) -> None:
  """The distillation flags; ValueError naming the flag."""
  distilling = train.train_mode == 'distill'
  checks = (
      (distill.distill_temperature > 0,
       f'--distill_temperature={distill.distill_temperature} must be > 0.'),
      (distill.distill_label_weight >= 0,
       f'--distill_label_weight={distill.distill_label_weight} must be >= 0 (0: no labels).'),
      (bool(distill.teacher_checkpoint) or not distilling,
       '--train_mode=distill needs --teacher_checkpoint: a fine-tuned run\'s checkpoint or '
       'model_dir, or its hub export.'),
      (bool(distill.distill_labeled_split) or distill.distill_label_weight == 0 or
       not distilling,
       f'--distill_label_weight={distill.distill_label_weight} needs '
       "--distill_labeled_split (the labelled subset, e.g. 'train[:10%]')."),
  )
  for condition, message in checks:
    if not condition:
      raise ValueError(message)
