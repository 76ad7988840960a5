#!/usr/bin/env bash
# SimCLRv2's three stages on real CIFAR-10 with 10% of the labels, within a CPU budget
# (estimated at about an hour on 2 idle cores at the defaults; 89 min measured on a shared
# machine), and a supervised baseline:
#
#   1. pretrain   SimCLR on all 50,000 training images, no labels
#                 (configs/cpu_budget_cifar10.flags: ResNet-18, ImageNet stem at 32 px);
#   2. finetune   the pretrained network on train[:10%] (5,000 labelled images, all
#                 10 classes: the image-folder reader shuffles before slicing);
#   3. distill    self-distillation: a student of the same architecture, started from
#                 the pretrained encoder, learns the fine-tuned teacher's soft labels
#                 (T = 1) on all 50,000 training images, labels ignored;
#   baseline      the same network from random weights on train[:10%], as many steps
#                 as the three stages together.
#
# Each stage is `run.py --mode=train_then_eval` and writes ROOT/<stage>/result.json;
# scripts/cifar10_semi_supervised_report.py gathers test top-1 into
# ROOT/semi_supervised_result.json and plots it (PLOT, default docs/cifar10_semi_supervised.png).
#
# Usage (from the repo root):
#   bash scripts/cifar10_semi_supervised.sh [ROOT] [PRETRAIN_STEPS] [FINETUNE_STEPS] \
#        [DISTILL_STEPS] [BASELINE_STEPS] [EVAL_SPLIT]
# Defaults: /tmp/simclr_cifar10_semi 800 400 800 (sum: 2000) test.
# Needs ../shared/data/cifar10/{train,test}/<class>/*.jpg (or set CIFAR10_DIR).
# Rerunning resumes each stage from its checkpoints (stages already done are skipped).
set -euo pipefail
ROOT=${1:-/tmp/simclr_cifar10_semi}
PRETRAIN_STEPS=${2:-800}
FINETUNE_STEPS=${3:-400}
DISTILL_STEPS=${4:-800}
BASELINE_STEPS=${5:-$((PRETRAIN_STEPS + FINETUNE_STEPS + DISTILL_STEPS))}
EVAL_SPLIT=${6:-test}
CIFAR10_DIR=${CIFAR10_DIR:-../shared/data/cifar10}
PYTHON=${PYTHON:-.venv/bin/python}
PLOT=${PLOT:-docs/cifar10_semi_supervised.png}
LABELED='train[:10%]'

# The preset's data, augmentation and architecture; supervised stages: one view with
# crop and flip, LARS (sqrt scaling), no warm-up, checkpoints every 100 steps.
COMMON=(--flagfile=configs/cpu_budget_cifar10.flags --data_dir="$CIFAR10_DIR"
        --eval_split="$EVAL_SPLIT" --mode=train_then_eval)
SUPERVISED=(--ft_proj_selector=1 --warmup_epochs=0 --knn_every_steps=0)

stage() {  # stage NAME STEPS FLAGS...: runs unless ROOT/NAME/result.json is there.
  local name=$1 steps=$2
  shift 2
  if [[ -f "$ROOT/$name/result.json" ]]; then
    echo "== $name: done before ($ROOT/$name/result.json)"
    return
  fi
  echo "== $name: $steps steps ($(date -u +%H:%M:%S))"
  local start=$SECONDS
  "$PYTHON" run.py "${COMMON[@]}" --train_steps="$steps" --model_dir="$ROOT/$name" "$@"
  echo "$((SECONDS - start))" > "$ROOT/$name/wall_seconds.txt"
}

mkdir -p "$ROOT"
# 1. Pretraining (--mode=train_then_eval: without a classifier the eval reports the
#    contrastive loss and accuracy on the test images).
stage pretrain "$PRETRAIN_STEPS" --ft_proj_selector=1
# 2. Fine-tuning on 10% of the labels, from the pretrained encoder and first
#    projection layer (SimCLRv2: --ft_proj_selector=1), zero-initialised classifier.
stage finetune "$FINETUNE_STEPS" "${SUPERVISED[@]}" --train_mode=finetune \
  --train_split="$LABELED" --checkpoint="$ROOT/pretrain" --zero_init_logits_layer \
  --learning_rate=0.04
# 3. Self-distillation on all training images (their labels are not read).
stage distill "$DISTILL_STEPS" "${SUPERVISED[@]}" --train_mode=distill \
  --train_split=train --teacher_checkpoint="$ROOT/finetune" --checkpoint="$ROOT/pretrain" \
  --distill_temperature=1.0 --learning_rate=0.04
# Baseline: random initialisation, the same 10% of the labels, the three stages' steps.
stage scratch "$BASELINE_STEPS" "${SUPERVISED[@]}" --train_mode=finetune \
  --train_split="$LABELED" --learning_rate=0.075

"$PYTHON" scripts/cifar10_semi_supervised_report.py --root="$ROOT" --plot="$PLOT"
