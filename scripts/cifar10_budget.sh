#!/usr/bin/env bash
# SimCLR on real CIFAR-10 within a ~20-minute CPU budget, then kNN and linear-probe
# top-1 of the pretrained encoder next to a randomly initialised one of the same
# architecture; writes MODEL_DIR/budget_result.json and docs/cifar10_budget.png.
#
# Usage (from the repo root):  bash scripts/cifar10_budget.sh [MODEL_DIR] [TRAIN_STEPS]
# Needs ../shared/data/cifar10/{train,test}/<class>/*.jpg (or set CIFAR10_DIR).
set -euo pipefail
MODEL_DIR=${1:-/tmp/simclr_cifar10_budget}
TRAIN_STEPS=${2:-1000}
CIFAR10_DIR=${CIFAR10_DIR:-../shared/data/cifar10}
PYTHON=${PYTHON:-.venv/bin/python}
PLOT=${PLOT:-docs/cifar10_budget.png}

# Pretraining: ResNet-18 with the ImageNet stem at 32 px (about 10x cheaper than the
# CIFAR stem on this CPU), batch 128, LARS with sqrt lr scaling, temperature 0.5, no
# blur, colour strength 0.5; kNN monitor every 100 steps on a small bank.
"$PYTHON" run.py --mode=train --train_mode=pretrain \
  --dataset=image_folder --data_dir="$CIFAR10_DIR" --train_split=train --eval_split=test \
  --cache_dataset=true --image_size=32 --use_blur=false --color_jitter_strength=0.5 \
  --resnet_depth=18 --cifar_stem=false --lineareval_while_pretraining=false \
  --train_batch_size=128 --train_steps="$TRAIN_STEPS" \
  --optimizer=lars --learning_rate=0.075 --learning_rate_scaling=sqrt \
  --warmup_epochs=0.05 --weight_decay=1e-6 --temperature=0.5 \
  --checkpoint_steps=100 --steps_per_loop=25 --export_hub_module=never \
  --knn_every_steps=100 --knn_train_examples=2560 --knn_eval_examples=1024 \
  --eval_batch_size=256 --model_dir="$MODEL_DIR"

# Final: features of train[:10000] (kNN bank, probe training set) and all of test;
# kNN (k=200, T=0.1) and linear-probe top-1, random init vs pretrained; the plot.
"$PYTHON" scripts/cifar10_budget_eval.py --model_dir="$MODEL_DIR" \
  --data_dir="$CIFAR10_DIR" --train_examples=10000 --plot="$PLOT"
