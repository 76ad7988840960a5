"""The SimCLR model: ResNet encoder + projection head (+ supervised head)."""

from __future__ import annotations

from typing import Any, Optional

import keras
import tensorflow as tf

from tf_simclr import loss_scale
from tf_simclr import precision
from tf_simclr.config import TRAIN_MODES, Config
from tf_simclr.models.heads import ProjectionHead, SupervisedHead
from tf_simclr.models.resnet import build_resnet, output_channels


class SimCLRModel(keras.Model):
  """ResNet encoder with a projection head and, when needed, a supervised head.

  `model(images, training=bool)` returns a dict with all encoder endpoints
  ('initial_conv' .. 'final_avg_pool'), 'proj_head_output' [B, d] (float32),
  'ft_hidden' (the projection-head layer `ft_proj_selector` that the supervised head
  reads; stop-gradient when pretraining) and, when the model has a supervised head,
  'logits_sup' [B, num_classes] (float32).

  Pretraining input is the two views stacked on the batch axis: [2b, H, W, 3].
  """

  def __init__(self,
               *,
               resnet_depth: int = 50,
               width_multiplier: int = 1,
               sk_ratio: float = 0.0,
               se_ratio: float = 0.0,
               cifar_stem: bool = False,
               batch_norm_decay: float = 0.9,
               global_bn: bool = True,
               proj_head_mode: str = 'nonlinear',
               proj_out_dim: int = 128,
               num_proj_layers: int = 3,
               ft_proj_selector: int = 0,
               num_classes: Optional[int] = None,
               train_mode: str = 'pretrain',
               lineareval_while_pretraining: bool = True,
               fine_tune_after_block: int = -1,
               zero_init_logits_layer: bool = False,
               heads_dtype: Optional[str] = None,
               name: str = 'simclr_model',
               **kwargs):
    """Builds the encoder and heads (all variables exist after construction).

    Args:
      resnet_depth, width_multiplier, sk_ratio, se_ratio, cifar_stem, batch_norm_decay,
        global_bn: encoder settings, see `build_resnet`.
      proj_head_mode, proj_out_dim, num_proj_layers: projection head, see
        `ProjectionHead`.
      ft_proj_selector: which projection-head hidden the supervised head reads
        (0 = encoder output, -1 = last layer).
      num_classes: supervised head size; needed when the model has a supervised head
        (`train_mode='finetune'` or `lineareval_while_pretraining`).
      train_mode: 'pretrain', 'finetune' or 'distill' (a student: as 'finetune').
      lineareval_while_pretraining: add a supervised head on a stop-gradient of the
        selected hidden while pretraining.
      fine_tune_after_block: finetune only: freeze the encoder up to this block group
        (-1: nothing frozen; 4: only the heads train).
      zero_init_logits_layer: start the supervised head's kernel at zero.
      heads_dtype: dtype policy of the projection and supervised heads (e.g.
        'float32' under a mixed_float16 encoder); None: the global policy.
      name: model name.
      **kwargs: passed to `keras.Model`.
    """
    super().__init__(name=name, **kwargs)
    if train_mode not in TRAIN_MODES:
      raise ValueError(f'--train_mode={train_mode!r} is unknown; use pretrain or finetune.')
    if train_mode == 'pretrain' and fine_tune_after_block != -1:
      raise ValueError(f'--fine_tune_after_block={fine_tune_after_block} only applies to '
                       '--train_mode=finetune; drop it or set --train_mode=finetune.')
    # A distillation student trains like a finetuned model (one view, all layers, head).
    self.has_supervised_head = train_mode in ('finetune', 'distill') or lineareval_while_pretraining
    if self.has_supervised_head and not num_classes:
      raise ValueError('The supervised head (--train_mode=finetune or '
                       '--lineareval_while_pretraining) needs num_classes >= 1; got '
                       f'{num_classes}.')
    self._config = dict(
        resnet_depth=resnet_depth, width_multiplier=width_multiplier, sk_ratio=sk_ratio,
        se_ratio=se_ratio, cifar_stem=cifar_stem, batch_norm_decay=batch_norm_decay,
        global_bn=global_bn, proj_head_mode=proj_head_mode, proj_out_dim=proj_out_dim,
        num_proj_layers=num_proj_layers, ft_proj_selector=ft_proj_selector,
        num_classes=num_classes, train_mode=train_mode,
        lineareval_while_pretraining=lineareval_while_pretraining,
        fine_tune_after_block=fine_tune_after_block,
        zero_init_logits_layer=zero_init_logits_layer)
    self.train_mode = train_mode
    self.ft_proj_selector = ft_proj_selector
    self.num_classes = num_classes

    self.encoder = build_resnet(
        resnet_depth, width_multiplier, sk_ratio=sk_ratio, se_ratio=se_ratio,
        cifar_stem=cifar_stem, batch_norm_decay=batch_norm_decay, global_bn=global_bn,
        fine_tune_after_block=fine_tune_after_block, name='resnet')
    previous_policy = keras.config.dtype_policy()
    if heads_dtype is not None:
      keras.config.set_dtype_policy(heads_dtype)  # The heads' layers, built below too.
    try:
      self._build_heads(proj_head_mode, num_proj_layers, proj_out_dim, batch_norm_decay,
                        global_bn, num_classes, zero_init_logits_layer)
    finally:
      keras.config.set_dtype_policy(previous_policy)

  def _build_heads(self, proj_head_mode, num_proj_layers, proj_out_dim, batch_norm_decay,
                   global_bn, num_classes, zero_init_logits_layer) -> None:
    """Creates and builds the projection and supervised heads."""
    self.projection_head = ProjectionHead(
        proj_head_mode, num_proj_layers, proj_out_dim, batch_norm_decay, global_bn)
    num_hiddens = self.projection_head.num_hiddens
    if not -num_hiddens <= self.ft_proj_selector < num_hiddens:
      raise ValueError(f'--ft_proj_selector={self.ft_proj_selector} is out of range for '
                       f'--proj_head_mode={proj_head_mode} --num_proj_layers={num_proj_layers}; '
                       f'use -{num_hiddens}..{num_hiddens - 1}.')
    self.supervised_head = (SupervisedHead(num_classes, zero_init=zero_init_logits_layer)
                            if self.has_supervised_head else None)
    self.build((None, None, None, 3))

  def build(self, input_shape):
    encoder_dim = output_channels(self._config['resnet_depth'],
                                  self._config['width_multiplier'])
    self.projection_head.build((None, encoder_dim))
    if self.supervised_head is not None:
      ft_dim = self.projection_head.hidden_dims(encoder_dim)[self.ft_proj_selector]
      self.supervised_head.build((None, ft_dim))

  def call(self, images, training: bool = False) -> dict[str, tf.Tensor]:
    outputs = dict(self.encoder(images, training=training))
    projection, hiddens = self.projection_head(outputs['final_avg_pool'], training=training)
    ft_hidden = hiddens[self.ft_proj_selector]
    if self.train_mode == 'pretrain':
      # Linear evaluation while pretraining must not change the encoder.
      ft_hidden = tf.stop_gradient(ft_hidden)
    outputs['proj_head_output'] = tf.cast(projection, tf.float32)
    outputs['ft_hidden'] = ft_hidden
    if self.supervised_head is not None:
      outputs['logits_sup'] = tf.cast(self.supervised_head(ft_hidden), tf.float32)
    return outputs

  def get_config(self) -> dict[str, Any]:
    return {'name': self.name, **self._config}


def build_model(config: Config, num_classes: Optional[int]) -> SimCLRModel:
  """Builds a `SimCLRModel` from a `Config` (call inside `strategy.scope()`)."""
  model_config, train_config = config.model, config.train
  return SimCLRModel(
      resnet_depth=model_config.resnet_depth,
      width_multiplier=model_config.width_multiplier,
      sk_ratio=model_config.sk_ratio,
      se_ratio=model_config.se_ratio,
      cifar_stem=model_config.use_cifar_stem(config.data.image_size),
      batch_norm_decay=model_config.batch_norm_decay,
      global_bn=model_config.global_bn,
      proj_head_mode=model_config.proj_head_mode,
      proj_out_dim=model_config.proj_out_dim,
      num_proj_layers=model_config.num_proj_layers,
      ft_proj_selector=model_config.ft_proj_selector,
      num_classes=num_classes,
      train_mode=train_config.train_mode,
      lineareval_while_pretraining=train_config.lineareval_while_pretraining,
      fine_tune_after_block=train_config.fine_tune_after_block,
      zero_init_logits_layer=train_config.zero_init_logits_layer,
      heads_dtype='float32' if train_config.mixed_precision == 'float16' else None)


def build_model_for(config: Config, num_classes: Optional[int]) -> SimCLRModel:
  """`build_model` under the run's --mixed_precision dtype policy (call it in
  `strategy.scope()`); the global Keras policy is restored afterwards."""
  previous_policy = keras.config.dtype_policy()
  mixed_precision = precision.resolve_mixed_precision(config.train.mixed_precision,
                                                     config.train.force_bfloat16)
  policy = loss_scale.dtype_policy(mixed_precision)
  if policy:
    keras.config.set_dtype_policy(policy)
  try:
    return build_model(config, num_classes)
  finally:
    keras.config.set_dtype_policy(previous_policy)
