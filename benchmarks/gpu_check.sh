#!/usr/bin/env bash
# The GPU check, in one go (about 4 minutes): the `gpu` tests, then
# benchmarks/bench_gpu.py (train-step ratios against torch CUDA, peak memory,
# 60-second CIFAR-10 runs).  For a machine with an NVIDIA GPU, CuPy and torch
# (CUDA) already installed and no network: it runs straight from the checkout
# (PYTHONPATH=., no pip install).
#
# Data: the CIFAR-10 JPEG *test* archive, carried along in .device/data/, and
# its decoded arrays in .device/cache/ (so Pillow is not needed there).
# Prepare both on a machine that has the data:
#     bash benchmarks/prepare_gpu_data.sh [../shared/datasets/cifar10-jpeg]
# Results: benchmarks/results/bench_gpu.{json,md} and gpu_tests.txt (also
# copied to $OUT when that is set, as on a lent device machine).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=.
export MINIRES_CACHE=${MINIRES_CACHE:-$PWD/.device/cache}
DATA=${MINIRES_DATA:-$PWD/.device/data}
RESULTS=benchmarks/results
mkdir -p "$RESULTS"

python - <<'PY'
import minires.backend as b
assert b.gpu_available(), "gpu_check.sh: CuPy with a visible CUDA GPU is required"
import torch
assert torch.cuda.is_available(), "gpu_check.sh: torch must be a CUDA build that sees the GPU"
PY
[ $? -eq 0 ] || exit 2

echo "== gpu tests"
timeout 90 python -m pytest -m gpu -p no:cacheprovider -o addopts="" -q -rs tests 2>&1 \
    | tee "$RESULTS/gpu_tests.txt"
tests_rc=${PIPESTATUS[0]}

echo "== bench_gpu"
timeout 200 python benchmarks/bench_gpu.py --data "$DATA" --budget 45
bench_rc=$?

if [ -n "${OUT:-}" ]; then
  cp "$RESULTS"/bench_gpu.json "$RESULTS"/bench_gpu.md "$RESULTS"/gpu_tests.txt "$OUT"/ 2>/dev/null
fi
echo "gpu tests exit $tests_rc, bench_gpu exit $bench_rc"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
