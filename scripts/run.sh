#!/usr/bin/env bash
# Sets up everything (scripts/setup.sh), then runs a varco-labeler command. With no arguments it
# starts the ML backend on port 9090 with the model in this process (the one-workstation default):
#   ./scripts/run.sh
#   ./scripts/run.sh convert --label-config config.xml outputs.jsonl > import.json
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >&2
if [ $# -eq 0 ]; then set -- serve; fi
# Messages then suggest commands the way this user runs them.
export VARCO_INVOKED_AS=./scripts/run.sh
exec .venv/bin/varco-labeler "$@"
