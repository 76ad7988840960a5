"""NT-Xent contrastive loss, its training metrics, and the supervised loss.

Same math and scaling as google-research/simclr `tf2/objective.py`
(`add_contrastive_loss`, `add_supervised_loss`) and `tf2/metrics.py`, written as pure
functions: cross-replica gathering is done through a replica context passed in by the
caller, never through a global strategy.
"""

from __future__ import annotations

from typing import Optional

import tensorflow as tf

# Subtracted from self-similarity logits so that exp() of them is exactly 0 (official).
LARGE_NUM = 1e9


def _cast_to_float(tensor: tf.Tensor) -> tf.Tensor:
  """float16/bfloat16 -> float32; float32/float64 are kept (float64 for tests)."""
  if tensor.dtype in (tf.float32, tf.float64):
    return tensor
  return tf.cast(tensor, tf.float32)


def nt_xent_loss(
    hidden: tf.Tensor,
    *,
    temperature: float,
    hidden_norm: bool = True,
    replica_context: Optional[tf.distribute.ReplicaContext] = None,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """NT-Xent (normalised temperature-scaled cross-entropy) loss of SimCLR.

  `hidden` holds the local batch of b examples as two stacked views: rows 0..b-1 are
  view 1 (a), rows b..2b-1 view 2 (b). With a replica context of R replicas, both
  views are all-gathered from all replicas (gradients flow back through the gather),
  giving B = R * b global examples; replica r's example i has global index r * b + i.

  With z = l2_normalize(hidden) (if `hidden_norm`) and t = temperature:

    logits_ab[i, j] = z_a[i] . Z_b[j] / t           [b, B]  (Z: gathered)
    logits_aa[i, j] = z_a[i] . Z_a[j] / t - LARGE_NUM * [j == g(i)]
    logits_ba, logits_bb likewise for view-2 anchors,   g(i) = r * b + i
    loss_a[i] = -log softmax([logits_ab[i], logits_aa[i]])[g(i)]
    loss_b[i] = -log softmax([logits_ba[i], logits_bb[i]])[g(i)]
    loss = mean_i(loss_a[i] + loss_b[i])

  i.e. the sum of the mean over view-1 anchors and the mean over view-2 anchors, which
  is twice the paper's L = 1/(2N) sum_k [l(2k-1, 2k) + l(2k, 2k-1)]. Under a strategy
  each replica returns its local value; the caller divides by R before summing
  gradients (as the official training loop does), which yields the gradient of the
  loss over the global batch. The two softmax pieces are combined with logsumexp, not
  concatenated, so no [b, 2B] logits copy is made; the result equals the official
  concatenation (tests check this).

  Args:
    hidden: [2b, d] projections, view 1 rows then view 2 rows. float16/bfloat16 are
      cast to float32.
    temperature: softmax temperature t > 0.
    hidden_norm: L2-normalise `hidden` rows first (cosine similarity).
    replica_context: `tf.distribute.get_replica_context()` inside
      `strategy.run`; None (or a single replica) for no gathering.

  Returns:
    (loss, logits_ab, labels): scalar loss; logits_ab [b, B] view-1 vs gathered view-2
    logits; labels [b, 2B] one-hot of the positive g(i), as the official code returns.
  """
  hidden = _cast_to_float(tf.convert_to_tensor(hidden))
  if hidden_norm:
    hidden = tf.math.l2_normalize(hidden, axis=-1)
  hidden1, hidden2 = tf.split(hidden, 2, axis=0)  # [b, d] each
  batch_size = tf.shape(hidden1)[0]

  if replica_context is not None and replica_context.num_replicas_in_sync > 1:
    hidden1_large = replica_context.all_gather(hidden1, axis=0)  # [B, d]
    hidden2_large = replica_context.all_gather(hidden2, axis=0)  # [B, d]
    replica_id = tf.cast(
        tf.cast(replica_context.replica_id_in_sync_group, tf.uint32), tf.int32)
  else:
    hidden1_large, hidden2_large = hidden1, hidden2
    replica_id = tf.constant(0, tf.int32)
  enlarged_batch_size = tf.shape(hidden1_large)[0]
  labels_idx = tf.range(batch_size) + replica_id * batch_size  # [b] global positives

  # Self-similarity mask: add -LARGE_NUM at (i, g(i)) without a dense [b, B] mask.
  self_indices = tf.stack([tf.range(batch_size), labels_idx], axis=1)  # [b, 2]
  self_offsets = tf.fill([batch_size], tf.constant(-LARGE_NUM, hidden.dtype))

  def masked(logits: tf.Tensor) -> tf.Tensor:
    return tf.tensor_scatter_nd_add(logits, self_indices, self_offsets)

  logits_aa = masked(tf.matmul(hidden1, hidden1_large, transpose_b=True) / temperature)
  logits_bb = masked(tf.matmul(hidden2, hidden2_large, transpose_b=True) / temperature)
  logits_ab = tf.matmul(hidden1, hidden2_large, transpose_b=True) / temperature
  logits_ba = tf.matmul(hidden2, hidden1_large, transpose_b=True) / temperature

  # The positive logit of anchor i is logits_ab[i, g(i)] = logits_ba[i, g(i)].
  positive_index = tf.stack([tf.range(batch_size), labels_idx], axis=1)  # [b, 2]
  positive_ab = tf.gather_nd(logits_ab, positive_index)  # [b]
  positive_ba = tf.gather_nd(logits_ba, positive_index)  # [b]

  def log_normaliser(cross: tf.Tensor, same: tf.Tensor) -> tf.Tensor:
    # logsumexp over the concatenation [cross, same] along axis 1, per row: [b].
    return tf.reduce_logsumexp(
        tf.stack([tf.reduce_logsumexp(cross, axis=1),
                  tf.reduce_logsumexp(same, axis=1)], axis=1), axis=1)

  loss_a = log_normaliser(logits_ab, logits_aa) - positive_ab  # [b]
  loss_b = log_normaliser(logits_ba, logits_bb) - positive_ba  # [b]
  loss = tf.reduce_mean(loss_a + loss_b)

  labels = tf.one_hot(labels_idx, enlarged_batch_size * 2, dtype=hidden.dtype)  # [b, 2B]
  return loss, logits_ab, labels


# Elements of one row block's [r, 2B] logits when the block size is chosen: 2^21 float32
# values = 8 MiB per copy (the block's logits, softmax and gradient are a few copies).
BLOCK_ELEMENTS = 2 ** 21


def default_block_rows(local_rows: int, num_replicas: int) -> int:
  """Anchor rows per block: all 2b local rows if their logits fit BLOCK_ELEMENTS.

  Args:
    local_rows: 2b, the replica's rows (both views).
    num_replicas: R; the keys are the 2B = R * 2b gathered rows.

  Returns:
    max(1, BLOCK_ELEMENTS // 2B), at most 2b: one block up to B = 1024 (2B = 2048
    keys), 256 rows per block at B = 4096.
  """
  return max(1, min(local_rows, BLOCK_ELEMENTS // max(1, num_replicas * local_rows)))


def blocked_nt_xent_loss(
    hidden: tf.Tensor,
    *,
    temperature: float,
    hidden_norm: bool = True,
    replica_context: Optional[tf.distribute.ReplicaContext] = None,
    block_rows: Optional[int] = None,
) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
  """`nt_xent_loss` and its gradient computed in row blocks, without [b, B] logits.

  Same loss, scale and cross-replica gathering as `nt_xent_loss`, for large batches:
  its [b, B] logit blocks (four of them, plus their softmax and gradients: about
  0.5 GiB at B = 4096) are never materialised. With z = l2_normalize(hidden) (if
  `hidden_norm`), the 2b local anchors z [2b, d] (view 1 rows then view 2 rows) and
  the 2B gathered keys K = [Z_a; Z_b] [2B, d] (view 1 of all replicas, then view 2),
  anchor row j (view v = j // b, local example i = j mod b, global g(i) = r * b + i):

    s_j[k] = z_j . K_k / t - LARGE_NUM * [k == v * B + g(i)]      (self masked)
    p_j = softmax(s_j),   loss_j = -log p_j[(1 - v) * B + g(i)]   (the other view)
    loss = sum_j loss_j / b

  equal to `nt_xent_loss`'s mean_i(loss_a[i] + loss_b[i]). The anchors are processed
  in blocks of `block_rows` rows against all 2B keys (a tf.while_loop; the last block
  may be shorter). Each block yields, in the same pass, its share of the loss and of
  the gradient (a tf.custom_gradient):

    dloss/ds_j = (p_j - onehot(positive_j)) / b
    dloss/dz_j += dloss/ds_j K / t  [r, d],   dloss/dK += (dloss/ds_block)^T z_block / t

  so memory holds a few [r, 2B] blocks and the [2B, d] key gradient, not [2b, 2B]; the
  logits are computed once (no recomputation in the backward pass). Normalisation and
  the gather are ordinary differentiable ops around that core, so gradients reach
  `hidden` of every replica through the gather as for `nt_xent_loss`.

  The contrastive metrics of `contrastive_metrics` are computed per block too, from the
  view-1 anchors' logits against the gathered view-2 keys (logits_ab).

  Args:
    hidden: [2b, d] projections, view 1 rows then view 2 rows. float16/bfloat16 are
      cast to float32.
    temperature: softmax temperature t > 0.
    hidden_norm: L2-normalise `hidden` rows first (cosine similarity).
    replica_context: `tf.distribute.get_replica_context()` inside `strategy.run`; None
      (or a single replica) for no gathering.
    block_rows: anchor rows r per block (>= 1); None: `default_block_rows` (needs the
      static row count of `hidden`, else 256).

  Returns:
    (loss, metrics): the scalar loss (differentiable) and {'contrast_acc',
    'contrast_entropy'} as `contrastive_metrics` returns them (no gradient).
  """
  hidden = _cast_to_float(tf.convert_to_tensor(hidden))
  if hidden_norm:
    hidden = tf.math.l2_normalize(hidden, axis=-1)
  hidden1, hidden2 = tf.split(hidden, 2, axis=0)  # [b, d] each
  num_replicas = 1
  if replica_context is not None and replica_context.num_replicas_in_sync > 1:
    num_replicas = replica_context.num_replicas_in_sync
    keys = tf.concat([replica_context.all_gather(hidden1, axis=0),
                      replica_context.all_gather(hidden2, axis=0)], axis=0)  # [2B, d]
    replica_id = tf.cast(
        tf.cast(replica_context.replica_id_in_sync_group, tf.uint32), tf.int32)
  else:
    keys = hidden
    replica_id = tf.constant(0, tf.int32)
  if block_rows is None:
    local_rows = hidden.shape[0]
    block_rows = default_block_rows(local_rows, num_replicas) if local_rows else 256
  if block_rows < 1:
    raise ValueError(f'block_rows={block_rows} must be >= 1.')
  return _blocked_nt_xent_core(hidden, keys, replica_id, temperature, block_rows)


def _blocked_nt_xent_core(anchors: tf.Tensor, keys: tf.Tensor, replica_id: tf.Tensor,
                          temperature: float, block_rows: int
                          ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
  """Loss of anchors [2b, d] against keys [2B, d] by row blocks (see the caller)."""
  dtype = anchors.dtype
  local_rows = tf.shape(anchors)[0]  # 2b
  batch_size = local_rows // 2  # b
  num_keys = tf.shape(keys)[0]  # 2B
  enlarged_batch_size = num_keys // 2  # B
  offset = replica_id * batch_size  # g(i) = offset + i
  num_blocks = (local_rows + block_rows - 1) // block_rows
  inverse_temperature = tf.constant(1.0 / temperature, dtype)
  large_num = tf.constant(LARGE_NUM, dtype)

  def block(anchors: tf.Tensor, keys: tf.Tensor, index: tf.Tensor):
    """Loss sum, d/d(block anchors), d/d(keys) and metric sums of block `index`."""
    start = index * block_rows
    end = tf.minimum(start + block_rows, local_rows)
    rows = tf.range(start, end)  # j
    block_anchors = anchors[start:end]  # [r, d]
    view = rows // batch_size
    example = offset + rows % batch_size  # g(i)
    self_column = view * enlarged_batch_size + example
    positive_column = (1 - view) * enlarged_batch_size + example
    positions = tf.range(end - start)
    logits = tf.matmul(block_anchors, keys, transpose_b=True) * inverse_temperature  # [r, 2B]
    logits = tf.tensor_scatter_nd_add(
        logits, tf.stack([positions, self_column], 1), tf.fill([end - start], -large_num))
    log_normaliser = tf.reduce_logsumexp(logits, axis=1)  # [r]
    positive = tf.gather_nd(logits, tf.stack([positions, positive_column], 1))  # [r]
    loss_sum = tf.reduce_sum(log_normaliser - positive)
    logit_gradient = tf.tensor_scatter_nd_add(
        tf.exp(logits - log_normaliser[:, None]), tf.stack([positions, positive_column], 1),
        tf.fill([end - start], tf.constant(-1.0, dtype)))
    logit_gradient *= inverse_temperature / tf.cast(batch_size, dtype)
    anchor_gradient = tf.matmul(logit_gradient, keys)  # [r, d]
    key_gradient = tf.matmul(logit_gradient, block_anchors, transpose_a=True)  # [2B, d]
    # Metrics on the block's view-1 rows (a prefix of it): logits_ab = their view-2 part.
    view1_rows = tf.clip_by_value(batch_size - start, 0, end - start)
    cross = logits[:view1_rows, enlarged_batch_size:]  # [r1, B]
    correct = tf.reduce_sum(tf.cast(tf.equal(
        tf.argmax(cross, axis=1, output_type=tf.int32), example[:view1_rows]), tf.float32))
    probabilities = tf.nn.softmax(cross)
    entropy = -tf.reduce_sum(probabilities * tf.math.log(probabilities + 1e-8))
    return loss_sum, anchor_gradient, key_gradient, correct, tf.cast(entropy, tf.float32)

  @tf.custom_gradient
  def loss_of(anchors: tf.Tensor, keys: tf.Tensor):
    def body(index, loss_sum, anchor_gradients, key_gradient, correct, entropy):
      block_loss, block_anchor_gradient, block_key_gradient, block_correct, block_entropy = (
          block(anchors, keys, index))
      return (index + 1, loss_sum + block_loss,
              anchor_gradients.write(index, block_anchor_gradient),
              key_gradient + block_key_gradient, correct + block_correct,
              entropy + block_entropy)

    _, loss_sum, anchor_gradients, key_gradient, correct, entropy = tf.while_loop(
        lambda index, *_: index < num_blocks, body,
        (tf.constant(0), tf.zeros([], dtype),
         tf.TensorArray(dtype, size=num_blocks, infer_shape=False,
                        element_shape=tf.TensorShape([None, anchors.shape[-1]])),
         tf.zeros_like(keys), tf.zeros([]), tf.zeros([])))
    anchor_gradient = anchor_gradients.concat()  # [2b, d]
    loss = loss_sum / tf.cast(batch_size, dtype)
    metrics = tf.stack([correct, entropy]) / tf.cast(batch_size, tf.float32)

    def gradient(upstream: tf.Tensor, unused_metrics_upstream: tf.Tensor = None):
      return upstream * anchor_gradient, upstream * key_gradient

    return (loss, metrics), gradient

  loss, metrics = loss_of(anchors, keys)
  metrics = tf.stop_gradient(metrics)
  return loss, {'contrast_acc': metrics[0], 'contrast_entropy': metrics[1]}


def contrastive_metrics(logits_ab: tf.Tensor, labels: tf.Tensor) -> dict[str, tf.Tensor]:
  """Contrastive accuracy and entropy as official `tf2/metrics.py`.

  Args:
    logits_ab: [b, B] logits from `nt_xent_loss`.
    labels: [b, 2B] one-hot labels from `nt_xent_loss`.

  Returns:
    {'contrast_acc': fraction of rows whose argmax of logits_ab is the positive,
     'contrast_entropy': mean over rows of the entropy of softmax(logits_ab)}.
  """
  correct = tf.equal(tf.argmax(labels, axis=1), tf.argmax(logits_ab, axis=1))
  contrast_acc = tf.reduce_mean(tf.cast(correct, tf.float32))
  probabilities = tf.nn.softmax(logits_ab)
  contrast_entropy = -tf.reduce_mean(
      tf.reduce_sum(probabilities * tf.math.log(probabilities + 1e-8), axis=-1))
  return {'contrast_acc': contrast_acc,
          'contrast_entropy': tf.cast(contrast_entropy, tf.float32)}


def supervised_loss(labels_onehot: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
  """Mean softmax cross-entropy over the local batch (official `add_supervised_loss`).

  Args:
    labels_onehot: [b, C] one-hot (or soft) labels.
    logits: [b, C] logits; float16/bfloat16 are cast to float32.

  Returns:
    Scalar mean cross-entropy.
  """
  logits = _cast_to_float(tf.convert_to_tensor(logits))
  labels_onehot = tf.cast(labels_onehot, logits.dtype)
  return tf.reduce_mean(
      tf.nn.softmax_cross_entropy_with_logits(labels=labels_onehot, logits=logits))


def supervised_accuracy(labels_onehot: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
  """Fraction of rows whose argmax of `logits` equals the argmax of `labels_onehot`."""
  correct = tf.equal(tf.argmax(labels_onehot, axis=1), tf.argmax(logits, axis=1))
  return tf.reduce_mean(tf.cast(correct, tf.float32))


def distillation_loss(
    teacher_logits: tf.Tensor,
    student_logits: tf.Tensor,
    *,
    temperature: float = 1.0,
    labels_onehot: Optional[tf.Tensor] = None,
    labeled_logits: Optional[tf.Tensor] = None,
    label_weight: float = 0.0,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """SimCLRv2 distillation loss (Chen et al. 2020b, eq. 3), plus an optional label term.

  On b unlabelled images, teacher logits t [b, C] and student logits s [b, C] of the
  same augmented view, with temperature T:

    p_T[i] = softmax(t[i] / T),   log p_S[i] = log_softmax(s[i] / T)
    distill = mean_i( -sum_c p_T[i, c] * log p_S[i, c] )
    supervised = mean_j( -sum_c y[j, c] * log_softmax(s_L[j])[c] )   (T = 1)
    total = distill + label_weight * supervised

  with s_L [b_L, C] the student logits of a labelled batch and y [b_L, C] its one-hot
  labels. No gradient flows into the teacher logits. The paper's weighted form
  (1 - a) * supervised + a * distill is this total times a with label_weight =
  (1 - a) / a. Each replica returns its local means; dividing by the number of
  replicas before summing gradients gives the global-batch mean, as for `nt_xent_loss`.

  Args:
    teacher_logits: [b, C] teacher logits; float16/bfloat16 are cast to float32.
    student_logits: [b, C] student logits on the same images.
    temperature: T > 0, applied to both teacher and student logits.
    labels_onehot: [b_L, C] labels of the labelled batch; needed when label_weight > 0.
    labeled_logits: [b_L, C] student logits of the labelled batch.
    label_weight: weight of the supervised term; 0 leaves it out (then it is 0).

  Returns:
    (total, distill, supervised) scalars; supervised is 0 when label_weight is 0.
  """
  if temperature <= 0:
    raise ValueError(f'--distill_temperature={temperature} must be > 0.')
  student_logits = _cast_to_float(tf.convert_to_tensor(student_logits))
  teacher_logits = tf.stop_gradient(tf.cast(teacher_logits, student_logits.dtype))
  teacher_probabilities = tf.nn.softmax(teacher_logits / temperature, axis=-1)  # [b, C]
  distill = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(
      labels=teacher_probabilities, logits=student_logits / temperature))
  if label_weight:
    if labels_onehot is None or labeled_logits is None:
      raise ValueError('distillation_loss: label_weight > 0 needs labels_onehot and '
                       'labeled_logits.')
    supervised = tf.cast(supervised_loss(labels_onehot, labeled_logits), distill.dtype)
  else:
    supervised = tf.zeros([], distill.dtype)
  return distill + label_weight * supervised, distill, supervised
