"""Pairing: one training/evaluation example per annotated task, whatever the source.

Every source (the store, a Label Studio JSON export, a live project's snapshot) yields tasks in
Label Studio's export shape; :func:`pair_tasks` turns them into :class:`Example` s the same way:

- cancelled (skipped) annotations are dropped; a ground-truth annotation wins, else the latest;
- the human answer is the annotation's regions written as the model should have answered;
- the model's answer is the prediction the annotator started from (``annotation.prediction``
  when Label Studio sent it in full), else the task's latest full prediction, written the same way
  so that it differs from the human answer only where the human changed something.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from varco_labeler.labelstudio import LabelConfig, read_label_config, results_to_regions
from varco_labeler.regions import Region, regions_to_varco
from varco_labeler.varco import Task, prompt_for

_PAIRED_KINDS = (Task.GROUNDING.value, Task.OCR.value)


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


def pair_tasks(
    tasks: Iterable[Mapping[str, Any]],
    label_config: str | LabelConfig,
    source: str,
    stats: PairingStats | None = None,
) -> list[Example]:
    """Examples for tasks in Label Studio's export shape, in task order."""
    config = _config(label_config)
    stats = stats if stats is not None else PairingStats()
    examples = []
    for task in tasks:
        stats.tasks += 1
        example = pair_task(task, config, source, stats)
        if example is not None:
            examples.append(example)
            stats.paired += 1
            stats.with_prediction += example.has_prediction
    return examples


def pair_task(
    task: Mapping[str, Any],
    config: LabelConfig,
    source: str,
    stats: PairingStats | None = None,
) -> Example | None:
    stats = stats if stats is not None else PairingStats()
    annotations = [a for a in task.get("annotations") or [] if isinstance(a, Mapping)]
    kept = [a for a in annotations if not a.get("was_cancelled")]
    if not kept:
        if annotations:
            stats.cancelled_only += 1
        else:
            stats.no_annotation += 1
        return None
    image = (task.get("data") or {}).get(config.data_key)
    if not isinstance(image, str) or not image:
        stats.no_image += 1
        return None
    annotation = max(kept, key=_preference)
    prediction = _prediction_for(annotation, task)
    # The backend records the task it ran (a project may ask for OCR on any config).
    recorded_kind = prediction.get("task_kind") if prediction else None
    kind = Task(recorded_kind) if recorded_kind in _PAIRED_KINDS else config.default_task
    regions = tuple(results_to_regions(annotation.get("result") or [], config))
    model_regions = None
    if prediction is not None:
        model_regions = tuple(results_to_regions(prediction.get("result") or [], config))
    return Example(
        task_id=_int(task.get("id")),
        project=_int(task.get("project") or annotation.get("project")),
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
        annotation_id=_int(annotation.get("id")),
        ground_truth=bool(annotation.get("ground_truth")),
        source=source,
    )


def _preference(annotation: Mapping[str, Any]) -> tuple[bool, str, int]:
    """Ground truth first, then the most recently updated (ISO timestamps sort as text)."""
    return (
        bool(annotation.get("ground_truth")),
        str(annotation.get("updated_at") or annotation.get("created_at") or ""),
        _int(annotation.get("id")) or 0,
    )


def _prediction_for(
    annotation: Mapping[str, Any], task: Mapping[str, Any]
) -> Mapping[str, Any] | None:
    parent = annotation.get("prediction")
    if isinstance(parent, Mapping) and isinstance(parent.get("result"), list):
        return parent
    # Exports without a snapshot list prediction ids only: those cannot be paired.
    full = [
        p
        for p in task.get("predictions") or []
        if isinstance(p, Mapping) and isinstance(p.get("result"), list)
    ]
    if not full:
        return None
    return max(full, key=lambda p: (str(p.get("created_at") or ""), _int(p.get("id")) or 0))


def _config(label_config: str | LabelConfig) -> LabelConfig:
    return (
        label_config if isinstance(label_config, LabelConfig) else read_label_config(label_config)
    )


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
