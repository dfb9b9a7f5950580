"""Raw model outputs (JSON Lines) -> a Label Studio import file of tasks with predictions.

Each input line: ``{"image": <path or URL>, "regions": [...]`` (as ``predict`` prints them) ``or
"output": <raw VARCO text>, "task"?: "grounding"|"ocr", "width"?, "height"?, "model_version"?}``.
A bad line is reported with its number and skipped; the rest still converts.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from varco_labeler.labelstudio.images import ImageError, displayed_size, open_image
from varco_labeler.policy import BULK_TASKS, Policy, PolicyError
from varco_labeler.regions import model_output
from varco_labeler.varco import Task, parse


class LineError(ValueError):
    pass


@dataclass
class LineReport:
    line: int
    image: str | None = None
    error: str | None = None
    dropped: list[str] = field(default_factory=list)
    regions: int = 0


def convert_lines(
    lines: Iterable[str], policy: Policy
) -> Iterator[tuple[dict[str, Any] | None, LineReport]]:
    """Yield (task or None, report) per non-blank line, in order."""
    assert policy.config is not None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        report = LineReport(number)
        try:
            record = _record(line)
            report.image = record["image"]
            width, height = _size(record)
            output = {
                "width": width,
                "height": height,
                "model_version": record.get("model_version") or policy.model_version,
                **(record if "regions" in record else model_output(parse(record["output"]))),
            }
            data = {policy.config.data_key: record["image"]}
            if policy.config.labels_data_key is not None:
                data[policy.config.labels_data_key] = record.get("labels")
            conversion = policy.convert(
                output, labels=policy.labels_for(data), task=_task(record), seed=record["image"]
            )
        except (LineError, PolicyError) as error:
            report.error = str(error)
            yield None, report
            continue
        report.dropped = conversion.dropped
        report.regions = len(conversion.regions)
        task = {"data": data, "predictions": [conversion.prediction]}
        yield task, report


def _record(line: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise LineError(f"not valid JSON: {error}") from error
    if not isinstance(record, dict):
        raise LineError(f"expected a JSON object, got {type(record).__name__}")
    if not isinstance(record.get("image"), str) or not record["image"]:
        raise LineError('"image" must be a non-empty string')
    if "regions" in record:
        regions = record["regions"]
        if not isinstance(regions, list) or not all(_is_region(r) for r in regions):
            raise LineError('"regions" must be a list of {"box": [x1, y1, x2, y2], ...}')
    elif not isinstance(record.get("output"), str):
        raise LineError('give "regions" (as predict prints them) or "output" (the raw text)')
    return record


def _is_region(region: Any) -> bool:
    box = region.get("box") if isinstance(region, dict) else None
    return (
        isinstance(box, list)
        and len(box) == 4
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in box)
    )


def _task(record: dict[str, Any]) -> Task | None:
    name = record.get("task")
    if name is None:
        return None
    if name not in BULK_TASKS:
        raise LineError(f'"task" must be "grounding" or "ocr", got {name!r}')
    return Task(name)


def _size(record: dict[str, Any]) -> tuple[int, int]:
    width, height = record.get("width"), record.get("height")
    if width is not None or height is not None:
        if not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (width, height)
        ):
            raise LineError('"width" and "height" must both be positive integers')
        return width, height
    image = record["image"]
    if urlparse(image).scheme in ("http", "https", "s3", "gs", "azure-blob") or image.startswith(
        "/data/"
    ):
        raise LineError(f'{image} is not a local file: give "width" and "height" for it')
    try:
        with open_image(Path(image)) as opened:
            return displayed_size(opened)
    except ImageError as error:
        raise LineError(str(error)) from error
