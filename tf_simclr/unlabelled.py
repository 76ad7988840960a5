"""Training on unlabelled images: what needs labels is turned off or refused.

An unlabelled data set (`DatasetInfo.num_classes == 0`, e.g. an image folder read with
`--image_folder_labels=none`, or `auto` on ROOT/<split>/<image>) supports contrastive
pretraining and its evaluation (contrastive loss and accuracy on the eval split).
Everything that needs labels is turned off when it is only a default
(`--lineareval_while_pretraining`, on by default), and refused with one line when the
user asked for it (the flag was given on the command line).
"""

from __future__ import annotations

from typing import Collection

from tf_simclr import config as config_lib


def config_for_unlabelled(config: config_lib.Config, explicit_flags: Collection[str],
                          *, where: str = 'the data set') -> tuple[config_lib.Config, str]:
  """Adapts `config` to a data set without labels.

  Args:
    config: the run's configuration.
    explicit_flags: names of the flags given on the command line (a default that
      needs labels is turned off; an explicit one is an error).
    where: the data set in messages, e.g. 'image folder /data/photos (auto: ...)'.

  Returns:
    (the adapted config, one log line saying what was turned off; '' when nothing).

  Raises:
    ValueError: one line naming the flag that needs labels and what to do.
  """
  train, knn = config.train, config.knn
  reason = f'{where} has no labels'
  fix = ('pass --image_folder_labels=folders with ROOT/<split>/<class>/ folders, or drop '
         'the flag')

  def refuse(flag: str) -> None:
    raise ValueError(f'--{flag} needs labels, but {reason}; {fix}.')

  training = train.mode in ('train', 'train_then_eval')
  if train.train_mode in ('finetune', 'distill'):  # distill: the student's classes.
    refuse(f'train_mode={train.train_mode}')
  if knn.knn_every_steps > 0:
    refuse(f'knn_every_steps={knn.knn_every_steps}')
  if knn.knn_at_eval:
    refuse('knn_at_eval')
  if train.zero_init_logits_layer:
    refuse('zero_init_logits_layer')
  turned_off = []
  updates = {}
  if train.lineareval_while_pretraining and training:
    if 'lineareval_while_pretraining' in explicit_flags:
      refuse('lineareval_while_pretraining')
    updates['lineareval_while_pretraining'] = False
    turned_off.append('--lineareval_while_pretraining (linear head)')
  if not turned_off:
    return config, ''
  note = (f'note: {reason}: pretraining only; turned off {", ".join(turned_off)}; eval '
          'reports the contrastive loss and accuracy.')
  return config_lib.replace(config, train=updates), note
