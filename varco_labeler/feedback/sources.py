"""Where examples come from: the feedback store, a Label Studio JSON export, or a live project.

All three yield tasks in Label Studio's export shape and go through :func:`pair_tasks`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from varco_labeler.feedback.pairing import Example, PairingStats, as_int, pair_tasks
from varco_labeler.feedback.store import FeedbackStore
from varco_labeler.feedback.task_files import JSON_MIN, ImageSize, read_task_file
from varco_labeler.labelstudio.config import read_label_config


class SourceError(ValueError):
    """A source cannot give examples; the message says what is missing."""


def examples_from_store(
    store: FeedbackStore,
    project: int | None = None,
    label_config: str | None = None,
    stats: PairingStats | None = None,
    *,
    every_version: bool = False,
) -> list[Example]:
    """Examples from webhooks and recorded predictions; each project's own label config is used
    unless ``label_config`` is given."""
    by_config: dict[str, list[Mapping[str, Any]]] = {}
    missing: set[int | None] = set()
    for task in store.tasks(project):
        xml = label_config or task.label_config
        if not xml:
            missing.add(task.project)
            continue
        by_config.setdefault(xml, []).append(
            {
                "id": task.id,
                "project": task.project,
                "data": task.data,
                "annotations": task.annotations,
                "predictions": task.predictions,
            }
        )
    if missing and not by_config:
        raise SourceError(
            f"no label config stored for project(s) {sorted(map(str, missing))}; pass one"
        )
    examples: list[Example] = []
    for xml, tasks in by_config.items():
        examples += pair_tasks(tasks, xml, "store", stats, every_version=every_version)
    return sorted(examples, key=lambda e: (e.project or 0, e.task_id or 0))


def examples_from_export(
    tasks: Iterable[Mapping[str, Any]] | Path,
    label_config: str,
    store: FeedbackStore | None = None,
    stats: PairingStats | None = None,
    source: str = "export",
    *,
    every_version: bool = False,
    needs_model_side: str | None = None,
    image_size: ImageSize | None = None,
) -> list[Example]:
    """Examples from Label Studio task files (a path: any shape :func:`read_task_file` reads)
    or already parsed tasks.

    A plain export lists predictions as ids only; with ``store``, the predictions the backend
    recorded for those tasks fill them in. ``needs_model_side`` names what needs the model's
    predictions (a DPO export, a report): a file whose shape has none (JSON_MIN, a target
    storage's annotation files) is refused for it unless the store has them.
    """
    stats = stats if stats is not None else PairingStats()
    config = read_label_config(label_config)  # parsed once, for the reader and the pairing
    read = None
    if isinstance(tasks, Path):
        read = read_task_file(tasks, config, image_size)
        source = f"export:{tasks.name}"
        stats.skipped_results.update(read.skipped_results)
        stats.legacy_completions += read.legacy_completions
        tasks = read.tasks
    tasks = list(tasks)
    if store is not None:
        recorded = store.predictions_by_task()
        tasks = [_with_recorded(task, recorded.get(as_int(task.get("id")), [])) for task in tasks]
    predicted = any(isinstance(p, Mapping) for t in tasks for p in t.get("predictions") or [])
    if needs_model_side and read is not None and not read.has_predictions and not predicted:
        what = "a JSON_MIN export" if read.shape == JSON_MIN else "a target storage's files"
        raise SourceError(
            f"{read.path}: {what} holds annotations only, no predictions, and the feedback "
            f"store has none for its tasks, so it cannot give {needs_model_side}; export the "
            "project as JSON (with predictions) instead"
        )
    return pair_tasks(tasks, config, source, stats, every_version=every_version)


def snapshot_export(
    client: Any,
    project: int,
    *,
    timeout: float = 600.0,
    poll: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[list[dict[str, Any]], str]:
    """A live project's tasks with FULL predictions, and its label config, via the SDK.

    The plain export endpoint gives predictions as ids only; a snapshot export with
    ``serialization_options.predictions.only_id = false`` gives the objects (DESIGN section 4).
    ``client`` is a ``label_studio_sdk.LabelStudio``.
    """
    label_config = client.projects.get(id=project).label_config
    created = client.projects.exports.create(
        id=project,
        title="varco-labeler feedback",
        serialization_options={
            "predictions": {"only_id": False},
            "annotations__completed_by": {"only_id": True},
        },
    )
    deadline = time.monotonic() + timeout
    while True:
        status = str(client.projects.exports.get(id=project, export_pk=created.id).status)
        if status.endswith("completed"):
            break
        if status.endswith("failed"):
            raise SourceError(f"Label Studio failed to build the export of project {project}")
        if time.monotonic() > deadline:
            raise SourceError(f"the export of project {project} took over {timeout:.0f} s")
        sleep(poll)
    data = b"".join(
        client.projects.exports.download(id=project, export_pk=created.id, export_type="JSON")
    )
    return json.loads(data), label_config


def examples_from_label_studio(
    url: str,
    api_key: str,
    project: int,
    stats: PairingStats | None = None,
    *,
    every_version: bool = False,
) -> list[Example]:
    from varco_labeler.labelstudio.client import sdk_client

    tasks, label_config = snapshot_export(sdk_client(url, api_key), project)
    source = f"label-studio:{project}"
    return pair_tasks(tasks, label_config, source, stats, every_version=every_version)


def _with_recorded(task: Mapping[str, Any], recorded: list[dict[str, Any]]) -> Mapping[str, Any]:
    has_full = any(isinstance(p, Mapping) for p in task.get("predictions") or [])
    if has_full or not recorded:
        return task
    return {**task, "predictions": recorded}
