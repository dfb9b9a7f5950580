"""Pairing: one training/evaluation example per annotated task, whatever the source.

Every source (the store, a Label Studio JSON export, a live project's snapshot) yields tasks in
Label Studio's export shape; :func:`pair_tasks` turns them into :class:`Example` s the same way:

- cancelled (skipped) annotations are dropped; a ground-truth annotation wins, else the latest;
- the human answer is the annotation's regions written as the model should have answered;
- the model's answer is the prediction the annotator started from (``annotation.prediction``
  when Label Studio sent it in full, or the prediction whose id is ``parent_prediction``), else the
  latest prediction made before the annotation, never one made after it (the annotator never saw
  it); written the same way as the human answer so that it differs only where the human changed
  something. Which rule paired each example is counted in :class:`PairingStats` (``rules``);
- for a report, every model version of a task is scored against the human answer
  (``every_version``): one example per version, the one the annotator saw by the rules above and
  every other version by its latest prediction (``latest``), so a version made after the
  annotation is still measured against it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from varco_labeler.feedback.store import parse_timestamp
from varco_labeler.labelstudio import LabelConfig, read_label_config, results_to_regions
from varco_labeler.regions import Region, regions_to_varco
from varco_labeler.varco import Task, prompt_for

_PAIRED_KINDS = (Task.GROUNDING.value, Task.OCR.value)
STARTED_FROM = "started_from"
LATEST_BEFORE = "latest_before_annotation"
LATEST = "latest"
NO_PREDICTION = "none"
# How far the backend's clock (predictions) and Label Studio's (annotations) may disagree.
CLOCK_SKEW = timedelta(seconds=60)


@dataclass(frozen=True)
class Example:
    """A task's human answer and, when known, the model's pre-label it corrected."""

    task_id: int | None
    project: int | None
    image: str
    kind: Task
    prompt: str
    answer: str
    regions: tuple[Region, ...]
    model_answer: str | None = None
    model_regions: tuple[Region, ...] | None = None
    model_raw: str | None = None
    model_version: str | None = None
    prediction_score: float | None = None
    annotation_id: int | None = None
    ground_truth: bool = False
    source: str = ""
    # How the model's side was chosen: started_from, latest_before_annotation, latest or none.
    pairing_rule: str = NO_PREDICTION

    @property
    def has_prediction(self) -> bool:
        return self.model_regions is not None


@dataclass
class PairingStats:
    tasks: int = 0
    paired: int = 0
    no_annotation: int = 0
    cancelled_only: int = 0
    no_image: int = 0
    with_prediction: int = 0
    rules: Counter[str] = field(default_factory=Counter)
    # Filled by the task file reader: result items left out by type, tasks in the old shape.
    skipped_results: Counter[str] = field(default_factory=Counter)
    legacy_completions: int = 0


def pair_tasks(
    tasks: Iterable[Mapping[str, Any]],
    label_config: str | LabelConfig,
    source: str,
    stats: PairingStats | None = None,
    *,
    every_version: bool = False,
) -> list[Example]:
    """Examples for tasks in Label Studio's export shape, in task order; with ``every_version``,
    one per model version that predicted the task."""
    config = _config(label_config)
    stats = stats if stats is not None else PairingStats()
    examples = []
    for task in tasks:
        stats.tasks += 1
        paired = pair_task(task, config, source, stats, every_version=every_version)
        stats.paired += bool(paired)
        for example in paired:
            examples.append(example)
            stats.with_prediction += example.has_prediction
            stats.rules[example.pairing_rule] += 1
    return examples


def pair_task(
    task: Mapping[str, Any],
    config: LabelConfig,
    source: str,
    stats: PairingStats | None = None,
    *,
    every_version: bool = False,
) -> list[Example]:
    stats = stats if stats is not None else PairingStats()
    annotations = [a for a in task.get("annotations") or [] if isinstance(a, Mapping)]
    kept = [a for a in annotations if not a.get("was_cancelled")]
    if not kept:
        if annotations:
            stats.cancelled_only += 1
        else:
            stats.no_annotation += 1
        return []
    image = (task.get("data") or {}).get(config.data_key)
    if not isinstance(image, str) or not image:
        stats.no_image += 1
        return []
    annotation = max(kept, key=_preference)
    sides = _every_version(annotation, task) if every_version else [_side(annotation, task)]
    return [
        _example(task, annotation, image, config, source, prediction, rule)
        for prediction, rule in sides
    ]


def _example(
    task: Mapping[str, Any],
    annotation: Mapping[str, Any],
    image: str,
    config: LabelConfig,
    source: str,
    prediction: Mapping[str, Any] | None,
    rule: str,
) -> Example:
    # The backend records the task it ran (a project may ask for OCR on any config).
    recorded_kind = prediction.get("task_kind") if prediction else None
    kind = Task(recorded_kind) if recorded_kind in _PAIRED_KINDS else config.default_task
    regions = tuple(results_to_regions(annotation.get("result") or [], config))
    model_regions = None
    if prediction is not None:
        model_regions = tuple(results_to_regions(prediction.get("result") or [], config))
    return Example(
        task_id=as_int(task.get("id")),
        project=as_int(task.get("project") or annotation.get("project")),
        image=image,
        kind=kind,
        prompt=prompt_for(kind),
        answer=regions_to_varco(regions, kind),
        regions=regions,
        model_answer=regions_to_varco(model_regions, kind) if model_regions is not None else None,
        model_regions=model_regions,
        model_raw=prediction.get("raw") if prediction else None,
        model_version=prediction.get("model_version") if prediction else None,
        prediction_score=_float(prediction.get("score")) if prediction else None,
        annotation_id=as_int(annotation.get("id")),
        ground_truth=bool(annotation.get("ground_truth")),
        source=source,
        pairing_rule=rule,
    )


def _preference(annotation: Mapping[str, Any]) -> tuple[bool, str, int]:
    """Ground truth first, then the most recently updated (ISO timestamps sort as text)."""
    return (
        bool(annotation.get("ground_truth")),
        str(annotation.get("updated_at") or annotation.get("created_at") or ""),
        as_int(annotation.get("id")) or 0,
    )


Side = tuple[Mapping[str, Any] | None, str]


def _side(annotation: Mapping[str, Any], task: Mapping[str, Any]) -> Side:
    """The prediction the annotation is paired with, and the rule that chose it."""
    parent = annotation.get("prediction")
    if isinstance(parent, Mapping) and isinstance(parent.get("result"), list):
        return parent, STARTED_FROM
    full = _full_predictions(task)
    parent_id = as_int(annotation.get("parent_prediction"))
    started = [p for p in full if parent_id is not None and as_int(p.get("id")) == parent_id]
    if started:
        return started[0], STARTED_FROM
    annotated = parse_timestamp(annotation.get("created_at"))
    if annotated is None:  # an annotation without a time (older files): the latest, said so
        return (_latest(full), LATEST) if full else (None, NO_PREDICTION)
    # A prediction without a time is taken as made before: older exports do not stamp them. The
    # store stamps predictions with this machine's clock, Label Studio annotations with its own.
    seen_by = annotated + CLOCK_SKEW
    before = [p for p in full if (parse_timestamp(p.get("created_at")) or annotated) <= seen_by]
    if before:
        return _latest(before), LATEST_BEFORE
    # Never one made after the annotation: the annotator never saw it.
    return None, NO_PREDICTION


def _every_version(annotation: Mapping[str, Any], task: Mapping[str, Any]) -> list[Side]:
    """One side per model version: the prediction started from for its version, else that
    version's latest."""
    chosen, rule = _side(annotation, task)
    by_version: dict[Any, Side] = {}
    for prediction in _full_predictions(task):
        by_version[prediction.get("model_version")] = (prediction, LATEST)
    if chosen is not None:
        by_version[chosen.get("model_version")] = (chosen, rule)
    return list(by_version.values()) or [(None, NO_PREDICTION)]


def _full_predictions(task: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Predictions with their results: exports without a snapshot list ids only."""
    return sorted(
        (
            p
            for p in task.get("predictions") or []
            if isinstance(p, Mapping) and isinstance(p.get("result"), list)
        ),
        key=_age,
    )


def _latest(predictions: list[Mapping[str, Any]]) -> Mapping[str, Any]:
    return max(predictions, key=_age)


def _age(prediction: Mapping[str, Any]) -> tuple[datetime, int]:
    made = parse_timestamp(prediction.get("created_at")) or datetime.min
    return made, as_int(prediction.get("id")) or 0


def _config(label_config: str | LabelConfig) -> LabelConfig:
    return (
        label_config if isinstance(label_config, LabelConfig) else read_label_config(label_config)
    )


def as_int(value: Any) -> int | None:
    """An id as Label Studio means it, or None for anything else (1e400, "x", [])."""
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return None


def _float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None
