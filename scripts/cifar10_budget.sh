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

# Pretraining: the preset configs/cpu_budget_cifar10.flags (ResNet-18 with the ImageNet
# stem at 32 px, about 10x cheaper than the CIFAR stem on this CPU, batch 128, LARS with
# sqrt lr scaling, temperature 0.5, no blur, colour strength 0.5; kNN monitor every 100
# steps on a small bank).
"$PYTHON" run.py --flagfile=configs/cpu_budget_cifar10.flags \
  --data_dir="$CIFAR10_DIR" --train_steps="$TRAIN_STEPS" --model_dir="$MODEL_DIR"

# Final: features of train[:10000] (kNN bank, probe training set) and all of test;
# kNN (k=200, T=0.1) and linear-probe top-1, random init vs pretrained; the plot.
"$PYTHON" scripts/cifar10_budget_eval.py --model_dir="$MODEL_DIR" \
  --data_dir="$CIFAR10_DIR" --train_examples=10000 --plot="$PLOT"
