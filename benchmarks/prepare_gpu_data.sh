#!/usr/bin/env bash
# Put what benchmarks/gpu_check.sh needs into .device/ (git-ignored, ~34 MB):
# the CIFAR-10 JPEG test archive and its decoded arrays (decoded here, so the
# GPU machine needs no Pillow).  Usage: bash benchmarks/prepare_gpu_data.sh [DATA]
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=${1:-${MINIRES_DATA:-../shared/datasets/cifar10-jpeg}}
mkdir -p .device/data .device/cache
cp "$SRC/test.tar.gz" .device/data/
MINIRES_CACHE=$PWD/.device/cache python -c "
from minires.data import load_cifar10
x, y = load_cifar10('.device/data', split='test')[:2]
print('decoded', x.shape, 'into .device/cache')"
du -sh .device
