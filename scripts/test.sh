#!/usr/bin/env bash
# Set up, then run the test suite (all of it, slow tests included). This is what CI runs (.ci/run, CI=true).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow"` for the fast unit tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
