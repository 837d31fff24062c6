#!/usr/bin/env bash
# Set up the environment and run the test suite (what CI runs). Extra arguments go to pytest.
#
# As root on Debian with apt, a real single-node Slurm cluster is brought up first (slurm/cluster.sh,
# ~20 s on a clean machine) for tests/test_slurm_cluster.py, which must then pass rather than skip;
# it is taken down again afterwards if this script started it. BENCH_SLURM=0 skips all that
# (the Slurm tests then skip, as they do on any machine without an idle Slurm node).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
"${BENCH_VENV:-.venv}/bin/ruff" format --check .
"${BENCH_VENV:-.venv}/bin/ruff" check .

if [[ ${BENCH_SLURM:-1} != 0 && $(id -u) == 0 && -f /etc/debian_version ]] && command -v apt-get >/dev/null; then
  if ! bash slurm/cluster.sh status 2>/dev/null | grep -q "^up   slurmctld"; then
    trap 'bash slurm/cluster.sh down >/dev/null 2>&1 || true' EXIT
  fi
  bash slurm/cluster.sh up
  export BENCH_REQUIRE_SLURM=1
fi
# The backbone build (activation, preprocessing, weight files) on the oldest open_clip pyproject.toml allows,
# installed beside the venv's own (the newest) and put first on the path for this one run.
OLDEST_OPEN_CLIP=3.0.0
oldest=${BENCH_VENV:-.venv}/open_clip-$OLDEST_OPEN_CLIP
[[ -d $oldest/open_clip ]] || "${BENCH_VENV:-.venv}/bin/python" -m pip install -q --no-deps --target "$oldest" \
  "open_clip_torch==$OLDEST_OPEN_CLIP" >/dev/null
PYTHONPATH=$oldest "${BENCH_VENV:-.venv}/bin/python" -m pytest -q -p no:cacheprovider tests/test_backbone_build.py
"${BENCH_VENV:-.venv}/bin/python" -m pytest "$@"
