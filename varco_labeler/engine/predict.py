"""``varco-labeler predict``: run the model over local image files, one JSON record per image."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from PIL import Image

from varco_labeler.engine.base import Engine, Request
from varco_labeler.policy import Policy


def run_predict(
    engine: Engine,
    policy: Policy,
    images: Iterable[str | Path],
    *,
    batch_size: int = 8,
    max_new_tokens: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Ask the policy's prompt about each image; yield one record per image, in order.

    A record is a line ``convert`` takes as it is: the image, its size, the task, the model
    version, the regions (after the checkpoint's post-processing), the raw text and timing.
    """
    remaining = iter(images)
    while paths := list(islice(remaining, batch_size)):  # itertools.batched needs 3.12
        opened = [_open_rgb(path) for path in paths]
        requests = [Request(image, policy.prompt, policy.task, max_new_tokens) for image in opened]
        for path, image, result in zip(paths, opened, engine.generate(requests), strict=True):
            yield {
                "image": str(path),
                "width": image.width,
                "height": image.height,
                "task": policy.task.value,
                "model_version": engine.model_version,
                **result.to_json(),
            }


def _open_rgb(path: str | Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")
