#!/usr/bin/env bash
# Create (or update) .venv with bench, its dependencies and the test tools. Idempotent; safe to re-run.
#
# Knobs:
#   BENCH_VENV=path           virtual environment folder (default: .venv)
#   BENCH_TORCH="torch==X torchvision==Y"   torch pair to install first; "skip" keeps what the venv has.
#       Default: the pair this project's CI machines carry on local disk (torch 2.14.1 + torchvision 0.29.1
#       on x86_64, a CUDA build that also runs on CPU; torch 2.9.1 + torchvision 0.24.1 on aarch64).
#       On a GPU cluster, set it to the build that matches your CUDA driver.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${BENCH_VENV:-.venv}
PYTHON=${PYTHON:-python3}
if [[ -z ${BENCH_TORCH:-} ]]; then
  case $(uname -m) in
    x86_64) BENCH_TORCH="torch==2.14.1 torchvision==0.29.1" ;;
    *) BENCH_TORCH="torch==2.9.1 torchvision==0.24.1" ;;
  esac
fi

[[ -x $VENV/bin/python ]] || "$PYTHON" -m venv "$VENV"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# Quiet unless it fails; then the whole pip log is shown.
pip() { "$VENV/bin/python" -m pip "$@" >"$log" 2>&1 || { cat "$log" >&2; echo "setup: pip $* failed" >&2; exit 1; }; }
pip install -q --upgrade pip "setuptools>=77" wheel
# shellcheck disable=SC2086
[[ $BENCH_TORCH == skip ]] || pip install -q $BENCH_TORCH
pip install -q -e ".[test,demo,tensorboard]"
# bench demo's real images: Debian's Fashion-MNIST (30 MB), where apt and root are at hand; elsewhere the demo
# falls back to scikit-learn's digits and says so.
if [[ ! -d /usr/share/datasets/fashion-mnist ]] && command -v apt-get >/dev/null && [[ $(id -u) == 0 ]]; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; } >"$log" 2>&1 \
    || echo "setup: could not install dataset-fashion-mnist; bench demo will use scikit-learn digits" >&2
fi
# pdflatex for the test that compiles the LaTeX report of the full default grid (tests/test_report_latex.py;
# skipped without it): Debian's texlive-latex-base + texlive-latex-recommended (booktabs), about 2 minutes.
if ! command -v pdflatex >/dev/null && command -v apt-get >/dev/null && [[ $(id -u) == 0 ]]; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      texlive-latex-base texlive-latex-recommended; } >"$log" 2>&1 \
    || echo "setup: could not install texlive; the LaTeX compile test will be skipped" >&2
fi
"$VENV/bin/python" -c "import bench, torch, open_clip; print(f'bench {bench.__version__} ready: torch {torch.__version__}, open_clip {open_clip.__version__}, CUDA {torch.cuda.is_available()}')"
