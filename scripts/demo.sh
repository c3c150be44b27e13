#!/usr/bin/env bash
# Set up, then run the whole pipeline on the demo dataset (scikit-learn digits, no download):
# `dvc repro` through `trainwise run`, ending in a printed summary.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
source .venv/bin/activate
trainwise run "$@"
