#!/usr/bin/env bash
# The main job on a fresh machine, offline (pip and apt registries only):
#   1. installs Fashion-MNIST from Debian's dataset-fashion-mnist package (real images,
#      MIT licence; never copied into this repository),
#   2. makes .venv and installs requirements.txt,
#   3. pretrains a ResNet-18 with SimCLR for a few minutes, training a linear classifier
#      on the frozen features alongside (--lineareval_while_pretraining, as the official
#      code), then evaluates it on 2,000 test images and prints top-1 / top-5 accuracy.
# Extra flags are passed to run.py, e.g. `bash scripts/quickstart.sh --train_steps=200`.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/quickstart_data.sh
python3 -m venv .venv
.venv/bin/pip install -q -r requirements.txt

MODEL_DIR="${MODEL_DIR:-/tmp/tf_simclr_quickstart}"
if [ -e "${MODEL_DIR}" ]; then
  if [ -f "${MODEL_DIR}/flags.json" ] || [ -z "$(ls -A "${MODEL_DIR}")" ]; then
    rm -rf "${MODEL_DIR}"  # An earlier quickstart run (or an empty folder): start afresh.
  else
    echo "error: MODEL_DIR=${MODEL_DIR} exists and is not a tf_simclr run; set MODEL_DIR to a new folder." >&2
    exit 2
  fi
fi
.venv/bin/python run.py --mode=train_then_eval --train_mode=pretrain \
  --dataset=fashion_mnist_local --train_split=train --eval_split='test[:2000]' \
  --image_size=28 --resnet_depth=18 --use_blur=false --color_jitter_strength=0.5 \
  --train_batch_size=64 --train_steps=60 --warmup_epochs=0 \
  --learning_rate=1.0 --weight_decay=1e-6 --temperature=0.5 \
  --checkpoint_steps=30 --eval_batch_size=250 \
  --model_dir="${MODEL_DIR}" "$@"
echo "Results: ${MODEL_DIR}/result.json (TensorBoard: tensorboard --logdir ${MODEL_DIR})"
