#!/usr/bin/env bash
# The GPU benchmarks in one go, for the day a GPU is lent (about 10 minutes on one 80+ GB GPU).
#
#   bench/gpu.sh                 # VARCO-VISION-14B-HF's architecture, random weights
#   SIZE=1.7b bench/gpu.sh       # VARCO-VISION-2.0-1.7B's
#
# 1. builds a real-size random model (`varco-labeler tiny-model DIR --size SIZE --random`): no
#    weights are downloaded; ~30 GB of disk for 14b, built on the GPU when there is one;
# 2. runs `python -m bench --only batching --model DIR`: the transformers engine at batch 1, 8,
#    16 and 32 on photo-sized images, exactly 100 new tokens per image, peak GPU memory per batch
#    size, then one oversized batch that the engine must split on out-of-memory;
# 3. writes bench/results/gpu-SIZE.json and .md, and nvidia-smi's view, for the README.
# Environment: SIZE (14b), MODEL_DIR (where the model goes; kept for a second run), PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${SIZE:-14b}
PYTHON=${PYTHON:-.venv/bin/python}
MODEL_DIR=${MODEL_DIR:-${TMPDIR:-/tmp}/varco-$SIZE-random}
RESULTS=bench/results
mkdir -p "$RESULTS"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$RESULTS/gpu-$SIZE-nvidia-smi.csv"
if [ ! -f "$MODEL_DIR/config.json" ]; then
    started=$SECONDS
    "$PYTHON" -m varco_labeler.cli tiny-model "$MODEL_DIR" --size "$SIZE" --random
    echo "built $MODEL_DIR in $((SECONDS - started)) s" >&2
fi
"$PYTHON" -m bench --only batching --model "$MODEL_DIR" \
    --json "$RESULTS/gpu-$SIZE.json" --markdown "$RESULTS/gpu-$SIZE.md"
