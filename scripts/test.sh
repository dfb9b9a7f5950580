#!/usr/bin/env bash
# Sets up everything (scripts/setup.sh), then lints and runs the whole test suite.
# Extra arguments go to pytest, e.g. ./scripts/test.sh -k grammar
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "[test] ruff check" && .venv/bin/ruff check .
echo "[test] ruff format --check" && .venv/bin/ruff format --check .
echo "[test] pytest" && exec .venv/bin/pytest "$@"
