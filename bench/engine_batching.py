"""Batch-vs-single generation throughput of the transformers engine on the tiny model.

    .venv/bin/python bench/engine_batching.py [--images 32] [--batch-sizes 1,4,8,16] [--threads 1]

Prints a table. On CPU this measures the engine's own overhead (preprocessing, generate loop,
decoding, scoring), not a real model's speed: see DESIGN.md section 9.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from varco_labeler.engine.base import Request
from varco_labeler.engine.tiny import BLUE, GROUNDING, RED, build_tiny_model, solid_image
from varco_labeler.engine.transformers_engine import TransformersEngine
from varco_labeler.varco import Task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch-sizes", default="1,4,8,16")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as directory:
        started = time.perf_counter()
        path = build_tiny_model(Path(directory) / "tiny")
        print(f"tiny model built in {time.perf_counter() - started:.1f} s")
        requests = [
            Request(solid_image(RED if i % 2 else BLUE), GROUNDING, Task.GROUNDING)
            for i in range(args.images)
        ]
        print(f"{'batch':>5} {'images/s':>9} {'tokens/s':>9} {'s/batch':>8}")
        for batch_size in (int(size) for size in args.batch_sizes.split(",")):
            engine = TransformersEngine(path, device="cpu", max_batch_size=batch_size)
            engine.generate(requests[:batch_size])  # warm-up
            started = time.perf_counter()
            results = engine.generate(requests)
            seconds = time.perf_counter() - started
            tokens = sum(result.completion_tokens for result in results)
            batches = -(-len(requests) // batch_size)
            print(
                f"{batch_size:>5} {len(results) / seconds:>9.1f} {tokens / seconds:>9.0f}"
                f" {seconds / batches:>8.3f}"
            )


if __name__ == "__main__":
    main()
