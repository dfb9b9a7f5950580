"""Command-line helpers: pre-label image files with a local engine, build the tiny model."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from PIL import Image

from varco_labeler.engine.base import Engine, Request, Result
from varco_labeler.regions import regions_from_varco
from varco_labeler.varco import Task, prompt_for


def run_predict(
    model: str | Path,
    task: Task | str,
    images: Iterable[str | Path],
    *,
    prompt: str | None = None,
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    engine: Engine | None = None,
    **engine_options: Any,
) -> Iterator[dict[str, Any]]:
    """Run the model over image files; yield one JSON-ready record per image, in order.

    ``prompt`` replaces the task's standard prompt (a question for ``question``, or a full
    referring prompt with its ``<obj>..</obj><bbox>..</bbox>``). Without ``engine``, a
    :class:`TransformersEngine` is loaded from ``model`` with ``engine_options``.
    """
    task = Task(task)
    text = prompt if prompt is not None else prompt_for(task)
    if engine is None:
        from varco_labeler.engine.transformers_engine import TransformersEngine  # needs torch

        engine = TransformersEngine(model, max_batch_size=batch_size, **engine_options)
    remaining = iter(images)
    while paths := list(islice(remaining, batch_size)):  # itertools.batched needs 3.12
        requests = [Request(_open_rgb(path), text, task, max_new_tokens) for path in paths]
        for path, result in zip(paths, engine.generate(requests), strict=True):
            yield result_record(str(path), result, engine.model_version)


def result_record(image: str, result: Result, model_version: str) -> dict[str, Any]:
    """A result as plain JSON: the raw text, one region per box, and what the parser dropped."""
    regions = regions_from_varco(result.parsed, result.region_scores)
    return {
        "image": image,
        "model_version": model_version,
        "raw": result.raw,
        "regions": [
            {
                "box": list(region.box.as_tuple()),
                "phrase": region.phrase,
                "text": region.text,
                "score": region.score,
            }
            for region in regions
        ],
        "problems": [str(problem) for problem in result.parsed.problems],
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "seconds": round(result.seconds, 4),
    }


def _open_rgb(path: str | Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")
