#!/usr/bin/env bash
# The GPU checks as one short call on a lent device machine (docs/performance.md):
#   here:  bash scripts/device_wheels.sh
#   there: the device tool's run with command "bash scripts/device_check.sh", carry [".whl"], timeout ~540 s
# Installs bench and the carried wheels into /tmp/site (no network there), prints the GPU, runs the
# gpu-marked tests (the CUDA path against the CPU) and `bench perf --profile gpu` (the performance table,
# the paper-grid prediction), and leaves everything in $OUT: gpu.txt, gpu-tests.log, perf-gpu.md/json, perf.log.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
OUT=${OUT:-/tmp/bench-device-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
"$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1  # the carried setuptools builds bench
"$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/site "$REPO" || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
# From outside the checkout, so the installed bench (with bench.methods etc.) is the one imported.
rm -rf /tmp/bench-tests && cp -r "$REPO/tests" /tmp/bench-tests && cd /tmp
timeout 150 "$PY" -m pytest -m gpu -q -p no:cacheprovider bench-tests/test_gpu.py 2>&1 | tee "$OUT/gpu-tests.log"
timeout 360 "$PY" -m bench.cli perf --profile gpu --workdir /tmp/bench-perf --out "$OUT/perf-gpu.md" \
  --json "$OUT/perf-gpu.json" 2>&1 | tee "$OUT/perf.log"
