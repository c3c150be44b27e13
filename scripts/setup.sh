#!/usr/bin/env bash
# Create .venv and install trainwise with its test extras. Safe to re-run.
#
# torch is installed first and pinned: a bare `torch` requirement resolved by pip would pull
# a multi-GB CUDA build on a CPU-only machine. Override with TORCH_SPEC, e.g.
#   TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# shellcheck disable=SC2086  # TORCH_SPEC may carry pip options
.venv/bin/python -m pip install --quiet $TORCH_SPEC
# The torch just installed is named again: pip then never swaps it for another build to satisfy an
# extra (the test extra's sentence-transformers, for one, accepts any torch >= 1.11).
.venv/bin/python -m pip install --quiet -e ".[test]" \
  "torch==$(.venv/bin/python -c 'import torch; print(torch.__version__)')"
.venv/bin/python -c "import torch, ray, mlflow, dvc; print(f'trainwise env ready: torch {torch.__version__}, ray {ray.__version__}, mlflow {mlflow.__version__}')"
