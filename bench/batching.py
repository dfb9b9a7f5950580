"""Batching: throughput of the transformers engine by batch size.

Without ``--model``: the tiny model at batch 1, 4, 8, 16 on CPU. With ``--model DIR`` (a real-size
random model, ``varco-labeler tiny-model DIR --size 14b --random``, or a real checkpoint): on the
GPU when there is one, bf16, batch 1, 8, 16, 32 and then a batch too big for the GPU (the engine
halves it on out-of-memory and keeps the smaller size), photo-sized images, and exactly
``FORCED_NEW_TOKENS`` new tokens per image (random weights never say when to stop), with the peak
GPU memory of each batch size. bench/gpu.sh runs it.

On CPU this measures the engine's own work per image (preprocessing, the generate loop, decoding,
scoring) and how batching amortises it, not a real model's speed (DESIGN.md section 9): on a GPU
the 14B model's decode step is bound by memory bandwidth, so batching gains more there.
One torch thread (faster for tiny matrices on a small machine). Formerly bench/engine_batching.py.
"""

from __future__ import annotations

import logging
import time

from bench.common import Context, Report, Table

BATCH_SIZES = (1, 4, 8, 16)


def run(ctx: Context) -> Report:
    if ctx.model_path is not None:
        from bench import batching_gpu

        return batching_gpu.run(ctx)
    import torch
    from transformers.utils import logging as hf_logging

    from varco_labeler.engine.base import Request
    from varco_labeler.engine.tiny import BLUE, GROUNDING, RED, solid_image
    from varco_labeler.engine.transformers_engine import TransformersEngine
    from varco_labeler.varco import Task

    hf_logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    images = ctx.pick(16, 32, 128)
    path = ctx.tiny_model()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows, data = [], {}
    try:
        requests = [
            Request(solid_image(RED if i % 2 else BLUE), GROUNDING, Task.GROUNDING)
            for i in range(images)
        ]
        for batch_size in BATCH_SIZES:
            engine = TransformersEngine(path, device="cpu", max_batch_size=batch_size)
            engine.generate(requests[:batch_size])  # warm-up
            started = time.perf_counter()
            results = engine.generate(requests)
            seconds = time.perf_counter() - started
            if len(results) != len(requests) or not all(r.parsed.grounded for r in results):
                raise RuntimeError(f"batch {batch_size}: the tiny model gave no grounded output")
            tokens = sum(result.completion_tokens for result in results)
            batches = -(-len(requests) // batch_size)
            data[str(batch_size)] = {
                "images": len(results),
                "images_per_s": len(results) / seconds,
                "tokens_per_s": tokens / seconds,
                "s_per_batch": seconds / batches,
            }
    finally:
        torch.set_num_threads(threads)
    base = data[str(BATCH_SIZES[0])]["images_per_s"]
    for batch_size, row in data.items():
        row["speedup"] = row["images_per_s"] / base
        rows.append(
            [
                int(batch_size),
                row["images_per_s"],
                row["tokens_per_s"],
                row["s_per_batch"] * 1000,
                row["speedup"],
            ]
        )
    table = Table(
        f"batching: tiny model, transformers engine, CPU, 1 thread, {images} images",
        ["batch", "images/s", "tokens/s", "ms/batch", "x batch 1"],
        rows,
    )
    return Report("batching", [table], {"images": images, "by_batch_size": data})
