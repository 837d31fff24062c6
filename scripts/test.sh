#!/usr/bin/env bash
# Set up the environment and run the test suite (what CI runs). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
"${BENCH_VENV:-.venv}/bin/ruff" check .
exec "${BENCH_VENV:-.venv}/bin/python" -m pytest "$@"
