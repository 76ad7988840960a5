"""Subprocess: official schedule, weight decay, LARS, losses and metrics on fixed inputs.

    python official_optim_script.py OFFICIAL_DIR OUT.npz

Imports the official run.py (it defines the flags model.py reads), model.py,
lars_optimizer.py, objective.py and metrics.py, unmodified, under tf_keras. Writes
inputs and official outputs to OUT.npz for tests/official/test_optim_losses.py.
"""

import json
import os
import sys

import numpy as np

official_dir, out_path = sys.argv[1], sys.argv[2]
sys.path.insert(0, official_dir)

import tensorflow.compat.v2 as tf  # noqa: E402

import lars_optimizer  # noqa: E402  The official modules, unmodified.
import metrics  # noqa: E402
import model as model_lib  # noqa: E402
import objective  # noqa: E402
import run  # noqa: E402,F401  Defines the flags.

FLAGS = run.FLAGS
rng = np.random.RandomState(7)
out = {}


def parse(*args):
  FLAGS.unparse_flags()
  FLAGS(['official', '--use_tpu=false', *args])


# Learning-rate schedule at every step of short runs.
schedules = [
    dict(learning_rate=0.3, train_batch_size=256, num_examples=1000, warmup_epochs=2.0,
         train_epochs=5, train_steps=0, learning_rate_scaling='linear'),
    dict(learning_rate=0.075, train_batch_size=64, num_examples=500, warmup_epochs=0.5,
         train_epochs=100, train_steps=40, learning_rate_scaling='sqrt'),
    dict(learning_rate=1.0, train_batch_size=16, num_examples=100, warmup_epochs=0.0,
         train_epochs=2, train_steps=0, learning_rate_scaling='linear'),
    dict(learning_rate=0.5, train_batch_size=128, num_examples=300, warmup_epochs=10.0,
         train_epochs=3, train_steps=0, learning_rate_scaling='linear'),
]
for index, schedule in enumerate(schedules):
  parse(*[f'--{key}={value}' for key, value in schedule.items() if key != 'num_examples'])
  learning_rate = model_lib.WarmUpAndCosineDecay(schedule['learning_rate'],
                                                 schedule['num_examples'])
  total_steps = model_lib.get_train_steps(schedule['num_examples'])
  out[f'schedule_{index}_total_steps'] = np.int64(total_steps)
  out[f'schedule_{index}_values'] = np.array(
      [float(learning_rate(tf.constant(step, tf.float32))) for step in range(total_steps + 2)])
out['schedules'] = np.array(json.dumps(schedules))

# Weight decay and LARS exclusions on the official ResNet-18 SimCLR model.
for optimizer in ('lars', 'momentum'):
  parse('--resnet_depth=18', '--image_size=32', '--train_mode=pretrain',
        f'--optimizer={optimizer}', '--weight_decay=0.01')
  model = model_lib.Model(num_classes=10)
  model(tf.zeros([2, 32, 32, 6]), training=False)
  variables = model.trainable_variables
  for variable in variables:  # Values set by shape (creation orders differ).
    variable.assign(tf.fill(variable.shape, 0.01 * (1 + sum(variable.shape) % 7)))
  out[f'decay_{optimizer}_value'] = np.float64(
      model_lib.add_weight_decay(model, adjust_per_optimizer=True))
  if optimizer == 'lars':
    lars = model_lib.build_optimizer(0.1)
    out['variable_shapes'] = np.array(json.dumps([list(v.shape) for v in variables]))
    out['variable_names'] = np.array(json.dumps([v.name for v in variables]))
    out['lars_decay'] = np.array([lars._use_weight_decay(v.name) for v in variables])
    out['lars_adaptation'] = np.array([lars._do_layer_adaptation(v.name) for v in variables])
    out['decay_lars_selected'] = np.array(
        ['head_supervised' in v.name and 'bias' not in v.name for v in variables])

# LARS updates: three steps on variables named like the model's, with given gradients.
names = ['dense/kernel', 'dense/bias', 'batch_normalization/gamma', 'head_supervised/kernel',
         'zero_init/kernel']
shapes = [(4, 3), (3,), (3,), (3, 2), (3, 2)]
initial = [rng.normal(size=shape).astype(np.float32) for shape in shapes]
initial[4][:] = 0.0  # ||w|| = 0: trust ratio 1.
gradients = [[rng.normal(size=shape).astype(np.float32) for shape in shapes] for _ in range(3)]
gradients[1][0][:] = 0.0  # ||g|| = 0 on one step.
variables = [tf.Variable(value, name=name) for value, name in zip(initial, names)]
lars = lars_optimizer.LARSOptimizer(0.7, momentum=0.9, weight_decay=1e-2,
                                    exclude_from_weight_decay=['batch_normalization', 'bias',
                                                               'head_supervised'])
for step in range(3):
  lars.apply_gradients(zip([tf.constant(g) for g in gradients[step]], variables))
  for index, variable in enumerate(variables):
    out[f'lars_step{step}_var{index}'] = variable.numpy()
for index in range(len(names)):
  out[f'lars_initial_{index}'] = initial[index]
  for step in range(3):
    out[f'lars_gradient_{step}_{index}'] = gradients[step][index]
out['lars_names'] = np.array(json.dumps(names))

# NT-Xent with and without hidden_norm, its gradient, and the pretraining metrics.
hidden = rng.normal(size=(12, 5)).astype(np.float32)
hidden[7] = hidden[1] * 3.0  # One exact positive pair (up to scale).
out['hidden'] = hidden
for hidden_norm in (True, False):
  for temperature in (0.1, 0.5):
    key = f'ntxent_{int(hidden_norm)}_{temperature}'
    tensor = tf.constant(hidden)
    with tf.GradientTape() as tape:
      tape.watch(tensor)
      loss, logits_ab, labels = objective.add_contrastive_loss(
          tensor, hidden_norm=hidden_norm, temperature=temperature)
    out[key + '_loss'] = loss.numpy()
    out[key + '_gradient'] = tape.gradient(loss, tensor).numpy()
    out[key + '_logits_ab'] = logits_ab.numpy()
    out[key + '_labels'] = labels.numpy()
    contrast_loss = tf.keras.metrics.Mean()
    contrast_acc = tf.keras.metrics.Mean()
    contrast_entropy = tf.keras.metrics.Mean()
    metrics.update_pretrain_metrics_train(contrast_loss, contrast_acc, contrast_entropy,
                                          loss, logits_ab, labels)
    out[key + '_acc'] = contrast_acc.result().numpy()
    out[key + '_entropy'] = contrast_entropy.result().numpy()

# Supervised loss and metrics (train: mean accuracy; eval: top-1 / top-5).
labels = np.eye(10, dtype=np.float32)[rng.randint(0, 10, size=16)]
logits = rng.normal(size=(16, 10)).astype(np.float32) * 2
logits[:6] += labels[:6] * 3  # Some right.
out['sup_labels'] = labels
out['sup_logits'] = logits
sup_loss = objective.add_supervised_loss(tf.constant(labels), tf.constant(logits))
out['sup_loss'] = sup_loss.numpy()
loss_metric, acc_metric = tf.keras.metrics.Mean(), tf.keras.metrics.Mean()
metrics.update_finetune_metrics_train(loss_metric, acc_metric, sup_loss, tf.constant(labels),
                                      tf.constant(logits))
out['sup_acc'] = acc_metric.result().numpy()
top_1 = tf.keras.metrics.Accuracy()
top_5 = tf.keras.metrics.TopKCategoricalAccuracy(k=5)
for start in (0, 10):  # Two eval batches of 10 and 6.
  metrics.update_finetune_metrics_eval(top_1, top_5, tf.constant(logits[start:start + 10]),
                                       tf.constant(labels[start:start + 10]))
out['eval_top_1'] = top_1.result().numpy()
out['eval_top_5'] = top_5.result().numpy()

np.savez(out_path, **out)
