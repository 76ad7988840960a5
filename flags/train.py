"""What to run (mode, objective, starting weights) and how the loop runs."""

from absl import flags as absl_flags

from tf_simclr import config as config_lib

OFFICIAL_FLAGS = ('mode', 'train_mode', 'lineareval_while_pretraining',
                  'checkpoint', 'zero_init_logits_layer',
                  'fine_tune_after_block')
OUR_FLAGS = ('steps_per_loop', 'mixed_precision', 'force_bfloat16', 'cpu_kernels',
             'jit_compile',
             'deterministic', 'seed', 'log_every_steps', 'micro_batch_size',
             'knn_every_steps', 'knn_at_eval', 'knn_k', 'knn_temperature',
             'knn_train_examples', 'knn_eval_examples',
             'teacher_checkpoint', 'distill_temperature', 'distill_label_weight',
             'distill_labeled_split')


def define_flags(flag_values: absl_flags.FlagValues = absl_flags.FLAGS) -> None:
  """Defines this topic's flags on `flag_values`."""
  absl_flags.DEFINE_enum(
      'mode', 'train', list(config_lib.MODES),
      'train, eval (evaluate the checkpoints in --model_dir) or train_then_eval.',
      flag_values=flag_values)
  absl_flags.DEFINE_enum(
      'train_mode', 'pretrain', list(config_lib.TRAIN_MODES),
      'pretrain: contrastive learning on two views; finetune: supervised '
      'training of the encoder and head on one view; distill (ours): train on '
      'the soft labels of --teacher_checkpoint on unlabelled images (SimCLRv2 '
      'stage 3).', flag_values=flag_values)
  absl_flags.DEFINE_bool(
      'lineareval_while_pretraining', True,
      'While pretraining, also train a linear classifier on a stop-gradient of '
      'the features (for monitoring and eval).', flag_values=flag_values)
  absl_flags.DEFINE_string(
      'checkpoint', None,
      'Checkpoint whose model weights start training (e.g. the pretrained '
      'model for finetuning); ignored when --model_dir already has one.',
      flag_values=flag_values)
  absl_flags.DEFINE_bool(
      'zero_init_logits_layer', False,
      'Start the supervised head from zero weights.', flag_values=flag_values)
  absl_flags.DEFINE_integer(
      'fine_tune_after_block', -1,
      'Finetune only the layers after this ResNet block: -1 trains all, 0 all '
      'but the stem, 4 only the supervised head.', flag_values=flag_values)
  absl_flags.DEFINE_integer(
      'steps_per_loop', 0,
      'Training steps run inside one tf.function call; 0 uses '
      '--checkpoint_steps when set, else up to 100.', flag_values=flag_values)
  absl_flags.DEFINE_enum(
      'mixed_precision', 'float32', list(config_lib.MIXED_PRECISIONS),
      'Compute dtype: float32, bfloat16 (mixed_bfloat16 policy, float32 '
      'variables and loss) or float16 (mixed_float16 policy with dynamic loss '
      'scaling; heads and loss in float32; skipped overflow steps are reported).',
      flag_values=flag_values)
  absl_flags.DEFINE_bool(
      'force_bfloat16', False,
      'Run --mixed_precision=bfloat16 even where it does not pay on this CPU: no '
      'native bf16 (avx512_bf16 or amx_bf16), or a bf16 convolution measured less '
      'than 1.1x as fast as float32 (timed once per machine, cached). Such runs '
      'otherwise fall back to float32 with a note.', flag_values=flag_values)
  absl_flags.DEFINE_enum(
      'cpu_kernels', 'auto', list(config_lib.CPU_KERNELS),
      'CPU only: per layer shape, our conv gradient and fused batch norm or stock '
      'TensorFlow/Keras. auto times both on this CPU at start-up (cached per '
      'CPU model and flags); ours / stock take one side everywhere.',
      flag_values=flag_values)
  absl_flags.DEFINE_bool(
      'jit_compile', False,
      'Compile the train step with XLA: the whole step on one device; under '
      'multi-device strategies each replica\'s forward, losses and backward '
      '(collectives and the optimizer update stay TensorFlow ops).',
      flag_values=flag_values)
  absl_flags.DEFINE_bool(
      'deterministic', False,
      'Make TF ops and the input pipeline deterministic (slower).',
      flag_values=flag_values)
  absl_flags.DEFINE_integer(
      'seed', 0, 'Seed for weights, augmentations and data order.',
      flag_values=flag_values)
  absl_flags.DEFINE_integer(
      'log_every_steps', 0,
      'Log training metrics every this many steps; 0 logs once per loop.',
      flag_values=flag_values)
  absl_flags.DEFINE_integer(
      'micro_batch_size', 0,
      'Pretrain with exact large-batch NT-Xent on small memory: split each '
      "replica's batch into micro-batches of this many examples (gradient "
      'caching: all negatives, one extra forward pass; BN statistics per '
      'micro-batch). Must divide the per-replica batch; 0: off.',
      flag_values=flag_values)
  _define_knn_flags(flag_values)
  _define_distill_flags(flag_values)


def _define_knn_flags(flag_values: absl_flags.FlagValues) -> None:
  """The weighted kNN monitor (tf_simclr/knn.py); off by default."""
  absl_flags.DEFINE_integer(
      'knn_every_steps', 0,
      'While pretraining, every this many steps: weighted kNN top-1 of the eval '
      'split against a train-split memory bank of final_avg_pool features '
      '(TensorBoard knn/top_1_accuracy); 0 turns it off.', flag_values=flag_values)
  absl_flags.DEFINE_bool(
      'knn_at_eval', False,
      'Also report weighted kNN top-1 (eval/knn_top_1_accuracy) when evaluating.',
      flag_values=flag_values)
  absl_flags.DEFINE_integer(
      'knn_k', 200, 'Neighbours of the kNN monitor.', flag_values=flag_values)
  absl_flags.DEFINE_float(
      'knn_temperature', 0.1,
      'kNN vote weight exp(cosine similarity / this).', flag_values=flag_values)
  absl_flags.DEFINE_integer(
      'knn_train_examples', 10000,
      'kNN memory bank: the first this many train-split examples; 0 uses all.',
      flag_values=flag_values)
  absl_flags.DEFINE_integer(
      'knn_eval_examples', 0,
      'kNN queries: the first this many eval-split examples; 0 uses all.',
      flag_values=flag_values)


def _define_distill_flags(flag_values: absl_flags.FlagValues) -> None:
  """--train_mode=distill (tf_simclr/distill.py)."""
  absl_flags.DEFINE_string(
      'teacher_checkpoint', None,
      '--train_mode=distill: the frozen teacher, a fine-tuned run (checkpoint '
      'prefix or model_dir), its hub export folder, or a published '
      'google-research/simclr tf2 model with a supervised head.',
      flag_values=flag_values)
  absl_flags.DEFINE_float(
      'distill_temperature', 1.0,
      'Distillation temperature T: cross-entropy between softmax(teacher / T) '
      'and softmax(student / T); must be > 0.', flag_values=flag_values)
  absl_flags.DEFINE_float(
      'distill_label_weight', 0.0,
      'Weight of the supervised loss on --distill_labeled_split added to the '
      'distillation loss; 0 uses no labels.', flag_values=flag_values)
  absl_flags.DEFINE_string(
      'distill_labeled_split', None,
      "The labelled subset for --distill_label_weight, a split string such as "
      "'train[:10%]' (image folders are shuffled before slicing, so every class "
      "is in it).", flag_values=flag_values)
