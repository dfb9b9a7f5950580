#!/usr/bin/env bash
# Sets up everything (scripts/setup.sh), then runs a varco-labeler command, e.g.
#   ./scripts/run.sh convert --label-config config.xml outputs.jsonl > import.json
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >&2
if [ $# -eq 0 ]; then set -- --help; fi
exec .venv/bin/varco-labeler "$@"
