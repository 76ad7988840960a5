"""Exact large-batch training on small memory: gradient caching (`--micro_batch_size`).

The NT-Xent loss of a batch does not split into per-example terms (every projection is
a negative of every other), so plain gradient accumulation would change the loss. The
gradient-caching step (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size
under Memory Limited Setup") splits each replica's batch of b examples into n = b / m
micro-batches of m examples (both views of each: 2m images) and computes the exact
gradient of the whole-batch loss:

1. pass 1: a forward pass of each micro-batch in training mode, outside any gradient
   tape (no activations kept), collecting the projections z [2b, d]; the last
   micro-batch alone runs under a tape and keeps its activations;
2. the NT-Xent loss of all 2b projections (with the negatives of all replicas, as the
   plain step, all-gathered) and its gradient g = dL/dz [2b, d], computed in row
   blocks by `losses.blocked_nt_xent_loss` so that no [b, B] logits are held (under
   --jit_compile, which needs static shapes: `losses.nt_xent_loss`);
3. the last micro-batch's parameter gradient from its kept activations (upstream
   gradient g_n), then pass 2: each other micro-batch again, forward and backward, of
   the surrogate sum(stop_gradient(g_k) * z_k) + (its share of the supervised loss);
   the parameter gradients are summed over micro-batches. By the chain rule this sum
   is dL/dtheta, because pass 2 recomputes exactly the z_k of pass 1 (same weights,
   same inputs, same batch statistics);
4. the weight-decay term's gradient once, then one optimizer update.

The input-gradient kernels of the convolutions (the weights transposed, flipped and, at
stride 2, split per phase: `fast_conv.gradient_kernels`) depend on the weights alone:
they are computed once per step and reused by every micro-batch's backward pass.

Memory holds the activations of one micro-batch, the projections, a few [r, 2B] logit
blocks of the loss and the gradient accumulators, whatever b is; compute is n - 1
extra forward passes of a micro-batch (at n = 4: 1.25x the plain step's FLOPs, at
n = 64: 1.33x).

Batch normalisation uses the statistics of each micro-batch (2m images), as a run with
b / m times more replicas and `--global_bn=false` would: the gradients equal that run's
(tests/test_grad_cache.py). The moving statistics are updated once per step with the
mean over micro-batches of their batch statistics: moving <- moving * momentum +
mean_k(stat_k) * (1 - momentum), i.e. the replica mean of that reference run's
per-replica moving statistics. (Updating once per micro-batch would shorten the moving
average's memory n-fold.) With `--global_bn=true` BN still synchronises across
replicas, but each micro-batch's statistics cover only its 2m images per replica.

Supervised head (finetuning, or linear evaluation while pretraining): its loss is a
mean over examples, so each micro-batch adds its cross-entropy sum divided by the
replica's row count to the surrogate; its metrics are accumulated over pass 2.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import keras
import tensorflow as tf

from tf_simclr import config as config_lib
from tf_simclr import losses
from tf_simclr import metrics as metrics_lib
from tf_simclr import optim
from tf_simclr.models import resnet


def num_micro_batches(per_replica_batch: int, micro_batch_size: int) -> int:
  """b / m; ValueError naming --micro_batch_size when m does not divide b."""
  if micro_batch_size <= 0 or per_replica_batch % micro_batch_size:
    raise ValueError(
        f'--micro_batch_size={micro_batch_size} must divide the per-replica batch '
        f'{per_replica_batch} (--train_batch_size / replicas); use a divisor of it.')
  return per_replica_batch // micro_batch_size


def micro_batch(images: tf.Tensor, labels: tf.Tensor, index: tf.Tensor,
                micro_batch_size: int, num_views: int) -> tuple[tf.Tensor, tf.Tensor]:
  """Micro-batch `index` of a replica's batch: all views of examples index*m..index*m+m-1.

  Slices the batch (no copy of the whole batch is made).

  Args:
    images: [views * b, H, W, C], view 1 rows first (as the data module yields).
    labels: [b, classes].
    index: k, a scalar int32 tensor in [0, b / m).
    micro_batch_size: m.
    num_views: 2 when pretraining, else 1.

  Returns:
    (images [views * m, H, W, C], view 1 rows first; labels [m, classes]).
  """
  per_view = tf.shape(labels)[0]
  start = index * micro_batch_size
  views = [images[view * per_view + start:view * per_view + start + micro_batch_size]
           for view in range(num_views)]
  micro_images = views[0] if num_views == 1 else tf.concat(views, 0)
  micro_labels = labels[start:start + micro_batch_size]
  # Static micro-batch sizes (a tensor index leaves them unknown after slicing).
  micro_images = tf.ensure_shape(micro_images, [num_views * micro_batch_size] +
                                 images.shape.as_list()[1:])
  micro_labels = tf.ensure_shape(micro_labels, [micro_batch_size] + labels.shape.as_list()[1:])
  return micro_images, micro_labels


def merge_micro_projections(projections: tf.Tensor, num_views: int) -> tf.Tensor:
  """[n, views * m, d] per micro-batch -> [views * b, d] in the batch's row order."""
  num_micro = tf.shape(projections)[0]
  dim = tf.shape(projections)[-1]
  per_view = tf.reshape(projections, [num_micro, num_views, -1, dim])
  return tf.reshape(tf.transpose(per_view, [1, 0, 2, 3]), [-1, dim])


def _zeros_for_none(gradients: Sequence[Optional[tf.Tensor]],
                    like: Sequence[tf.Tensor]) -> list[tf.Tensor]:
  """Zeros in place of None (variables the loss does not reach)."""
  return [tf.zeros_like(reference) if gradient is None else gradient
          for gradient, reference in zip(gradients, like)]


def build_train_step(config: config_lib.Config, model: keras.Model,
                     optimizer: keras.optimizers.Optimizer, strategy: tf.distribute.Strategy,
                     metric_names: Sequence[str]
                     ) -> Callable[[dict[str, tf.Tensor]], tf.Tensor]:
  """The gradient-caching training step (same contract as `train.build_train_step`).

  Args:
    config: the run's configuration; `config.train.micro_batch_size` is m.
    model: the SimCLRModel, built in `strategy.scope()`.
    optimizer: built on `model.trainable_variables`.
    strategy: the strategy the step runs under.
    metric_names: the packed metrics' order.

  Returns:
    `step(batch) -> [len(metric_names)]` float32 metrics, to call in `strategy.run`.
  """
  num_replicas = strategy.num_replicas_in_sync
  pretrain = config.train.train_mode == 'pretrain'
  supervised = model.supervised_head is not None
  num_views = 2 if pretrain else 1
  per_replica_batch = config.train.train_batch_size // num_replicas
  num_micro = num_micro_batches(per_replica_batch, config.train.micro_batch_size)
  # The supervised loss is a mean over the replica's rows (both views when pretraining).
  supervised_rows = float(num_views * per_replica_batch)

  def forward(images: tf.Tensor) -> dict[str, tf.Tensor]:
    return model(images, training=True)

  def train_step(batch: dict[str, tf.Tensor]) -> tf.Tensor:
    micro_batch_size = config.train.micro_batch_size

    def micro(index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
      return micro_batch(batch['image'], batch['label'], index, micro_batch_size, num_views)

    variables = model.trainable_variables
    statistics = list(model.non_trainable_variables)  # BN moving mean / variance.
    initial_statistics = [tf.identity(tf.convert_to_tensor(variable)) for variable in statistics]

    def restore_statistics() -> None:
      for variable, value in zip(statistics, initial_statistics):
        variable.assign(value)

    values = {}
    unreached: set[int] = set()

    def supervised_terms(outputs: dict[str, tf.Tensor], labels: tf.Tensor
                         ) -> tuple[tf.Tensor, tf.Tensor]:
      """(cross-entropy sum, correct count) of a micro-batch's supervised head."""
      labels = tf.concat([labels, labels], 0) if pretrain else labels
      logits = tf.cast(outputs['logits_sup'], tf.float32)
      cross_entropy = tf.reduce_sum(tf.nn.softmax_cross_entropy_with_logits(
          labels=tf.cast(labels, tf.float32), logits=logits))
      correct = tf.reduce_sum(tf.cast(tf.equal(
          tf.argmax(labels, axis=1), tf.argmax(logits, axis=1)), tf.float32))
      return cross_entropy, correct

    def statistics_after(dependencies: Sequence[tf.Tensor]) -> list[tf.Tensor]:
      """The BN moving statistics as a micro-batch's forward pass left them."""
      with tf.control_dependencies(dependencies):
        return [tf.identity(tf.convert_to_tensor(variable)) for variable in statistics]

    def add(totals: list[tf.Tensor], gradients: Sequence[Optional[tf.Tensor]]
            ) -> list[tf.Tensor]:
      # Traced once per call site: which variables the losses do not reach (e.g. the
      # projection head when finetuning). They get None, as in the plain step, so the
      # optimizer leaves them alone instead of decaying them with a zero gradient.
      unreached.update(index for index, gradient in enumerate(gradients) if gradient is None)
      gradients = _zeros_for_none(gradients, totals)
      return [total + tf.cast(gradient, total.dtype)
              for total, gradient in zip(totals, gradients)]

    def first(gradients: Sequence[Optional[tf.Tensor]]) -> list[tf.Tensor]:
      """The first micro-batch's gradients as the running sums (no zeros + g)."""
      unreached.update(index for index, gradient in enumerate(gradients) if gradient is None)
      return [tf.zeros(variable.shape, tf.float32) if gradient is None
              else tf.cast(gradient, tf.float32)
              for gradient, variable in zip(gradients, variables)]

    # The input-gradient kernels (transposed, flipped, per-phase weights) once per step,
    # not once per micro-batch: the weights do not change until the update.
    with resnet.reusing_gradient_kernels(model):
      supervised_sums = tf.zeros([2])
      if pretrain:
        # Pass 1: projections of micro-batches 0..n-2, no tape, BN statistics restored.
        def pass1_body(index, projections):
          projection = forward(micro(index)[0])['proj_head_output']
          with tf.control_dependencies([projection]):
            restore_statistics()
          return index + 1, projections.write(index, projection)

        _, projections = tf.while_loop(
            lambda index, _: index < num_micro - 1, pass1_body,
            (tf.constant(0), tf.TensorArray(tf.float32, size=num_micro - 1)))
        # The last micro-batch runs under a tape and its activations are kept: pass 2
        # then needs only micro-batches 0..n-2 (one forward pass fewer per step; the
        # peak still holds one micro-batch's activations, as pass 2 does).
        earlier_projections = projections.stack()  # [n - 1, 2m, d]
        last = tf.constant(num_micro - 1)
        with tf.GradientTape() as last_tape:
          # After the loop: its transients must be gone before activations are kept.
          with tf.control_dependencies([earlier_projections]):
            last_images, last_labels = micro(last)
          last_outputs = forward(last_images)
          last_projection = tf.cast(last_outputs['proj_head_output'], tf.float32)
          if supervised:
            last_cross_entropy, last_correct = supervised_terms(last_outputs, last_labels)
        last_statistics = statistics_after([last_projection])
        with tf.control_dependencies(last_statistics):
          restore_statistics()
        projections = tf.concat([earlier_projections, last_projection[tf.newaxis]], 0)  # [n, 2m, d]
        with tf.GradientTape() as tape:
          tape.watch(projections)
          hidden = merge_micro_projections(projections, num_views)
          loss_options = dict(temperature=config.loss.temperature,
                              hidden_norm=config.loss.hidden_norm,
                              replica_context=tf.distribute.get_replica_context())
          if config.train.jit_compile:  # XLA: static shapes, so no row blocks.
            contrast_loss, logits_ab, contrast_labels = losses.nt_xent_loss(
                hidden, **loss_options)
            contrast_metrics = losses.contrastive_metrics(logits_ab, contrast_labels)
          else:  # Row blocks: no [b, B] logits, whatever the batch.
            contrast_loss, contrast_metrics = losses.blocked_nt_xent_loss(
                hidden, **loss_options)
          scaled_contrast_loss = contrast_loss / num_replicas
        projection_gradients = tape.gradient(scaled_contrast_loss, projections)
        values['contrast_loss'] = contrast_loss
        values.update(contrast_metrics)
        # The last micro-batch's parameter gradients, from its kept activations.
        targets, upstream = [last_projection], [projection_gradients[num_micro - 1]]
        if supervised:
          # d(surrogate)/d(cross-entropy sum): the targets must be tensors the tape saw.
          targets.append(last_cross_entropy)
          upstream.append(tf.constant(1.0 / (supervised_rows * num_replicas)))
          supervised_sums = tf.stack([last_cross_entropy, last_correct])
        gradient_sums = first(last_tape.gradient(targets, variables,
                                                 output_gradients=upstream))
        statistic_sums = [tf.cast(value, initial.dtype)
                          for initial, value in zip(initial_statistics, last_statistics)]
        num_pass2 = num_micro - 1
      else:
        gradient_sums = [tf.zeros(v.shape, tf.float32) for v in variables]
        statistic_sums = [tf.zeros_like(value) for value in initial_statistics]
        num_pass2 = num_micro

      # Pass 2: forward + backward of each micro-batch with the cached upstream gradient.
      def pass2_body(index, gradient_sums, statistic_sums, supervised_sums):
        with tf.GradientTape() as tape:
          images, labels = micro(index)
          outputs = forward(images)
          surrogate = tf.constant(0.0)
          if pretrain:
            surrogate += tf.reduce_sum(
                tf.stop_gradient(projection_gradients[index]) * outputs['proj_head_output'])
          if supervised:
            cross_entropy, correct = supervised_terms(outputs, labels)
            surrogate += cross_entropy / (supervised_rows * num_replicas)
            supervised_sums = supervised_sums + tf.stack([cross_entropy, correct])
        gradient_sums = add(gradient_sums, tape.gradient(surrogate, variables))
        statistic_sums = [total + tf.cast(value, total.dtype) for total, value in
                          zip(statistic_sums, statistics_after(gradient_sums))]
        with tf.control_dependencies(statistic_sums):
          restore_statistics()
        return index + 1, gradient_sums, statistic_sums, supervised_sums

      _, gradient_sums, statistic_sums, supervised_sums = tf.while_loop(
          lambda index, *_: index < num_pass2, pass2_body,
          (tf.constant(0), gradient_sums, statistic_sums, supervised_sums))

    for variable, total in zip(statistics, statistic_sums):
      variable.assign(total / num_micro)

    with tf.GradientTape() as tape:
      weight_decay = optim.weight_decay_loss(model, config.optim)
      scaled_weight_decay = weight_decay / num_replicas
    decay_gradients = tape.gradient(scaled_weight_decay, variables)
    gradients = []
    for index, (total, decay) in enumerate(zip(gradient_sums, decay_gradients)):
      if decay is not None:
        total += tf.cast(decay, total.dtype)
      elif index in unreached:
        total = None
      gradients.append(total)
    optimizer.apply_gradients(zip(gradients, variables))

    loss = values.get('contrast_loss', tf.constant(0.0))
    if supervised:
      values['supervised_loss'] = supervised_sums[0] / supervised_rows
      values['supervised_acc'] = supervised_sums[1] / supervised_rows
      loss += values['supervised_loss']
    values['weight_decay'] = weight_decay
    values['total_loss'] = loss + weight_decay
    return metrics_lib.pack(values, metric_names)

  return train_step


def uses_grad_cache(config: config_lib.Config, num_replicas: int) -> bool:
  """Whether --micro_batch_size asks for micro-batches smaller than the replica batch."""
  micro = config.train.micro_batch_size
  return bool(micro) and micro < config.train.train_batch_size // max(1, num_replicas)


def describe(config: config_lib.Config, num_replicas: int) -> str:
  """One line for the run's log: how each replica's batch is split."""
  per_replica_batch = config.train.train_batch_size // max(1, num_replicas)
  micro = config.train.micro_batch_size
  views = 2 if config.train.train_mode == 'pretrain' else 1
  return (f'gradient caching (--micro_batch_size={micro}): each replica\'s '
          f'{per_replica_batch} examples in {num_micro_batches(per_replica_batch, micro)} '
          f'micro-batches of {micro} ({views * micro} images); exact NT-Xent over the '
          'whole batch, batch norm statistics per micro-batch.')


def maybe_build_train_step(config: config_lib.Config, model: keras.Model,
                           optimizer: keras.optimizers.Optimizer,
                           strategy: tf.distribute.Strategy, metric_names: Sequence[str]
                           ) -> Optional[Callable[[dict[str, tf.Tensor]], tf.Tensor]]:
  """The gradient-caching step when --micro_batch_size splits the batch, else None."""
  if not uses_grad_cache(config, strategy.num_replicas_in_sync):
    return None
  step = build_train_step(config, model, optimizer, strategy, metric_names)
  if config.train.jit_compile:
    return tf.function(step, jit_compile=True)
  return step
