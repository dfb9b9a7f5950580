"""One reader for the task files Label Studio writes, in every shape it has written them.

- a JSON list of tasks (the ``JSON`` export);
- one task object (a target storage's per-task file, older single-task files);
- JSON lines, one task a line;
- a folder of per-task files (a target storage's layout: ``1``, ``2.json``, ...);
- ``JSON_MIN``: flat records, one per annotation, the task's data and each control's values at
  the top level and no predictions (fine for SFT, refused where the model's side is needed);
- the older ``completions`` key, read as ``annotations``.

Every task comes out in the ``JSON`` export's shape. Result items this project cannot use
(relations, keypoints, polygons, other tags, malformed items) are left out and counted, never
fatal; a file that is not a task file is refused in one line that names the file, the task (index
and id) and what was expected.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from varco_labeler.labelstudio.config import LabelConfig

EXPECTED = (
    "a Label Studio export: a JSON list of tasks, one task object, JSON lines, a folder of "
    'task files or JSON_MIN, each task like {"data": {...}, "annotations": [...]}'
)
JSON_MIN = "json-min"
# The result types this project reads; any other is skipped and counted.
_REGION_TYPES = frozenset({"rectanglelabels", "rectangle", "labels", "textarea"})
_GEOMETRY = ("x", "y", "width", "height")
_PLACE = frozenset({*_GEOMETRY, "rotation", "original_width", "original_height"})
# JSON_MIN keys that describe the annotation, not the task's data or a control's values.
_MIN_KEYS = frozenset(
    {"id", "annotator", "annotation_id", "created_at", "updated_at", "lead_time", "agreement"}
)

ImageSize = Callable[[str], tuple[int, int]]


class TaskFileError(ValueError):
    """The file is not a task file Label Studio writes; the message is one line."""


@dataclass
class TaskFile:
    """What a task file held, in the ``JSON`` export's shape, and what was left out."""

    path: Path
    shape: str
    tasks: list[dict[str, Any]]
    legacy_completions: int = 0
    skipped_results: Counter[str] = field(default_factory=Counter)
    # Whether the shape can carry predictions at all (JSON_MIN and annotation files cannot).
    has_predictions: bool = True

    def __post_init__(self) -> None:
        self.has_predictions = self.has_predictions and self.shape != JSON_MIN


def read_task_file(
    path: Path, config: LabelConfig, image_size: ImageSize | None = None
) -> TaskFile:
    """Read any Label Studio task file (or folder of them) for a project with ``config``.

    ``image_size`` gives an image's size for rotated boxes whose result lacks
    ``original_width``/``original_height`` (a rotation turns in pixels, so it needs the size);
    it is asked only for those.
    """
    path = Path(path)
    if path.is_dir():
        shape, records = "folder", list(_folder(path))
    else:
        shape, records = _records(path, _text(path))
    if shape != "folder" and records and all(_is_min_record(r) for _, r in records):
        shape = JSON_MIN
    result = TaskFile(path, shape, [])
    if records and all(_is_annotation_record(r) for _, r in records):
        # A target storage writes one file per annotation, its task nested (Label Studio's
        # default): gather each task's annotations. Such files never hold predictions.
        records = _tasks_of_annotations(records)
        result.has_predictions = False
    by_id: dict[Any, dict[str, Any]] = {}  # JSON_MIN has one record per annotation of a task
    for where, record in records:
        if shape == JSON_MIN:
            task = _from_min(record, config, where, result.skipped_results)
            known = by_id.get(task["id"]) if task["id"] is not None else None
            if known is not None:
                known["annotations"] += task["annotations"]
                continue
            by_id[task["id"]] = task
        else:
            task = _task(record, where, result)
        _check_image(task, config, where)
        result.tasks.append(task)
    for task in result.tasks:
        for item in _annotations(task) + _predictions(task):
            item["result"] = _usable_results(item, config, result.skipped_results)
            if item.get("skipped") and "was_cancelled" not in item:
                item["was_cancelled"] = True  # the older name of a skipped task's annotation
            version = item.get("model_version")
            if version is not None and not isinstance(version, str):
                item["model_version"] = str(version) if _finite(version) else None
        if image_size is not None:
            _fill_sizes(task, config, image_size, result.skipped_results)
    return result


# -- shapes ------------------------------------------------------------------------------------
def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise TaskFileError(f"{path}: no such file or folder") from None
    except (OSError, UnicodeDecodeError) as error:
        raise TaskFileError(f"{path}: cannot be read as UTF-8 text ({error})") from None


def _records(path: Path, text: str) -> tuple[str, list[tuple[str, Any]]]:
    """(shape, [(where, record)]) for one file."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as whole:
        # Only "\n" ends a line: JSON strings may hold U+2028 and other line separators.
        lines = [(n, line) for n, line in enumerate(text.split("\n"), 1) if line.strip()]
        if whole.msg != "Extra data" or not lines:
            raise TaskFileError(
                f"{path}: not JSON (line {whole.lineno}, column {whole.colno}: {whole.msg}); "
                f"expected {EXPECTED}"
            ) from None
        records = []
        for number, line in lines:
            try:
                records.append((f"{path}: line {number}", json.loads(line)))
            except json.JSONDecodeError as error:
                raise TaskFileError(
                    f"{path}: line {number}: not JSON ({error.msg}); expected one task a line"
                ) from None
        return "jsonl", records
    if isinstance(data, list):
        return "json", [(f"{path}: task {index}", record) for index, record in enumerate(data)]
    if isinstance(data, Mapping):
        return "task", [(f"{path}: task 0", data)]
    raise TaskFileError(f"{path}: holds a JSON {type(data).__name__}; expected {EXPECTED}")


def _folder(path: Path) -> Iterator[tuple[str, Any]]:
    """A target storage's files, in task order: numeric names by number, then the rest."""
    files = [p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")]
    if not files:
        raise TaskFileError(f"{path}: an empty folder; expected {EXPECTED}")
    files.sort(key=lambda p: (not _numbered(p), int(p.stem) if _numbered(p) else 0, p.name))
    for file in files:
        yield from _records(file, _text(file))[1]


def _numbered(path: Path) -> bool:
    return path.stem.isascii() and path.stem.isdigit()


def _is_annotation_record(record: Any) -> bool:
    return (
        isinstance(record, Mapping)
        and "data" not in record
        and "result" in record
        and isinstance(record.get("task"), Mapping)
        and "data" in record["task"]
    )


def _tasks_of_annotations(records: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """Annotation records (each with its task nested) as tasks with their annotations."""
    tasks: dict[Any, tuple[str, dict[str, Any]]] = {}
    for where, record in records:
        nested = record["task"]
        _check_id(nested, where)
        annotation = {k: v for k, v in record.items() if k != "task"}
        where = _named(where, {"id": nested.get("id")}).replace("(id", "(task", 1)
        _, task = tasks.setdefault(nested.get("id"), (where, {**nested, "annotations": []}))
        task["annotations"].append(annotation)
    ordered = sorted(tasks.items(), key=lambda item: (item[0] is None, str(item[0]).zfill(20)))
    return [(where, {**task, "predictions": []}) for _, (where, task) in ordered]


def _is_min_record(record: Any) -> bool:
    return (
        isinstance(record, Mapping)
        and "data" not in record
        and ("annotation_id" in record or "annotator" in record)
    )


# -- tasks -------------------------------------------------------------------------------------
def _task(record: Any, where: str, result: TaskFile) -> dict[str, Any]:
    if not isinstance(record, Mapping):
        raise TaskFileError(
            f"{where}: a JSON {type(record).__name__}, not a task; expected {EXPECTED}"
        )
    _check_id(record, where)
    where = _named(where, record)
    if not isinstance(record.get("data"), Mapping):
        found = "no" if "data" not in record else f"a {type(record['data']).__name__} as"
        raise TaskFileError(
            f'{where}: {found} "data"; expected a task like {{"data": {{"image": ...}}, '
            '"annotations": [...]}'
        )
    task = dict(record)
    if "annotations" not in task and "completions" in task:
        task["annotations"] = task.pop("completions")
        result.legacy_completions += 1
    for key in ("annotations", "predictions"):
        if not isinstance(task.get(key) or [], list):
            raise TaskFileError(
                f'{where}: "{key}" is a {type(task[key]).__name__}; expected a list'
            )
        task[key] = [dict(a) if isinstance(a, Mapping) else a for a in task.get(key) or []]
    return task


def _check_id(record: Mapping[str, Any], where: str) -> None:
    task_id = record.get("id")
    if task_id is not None and (isinstance(task_id, bool) or not isinstance(task_id, int | str)):
        raise TaskFileError(f'{where}: "id" is a {type(task_id).__name__}; expected an integer')


def _named(where: str, record: Mapping[str, Any]) -> str:
    """Where a task is, for a message; its id quoted so that the message stays one line."""
    task_id = record.get("id")
    if task_id is None:
        return where
    return f"{where} (id {task_id if isinstance(task_id, int) else repr(task_id)})"


def _check_image(task: Mapping[str, Any], config: LabelConfig, where: str) -> None:
    image = task["data"].get(config.data_key)
    if image is not None and not isinstance(image, str):
        raise TaskFileError(
            f"{_named(where, task)}: data[{config.data_key!r}] is a {type(image).__name__}; "
            "expected the image's URL or path"
        )


def _annotations(task: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [a for a in task.get("annotations") or [] if isinstance(a, dict)]


def _predictions(task: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [p for p in task.get("predictions") or [] if isinstance(p, dict)]


# -- results -----------------------------------------------------------------------------------
def _usable_results(
    item: Mapping[str, Any], config: LabelConfig, skipped: Counter[str]
) -> list[dict[str, Any]]:
    results = item.get("result")
    if results is None:
        return []
    if not isinstance(results, list):
        skipped["malformed"] += 1
        return []
    usable = []
    for result in results:
        kind = result.get("type") if isinstance(result, Mapping) else None
        if not isinstance(kind, str) or kind not in _REGION_TYPES:
            skipped[kind if isinstance(kind, str) and kind else "malformed"] += 1
        elif result.get("to_name") != config.image:
            skipped["other image or tag"] += 1
        elif not _valid_value(result.get("value"), kind):
            skipped["malformed"] += 1
        else:
            # Items without an id would all merge into one region: each gets its own.
            item = {**result, "id": result.get("id") or f"unnamed-{len(usable)}"}
            for key in ("score", "original_width", "original_height"):
                if key in item and not _finite(item[key]):
                    del item[key]  # a score or size that is not a number says nothing
            usable.append(item)
    return usable


def _valid_value(value: Any, kind: str) -> bool:
    if not isinstance(value, Mapping):
        return False
    if value.get("rotation") is not None and not _finite(value["rotation"]):
        return False
    numbers = [value.get(key) for key in _GEOMETRY]
    if not all(_finite(n) for n in numbers):
        # Labels and texts may come without a place; boxes may not, nor a half-given place.
        return kind not in ("rectangle", "rectanglelabels") and all(n is None for n in numbers)
    names = value.get(kind) if kind in ("rectanglelabels", "labels") else value.get("text")
    return names is None or (isinstance(names, list) and all(isinstance(n, str) for n in names))


def _finite(number: Any) -> bool:
    if not isinstance(number, int | float) or isinstance(number, bool):
        return False
    try:
        return math.isfinite(number)
    except OverflowError:  # an integer beyond any float
        return False


def _fill_sizes(
    task: dict[str, Any], config: LabelConfig, image_size: ImageSize, skipped: Counter[str]
) -> None:
    """Rotated boxes without the image's size get it from the image; when the image cannot be
    had, they are left out (their place cannot be known) and counted."""

    def unsized(result: Mapping[str, Any]) -> bool:
        return bool((result["value"].get("rotation") or 0) % 360) and not (
            result.get("original_width") and result.get("original_height")
        )

    items = _annotations(task) + _predictions(task)
    if not any(unsized(result) for item in items for result in item["result"]):
        return
    image, size = task["data"].get(config.data_key), None
    if isinstance(image, str) and image:
        with suppress(ValueError, OSError):  # ImageError is a ValueError
            size = image_size(image)
    for item in items:
        kept = []
        for result in item["result"]:
            if not unsized(result):
                kept.append(result)
            elif size is None:
                skipped["rotated box, image size unknown"] += 1
            else:
                kept.append({**result, "original_width": size[0], "original_height": size[1]})
        item["result"] = kept


# -- JSON_MIN ----------------------------------------------------------------------------------
def _from_min(
    record: Mapping[str, Any], config: LabelConfig, where: str, skipped: Counter[str]
) -> dict[str, Any]:
    """A flat JSON_MIN record as a task with one annotation; each box rejoined with its labels
    and text: by position when there is one per box (a one-line text loses its geometry in
    JSON_MIN), else by geometry. What cannot be rejoined is counted."""
    _check_id(record, where)
    where = _named(where, record)
    controls = {config.box_control, config.labels_control, config.text_control} - {None}
    data = {k: v for k, v in record.items() if k not in _MIN_KEYS and k not in controls}
    regions = [{"box": value} for value in _min_values(record, config.box_control, where)]
    for name in (config.labels_control, config.text_control):
        values = _min_values(record, name, where) if name else []
        if len(values) == len(regions):
            for value, region in zip(values, regions, strict=True):
                region[name] = _with_place(value, region["box"])
            continue
        for value in values:
            joined = next(
                (r for r in regions if name not in r and _geometry(r["box"]) == _geometry(value)),
                None,
            )
            if joined is None or _geometry(value) is None:
                skipped["value without its region (JSON_MIN)"] += 1
            else:
                joined[name] = value
    result = [
        _min_result(f"min{index}", config.box_control if name == "box" else name, value, config)
        for index, region in enumerate(regions)
        for name, value in region.items()
    ]
    if record.get("annotation_id") is None and not result:
        annotations = []  # a task nobody annotated
    else:
        annotations = [_min_annotation(record, result)]
    return {"id": record.get("id"), "data": data, "annotations": annotations, "predictions": []}


def _with_place(value: Any, box: Any) -> Any:
    """A one-line text as JSON_MIN writes it (a plain string) in its box's place."""
    if not isinstance(value, str):
        return value
    return {**{k: v for k, v in _mapping(box).items() if k in _PLACE}, "text": [value]}


def _min_annotation(record: Mapping[str, Any], result: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": record.get("annotation_id"),
        "result": result,
        "completed_by": record.get("annotator"),
        "created_at": record.get("created_at"),
        "updated_at": record.get("updated_at"),
        "lead_time": record.get("lead_time"),
    }


def _min_values(record: Mapping[str, Any], name: str, where: str) -> list[Any]:
    values = record.get(name)
    if values is None:
        return []
    if isinstance(values, str | Mapping):
        return [values]
    if not isinstance(values, list):
        raise TaskFileError(
            f"{where}: {name!r} is a {type(values).__name__}; expected the control's list of values"
        )
    return values


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _geometry(value: Any) -> tuple[float, ...] | None:
    """A region's place, to join a box with its labels and text; None when it has none."""
    numbers = [_mapping(value).get(k) for k in _GEOMETRY]
    if not all(_finite(n) for n in numbers):
        return None
    return tuple(round(float(n), 4) for n in numbers)


def _min_result(
    region_id: str, from_name: str, value: Mapping[str, Any], config: LabelConfig
) -> dict[str, Any]:
    if from_name == config.text_control:
        kind = "textarea"
    elif from_name == config.labels_control:
        kind = "labels"
    else:
        kind = config.box_type
    if not isinstance(value, Mapping):  # kept as it is: counted as malformed when read
        return {"id": region_id, "from_name": from_name, "to_name": config.image, "type": kind,
                "value": value}  # fmt: skip
    sizes = {k: value[k] for k in ("original_width", "original_height") if k in value}
    plain = {k: v for k, v in value.items() if k not in sizes and k != "type"}
    return {
        "id": region_id,
        "from_name": from_name,
        "to_name": config.image,
        "type": kind,
        "value": plain,
        **sizes,
    }
