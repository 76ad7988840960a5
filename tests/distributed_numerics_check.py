"""Multi-replica vs single-device numerics of NT-Xent and LARS (run as a subprocess).

Logical CPU devices must be configured before any TF op, so tests/test_losses_distributed
runs this script in a fresh process:

  python tests/distributed_numerics_check.py --num_replicas=2

(one replica count per process: two MirroredStrategies of different sizes in one
process clash in their collective groups). It prints one JSON line of maximum
differences between a MirroredStrategy run over N logical CPUs and the single-device full-batch run of the same computation:
  loss_*: NT-Xent loss (replica losses / N summed), gradients w.r.t. a dense layer's
    kernel (summed over replicas, as apply_gradients does) and w.r.t. each replica's
    own input rows, logits_ab rows, contrastive metrics;
  no_gather_*: the same with replica_context=None (negatives only from the local
    batch), which must differ: it shows the check can fail;
  blocked_*: `losses.blocked_nt_xent_loss` (row blocks of 4) with gathered negatives:
    loss, kernel and input-row gradients, metrics, against the same single-device run;
  lars_*: weights and momentum after 3 LARS steps with WarmUpAndCosineDecay.

Global batch ordering: the global batch has B = N * b examples, views x1 [B, d] and
x2 [B, d]. Replica r holds [x1[r*b:(r+1)*b]; x2[r*b:(r+1)*b]] ([2b, d], its own view 1
rows then view 2 rows); the single-device run holds [x1; x2] ([2B, d]).
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--num_replicas', type=int, default=2)
  parser.add_argument('--local_batch', type=int, default=3)
  args = parser.parse_args()

  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  cpus = tf.config.list_physical_devices('CPU')
  tf.config.set_logical_device_configuration(
      cpus[0], [tf.config.LogicalDeviceConfiguration()] * args.num_replicas)
  print(json.dumps(check(args.num_replicas, args.local_batch)))


def check(num_replicas: int, local_batch: int) -> dict:
  """Runs all comparisons on the first `num_replicas` logical CPUs."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  import keras  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from tf_simclr import config as config_lib  # pylint: disable=g-import-not-at-top
  from tf_simclr import losses  # pylint: disable=g-import-not-at-top
  from tf_simclr import optim  # pylint: disable=g-import-not-at-top

  global_batch = num_replicas * local_batch
  input_dim, hidden_dim, num_classes, temperature = 5, 4, 3, 0.2
  devices = [f'/cpu:{index}' for index in range(num_replicas)]
  strategy = tf.distribute.MirroredStrategy(devices)
  assert strategy.num_replicas_in_sync == num_replicas

  rng = np.random.default_rng(num_replicas)
  view1 = rng.normal(size=(global_batch, input_dim)).astype(np.float32)
  view2 = (view1 + 0.5 * rng.normal(size=(global_batch, input_dim))).astype(np.float32)
  classes = rng.integers(0, num_classes, size=global_batch)
  onehot = np.eye(num_classes, dtype=np.float32)[classes]
  kernel_init = rng.normal(size=(input_dim, hidden_dim)).astype(np.float32)

  def local_rows(array: np.ndarray, replica: int) -> np.ndarray:
    return array[replica * local_batch:(replica + 1) * local_batch]

  replica_inputs = [np.concatenate([local_rows(view1, r), local_rows(view2, r)])
                    for r in range(num_replicas)]  # [2b, d] each
  replica_labels = [local_rows(onehot, r) for r in range(num_replicas)]  # [b, C] each
  global_inputs = np.concatenate([view1, view2])  # [2B, d]

  def distribute(per_replica: list) -> object:
    return strategy.experimental_distribute_values_from_function(
        lambda context: tf.constant(per_replica[context.replica_id_in_sync_group]))

  results = {}

  # ---- NT-Xent: loss, gradients, logits, metrics ----
  single_kernel = tf.Variable(kernel_init)
  with strategy.scope():
    mirrored_kernel = tf.Variable(kernel_init)

  def loss_and_gradients(inputs, kernel, replica_context, scale):
    with tf.GradientTape() as tape:
      tape.watch(inputs)
      hidden = tf.tanh(tf.matmul(inputs, kernel))
      loss, logits_ab, labels = losses.nt_xent_loss(
          hidden, temperature=temperature, replica_context=replica_context)
      scaled_loss = loss / scale
    kernel_gradient, input_gradient = tape.gradient(scaled_loss, [kernel, inputs])
    metrics = losses.contrastive_metrics(logits_ab, labels)
    return (scaled_loss, kernel_gradient, input_gradient, logits_ab, labels,
            metrics['contrast_acc'], metrics['contrast_entropy'])

  single = loss_and_gradients(tf.constant(global_inputs), single_kernel, None, 1.0)
  single_loss, single_kernel_gradient, single_input_gradient, single_logits, _, single_acc, \
      single_entropy = [t.numpy() for t in single]

  distributed_inputs = distribute(replica_inputs)
  for variant, use_context in (('loss', True), ('no_gather', False)):

    @tf.function
    def replica_step(inputs, use_context=use_context):
      context = tf.distribute.get_replica_context() if use_context else None
      return loss_and_gradients(inputs, mirrored_kernel, context, float(num_replicas))

    outputs = strategy.run(replica_step, args=(distributed_inputs,))
    scaled_loss, kernel_gradient, input_gradient, logits_ab, labels, acc, entropy = outputs
    loss_sum = strategy.reduce(tf.distribute.ReduceOp.SUM, scaled_loss, axis=None).numpy()
    kernel_gradient_sum = strategy.reduce(
        tf.distribute.ReduceOp.SUM, kernel_gradient, axis=None).numpy()
    input_gradients = [t.numpy() for t in strategy.experimental_local_results(input_gradient)]
    logits = [t.numpy() for t in strategy.experimental_local_results(logits_ab)]
    label_list = [t.numpy() for t in strategy.experimental_local_results(labels)]
    acc_mean = strategy.reduce(tf.distribute.ReduceOp.MEAN, acc, axis=None).numpy()
    entropy_mean = strategy.reduce(tf.distribute.ReduceOp.MEAN, entropy, axis=None).numpy()

    input_error = 0.0
    logits_error = 0.0
    labels_ok = True
    for replica in range(num_replicas):
      # The single-device gradient rows of this replica's examples, in its order.
      expected_rows = np.concatenate([
          local_rows(single_input_gradient, replica),
          local_rows(single_input_gradient[global_batch:], replica)])
      input_error = max(input_error, float(np.abs(input_gradients[replica] - expected_rows).max()))
      if logits[replica].shape == (local_batch, global_batch):
        logits_error = max(logits_error, float(
            np.abs(logits[replica] - local_rows(single_logits, replica)).max()))
      else:
        logits_error = float('inf')
      expected_labels = np.zeros((local_batch, 2 * global_batch), np.float32)
      expected_labels[np.arange(local_batch), replica * local_batch + np.arange(local_batch)] = 1
      labels_ok &= (label_list[replica].shape == expected_labels.shape
                    and bool(np.all(label_list[replica] == expected_labels)))
    results[f'{variant}_value_error'] = float(abs(loss_sum - single_loss))
    results[f'{variant}_kernel_gradient_error'] = float(
        np.abs(kernel_gradient_sum - single_kernel_gradient).max())
    results[f'{variant}_input_gradient_error'] = input_error
    results[f'{variant}_logits_error'] = logits_error
    results[f'{variant}_labels_ok'] = bool(labels_ok)
    results[f'{variant}_metrics_error'] = float(max(abs(acc_mean - single_acc),
                                                    abs(entropy_mean - single_entropy)))
  # ---- Row-blocked NT-Xent (gradient caching's loss), gathered, vs the same single ----
  # 4 rows per block: does not divide a replica's 2b = 6 rows.
  @tf.function
  def blocked_step(inputs):
    with tf.GradientTape() as tape:
      tape.watch(inputs)
      hidden = tf.tanh(tf.matmul(inputs, mirrored_kernel))
      loss, metrics = losses.blocked_nt_xent_loss(
          hidden, temperature=temperature,
          replica_context=tf.distribute.get_replica_context(), block_rows=4)
      scaled_loss = loss / float(num_replicas)
    kernel_gradient, input_gradient = tape.gradient(scaled_loss, [mirrored_kernel, inputs])
    return (scaled_loss, kernel_gradient, input_gradient, metrics['contrast_acc'],
            metrics['contrast_entropy'])

  scaled_loss, kernel_gradient, input_gradient, acc, entropy = strategy.run(
      blocked_step, args=(distributed_inputs,))
  input_gradients = [t.numpy() for t in strategy.experimental_local_results(input_gradient)]
  results['blocked_value_error'] = float(abs(
      strategy.reduce(tf.distribute.ReduceOp.SUM, scaled_loss, axis=None).numpy()
      - single_loss))
  results['blocked_kernel_gradient_error'] = float(np.abs(
      strategy.reduce(tf.distribute.ReduceOp.SUM, kernel_gradient, axis=None).numpy()
      - single_kernel_gradient).max())
  results['blocked_input_gradient_error'] = max(float(np.abs(
      input_gradients[replica] - np.concatenate([
          local_rows(single_input_gradient, replica),
          local_rows(single_input_gradient[global_batch:], replica)])).max())
      for replica in range(num_replicas))
  results['blocked_metrics_error'] = float(max(
      abs(strategy.reduce(tf.distribute.ReduceOp.MEAN, acc, axis=None).numpy() - single_acc),
      abs(strategy.reduce(tf.distribute.ReduceOp.MEAN, entropy, axis=None).numpy()
          - single_entropy)))
  results['single_loss'] = float(single_loss)
  results['kernel_gradient_scale'] = float(np.abs(single_kernel_gradient).max())

  # ---- LARS: three train steps with a schedule, multi-replica vs single device ----
  optim_config = config_lib.OptimConfig(optimizer='lars', weight_decay=1e-2, momentum=0.9)

  def make_model() -> keras.Model:
    inputs = keras.Input((input_dim,))
    hidden = keras.layers.Dense(hidden_dim, activation='tanh', name='dense')(inputs)
    projection = keras.layers.Dense(hidden_dim, name='projection')(hidden)
    logits = keras.layers.Dense(num_classes, name='head_supervised')(
        keras.ops.stop_gradient(hidden))
    return keras.Model(inputs, [projection, logits])

  def make_optimizer() -> optim.LARS:
    schedule = optim.WarmUpAndCosineDecay(
        base_learning_rate=2.0, num_examples=global_batch * 2,
        train_batch_size=global_batch, warmup_epochs=1.0, total_steps=6)
    return optim.build_optimizer(optim_config, schedule)

  keras.utils.set_random_seed(7)
  single_model = make_model()
  initial_weights = single_model.get_weights()
  single_optimizer = make_optimizer()
  single_optimizer.build(single_model.trainable_variables)
  with strategy.scope():
    mirrored_model = make_model()
    mirrored_model.set_weights(initial_weights)
    mirrored_optimizer = make_optimizer()
    mirrored_optimizer.build(mirrored_model.trainable_variables)

  def train_step(model, optimizer, inputs, labels, replica_context, scale):
    with tf.GradientTape() as tape:
      projection, logits = model(inputs, training=True)
      contrast_loss, _, _ = losses.nt_xent_loss(
          projection, temperature=temperature, replica_context=replica_context)
      supervised = losses.supervised_loss(tf.concat([labels, labels], 0), logits)
      loss = (contrast_loss + supervised + optim.weight_decay_loss(model, optim_config)) / scale
    gradients = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(gradients, model.trainable_variables))
    return loss

  distributed_labels = distribute(replica_labels)

  @tf.function
  def mirrored_train_step(inputs, labels):
    return strategy.run(
        lambda x, y: train_step(mirrored_model, mirrored_optimizer, x, y,
                                tf.distribute.get_replica_context(), float(num_replicas)),
        args=(inputs, labels))

  @tf.function
  def single_train_step(inputs, labels):
    return train_step(single_model, single_optimizer, inputs, labels, None, 1.0)

  for _ in range(3):
    single_train_step(tf.constant(global_inputs), tf.constant(onehot))
    mirrored_train_step(distributed_inputs, distributed_labels)

  weight_error = max(float(np.abs(a - b).max()) for a, b in zip(
      single_model.get_weights(), mirrored_model.get_weights()))
  momentum_error = max(
      float(np.abs(a.numpy() - b.numpy()).max())
      for a, b in zip(single_optimizer.momentums, mirrored_optimizer.momentums))
  moved = max(float(np.abs(a - b).max()) for a, b in zip(
      initial_weights, mirrored_model.get_weights()))
  results['lars_weight_error'] = weight_error
  results['lars_momentum_error'] = momentum_error
  results['lars_weight_change'] = moved
  results['lars_iterations'] = int(mirrored_optimizer.iterations.numpy())
  return results


if __name__ == '__main__':
  main()
