"""Raw model outputs (JSON Lines) -> a Label Studio import file of tasks with predictions.

Each input line: ``{"image": <path or URL>, "output": <raw VARCO text>, "task": "grounding"|"ocr",
"width"?, "height"?}``. A bad line is reported with its number and skipped; the rest still converts.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from varco_labeler.labelstudio.config import LabelConfig
from varco_labeler.labelstudio.images import ImageError, displayed_size, open_image
from varco_labeler.labelstudio.labels import LabelMapper
from varco_labeler.labelstudio.predictions import prediction_from_varco
from varco_labeler.varco import Task

_TASKS_WITH_REGIONS = (Task.GROUNDING, Task.OCR)


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
    lines: Iterable[str], config: LabelConfig, mapper: LabelMapper, model_version: str
) -> Iterator[tuple[dict[str, Any] | None, LineReport]]:
    """Yield (task or None, report) per non-blank line, in order."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        report = LineReport(number)
        try:
            record = _record(line)
            report.image = record["image"]
            task_kind = _task(record, config)
            width, height = _size(record)
        except LineError as error:
            report.error = str(error)
            yield None, report
            continue
        conversion = prediction_from_varco(
            record["output"],
            task_kind,
            config,
            mapper,
            width,
            height,
            model_version,
            seed=record["image"],
        )
        report.dropped = conversion.dropped
        report.regions = len(conversion.regions)
        task = {"data": {config.data_key: record["image"]}, "predictions": [conversion.prediction]}
        yield task, report


def _record(line: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise LineError(f"not valid JSON: {error}") from error
    if not isinstance(record, dict):
        raise LineError(f"expected a JSON object, got {type(record).__name__}")
    for key in ("image", "output"):
        if not isinstance(record.get(key), str) or not record[key]:
            raise LineError(f'"{key}" must be a non-empty string')
    return record


def _task(record: dict[str, Any], config: LabelConfig) -> Task:
    name = record.get("task")
    if name is None:
        return config.default_task
    try:
        task = Task(name)
    except ValueError:
        task = None
    if task not in _TASKS_WITH_REGIONS:
        raise LineError(f'"task" must be "grounding" or "ocr", got {name!r}')
    return task


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
