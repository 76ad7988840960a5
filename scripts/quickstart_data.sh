#!/usr/bin/env bash
# Installs the offline quick-start data: Fashion-MNIST (70,000 28x28 grayscale images,
# MIT licence) from Debian's dataset-fashion-mnist package, into
# /usr/share/datasets/fashion-mnist. --dataset=fashion_mnist_local reads it there.
# Safe to run again: does nothing when the files are already present.
set -euo pipefail

DATA_DIR=/usr/share/datasets/fashion-mnist
FILES=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz
       t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz)

have_files() {
  local file
  for file in "${FILES[@]}"; do
    [ -s "${DATA_DIR}/${file}" ] || return 1
  done
}

if have_files; then
  echo "Fashion-MNIST already installed in ${DATA_DIR}"
  exit 0
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then
    SUDO=(sudo)
  else
    echo "error: installing dataset-fashion-mnist needs root; run as root or install sudo" >&2
    exit 1
  fi
fi

export DEBIAN_FRONTEND=noninteractive
if ! "${SUDO[@]}" apt-get install -y dataset-fashion-mnist; then
  # The package index may be missing or stale.
  "${SUDO[@]}" apt-get update
  "${SUDO[@]}" apt-get install -y dataset-fashion-mnist
fi

if ! have_files; then
  echo "error: dataset-fashion-mnist is installed but ${DATA_DIR} lacks ${FILES[*]}" >&2
  exit 1
fi
echo "Fashion-MNIST installed in ${DATA_DIR}"
