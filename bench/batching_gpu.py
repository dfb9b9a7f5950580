"""Batching with a real-size model (``python -m bench --only batching --model DIR``).

On the GPU when there is one (bf16; on CPU only a smoke of the code path). Every image is a
1024x768 photo-like JPEG decoded once: anyres tiling gives the real number of vision tokens.
Each batch generates exactly ``FORCED_NEW_TOKENS`` tokens per image (``min_new_tokens`` =
``max_new_tokens``), so a random model costs what a real one writing a grounding answer of that
length costs. After the listed batch sizes, one batch of ``OOM_BATCH`` images checks the engine's
out-of-memory split on a GPU: it should finish, at a smaller batch size that it reports.
"""

from __future__ import annotations

import io
import logging
import time
from typing import Any

from PIL import Image, ImageDraw

from bench.common import Context, Report, Table

FORCED_NEW_TOKENS = 100  # about a grounding answer (bench/simgpu.py)
BATCH_SIZES = (1, 8, 16, 32)
OOM_BATCH = 256


def photo(index: int) -> Image.Image:
    image = Image.new("RGB", (1024, 768), ((index * 37) % 256, 90, 160))
    draw = ImageDraw.Draw(image)
    for shape in range(8):
        x, y = (index * 31 + shape * 97) % 1024, (index * 17 + shape * 61) % 768
        draw.ellipse([x, y, x + 200, y + 150], fill=(shape * 30, 220 - shape * 20, index % 256))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def run(ctx: Context) -> Report:
    import torch
    from transformers.utils import logging as hf_logging

    from varco_labeler.engine.base import Request
    from varco_labeler.engine.transformers_engine import TransformersEngine
    from varco_labeler.varco import Task, prompt_for

    hf_logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    assert ctx.model_path is not None
    cuda = torch.cuda.is_available()
    device = "cuda:0" if cuda else "cpu"
    tokens = FORCED_NEW_TOKENS if cuda else 2
    sizes = BATCH_SIZES if cuda else (1, 2)
    started = time.perf_counter()
    engine = TransformersEngine(
        ctx.model_path, device=device, dtype=torch.bfloat16, max_batch_size=max(sizes)
    )
    load_s = time.perf_counter() - started
    engine.model.generation_config.min_new_tokens = tokens
    weights_gib = torch.cuda.memory_allocated() / 2**30 if cuda else None
    ctx.log(f"  {ctx.model_path} loaded on {device} in {load_s:.0f} s")
    images = [photo(i) for i in range(max(sizes))]

    def requests(count: int) -> list[Request]:
        prompt = prompt_for(Task.GROUNDING)
        return [
            Request(images[i % len(images)], prompt, Task.GROUNDING, max_new_tokens=tokens)
            for i in range(count)
        ]

    data: dict[str, Any] = {
        "model": str(ctx.model_path),
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "load_seconds": load_s,
        "weights_gib": weights_gib,
        "forced_new_tokens": tokens,
        "by_batch_size": {},
    }
    rows = []
    for batch_size in sizes:
        engine.max_batch_size = batch_size
        engine.generate(requests(1))  # warm-up (kernels, allocator)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        results = engine.generate(requests(batch_size))
        seconds = time.perf_counter() - started
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
        prompt_tokens = sum(r.prompt_tokens for r in results) / len(results)
        row = {
            "seconds_per_batch": seconds,
            "images_per_s": batch_size / seconds,
            "new_tokens_per_s": sum(r.completion_tokens for r in results) / seconds,
            "prompt_tokens_per_image": prompt_tokens,
            "peak_gpu_gib": peak,
        }
        data["by_batch_size"][str(batch_size)] = row
        ctx.log(f"  batch {batch_size}: {row['images_per_s']:.2f} images/s, peak {peak} GiB")
    base = data["by_batch_size"][str(sizes[0])]["images_per_s"]
    for batch_size, row in data["by_batch_size"].items():
        row["speedup"] = row["images_per_s"] / base
        rows.append(
            [
                int(batch_size),
                row["seconds_per_batch"],
                row["images_per_s"],
                row["new_tokens_per_s"],
                row["prompt_tokens_per_image"],
                row["peak_gpu_gib"],
                row["speedup"],
            ]
        )
    if cuda:
        data["oom_split"] = _oom_split(engine, requests(OOM_BATCH), ctx)
    table = Table(
        f"batching: {ctx.model_path.name}, transformers engine, {data['device']}, bf16, "
        f"{tokens} new tokens per image",
        ["batch", "s/batch", "images/s", "new tokens/s", "prompt tokens", "peak GiB", "x b1"],
        rows,
    )
    notes = [f"load {load_s:.0f} s; weights {weights_gib} GiB"]
    if "oom_split" in data:
        notes.append(f"out-of-memory split: {data['oom_split']}")
    return Report("batching", [table], data, notes)


def _oom_split(engine: Any, requests: list[Any], ctx: Context) -> dict[str, Any]:
    """One batch larger than the GPU holds: the engine should halve it until it fits."""
    import torch

    engine.max_batch_size = len(requests)
    started = time.perf_counter()
    try:
        results = engine.generate(requests)
    except torch.OutOfMemoryError as error:  # the split did not save it: say so, do not crash
        return {"asked": len(requests), "finished": False, "error": str(error)[:200]}
    seconds = time.perf_counter() - started
    split = {
        "asked": len(requests),
        "finished": len(results) == len(requests),
        "kept_batch_size": engine.max_batch_size,
        "images_per_s": len(requests) / seconds,
    }
    ctx.log(f"  out-of-memory split: {split}")
    return split
