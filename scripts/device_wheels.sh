#!/usr/bin/env bash
# Wheels of what the lent GPU machine's image lacks, into .whl/ (git-ignored), for scripts/device_check.sh.
# The device image has Python 3.12 with torch, torchvision, timm, numpy, pandas, scipy, matplotlib, tabulate,
# huggingface-hub, safetensors, regex, tqdm, PyYAML and cloudpickle (the device tool's KINDS.md); nothing can
# be fetched there. Versions are this project's CI venv's (.venv), so both machines run the same code.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${BENCH_VENV:-.venv}/bin/python
# setuptools and wheel too: bench builds with PEP 639 metadata, which needs setuptools >= 77.
pins=$("$PY" -m pip freeze --all | grep -i -E '^(open.clip.torch|ftfy|wcwidth|optuna|alembic|mako|sqlalchemy|colorlog|submitit|setuptools|wheel)==')
rm -rf .whl && mkdir .whl
# shellcheck disable=SC2086
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl $pins
ls .whl
du -sh .whl
