"""Which prediction an annotation is paired with, and every model version scored in a report."""

from __future__ import annotations

from typing import Any

from helpers import CATS_CONFIG

from varco_labeler.feedback.pairing import (
    LATEST,
    LATEST_BEFORE,
    NO_PREDICTION,
    STARTED_FROM,
    PairingStats,
    pair_tasks,
)
from varco_labeler.feedback.report import build_report


def box(x: float, label: str = "Cat", region_id: str = "r1") -> dict[str, Any]:
    value = {"x": x, "y": 10.0, "width": 20.0, "height": 20.0, "rotation": 0}
    return {
        "id": region_id,
        "from_name": "label",
        "to_name": "image",
        "type": "rectanglelabels",
        "value": {**value, "rectanglelabels": [label]},
    }


def prediction(pid: int, version: str, x: float, created: str | None) -> dict[str, Any]:
    made = {"created_at": created} if created else {}
    return {"id": pid, "model_version": version, "result": [box(x)], **made}


def task(annotation: dict[str, Any], *predictions: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": 7,
        "data": {"image": "/data/upload/1/cat.png"},
        "annotations": [{"id": 70, "result": [box(10.0)], **annotation}],
        "predictions": list(predictions),
    }


EARLY = prediction(1, "v1", 10.0, "2026-01-01T10:00:00.000000Z")
LATE = prediction(2, "v2", 60.0, "2026-01-03T10:00:00+00:00")


def test_the_prediction_the_annotation_started_from_wins() -> None:
    stats = PairingStats()
    annotated = {"created_at": "2026-01-04T00:00:00Z", "parent_prediction": 1}
    (example,) = pair_tasks([task(annotated, EARLY, LATE)], CATS_CONFIG, "t", stats)
    assert (example.model_version, example.pairing_rule) == ("v1", STARTED_FROM)
    assert stats.rules == {STARTED_FROM: 1}


def test_without_a_parent_the_latest_prediction_made_before_the_annotation() -> None:
    annotated = {"created_at": "2026-01-02T00:00:00Z"}  # between the two predictions
    (example,) = pair_tasks([task(annotated, EARLY, LATE)], CATS_CONFIG, "t")
    assert (example.model_version, example.pairing_rule) == ("v1", LATEST_BEFORE)
    # Every prediction came after the annotation: none is paired (the annotator saw none).
    first = task({"created_at": "2025-12-31T00:00:00Z"}, EARLY, LATE)
    (unseen,) = pair_tasks([first], CATS_CONFIG, "t")
    assert (unseen.model_version, unseen.pairing_rule) == (None, NO_PREDICTION)


def test_a_task_re_predicted_after_the_annotation_pairs_with_the_version_annotated() -> None:
    """Predicted by v1, annotated, then re-predicted by v2: the pair is v1's."""
    annotated = {"created_at": "2026-01-02T00:00:00Z"}
    (example,) = pair_tasks([task(annotated, EARLY, LATE)], CATS_CONFIG, "t")
    assert example.model_version == "v1" and example.model_answer is not None


def test_a_report_scores_every_model_version_of_a_task() -> None:
    annotated = {"created_at": "2026-01-04T00:00:00Z", "parent_prediction": 2}
    examples = pair_tasks([task(annotated, EARLY, LATE)], CATS_CONFIG, "t", every_version=True)
    assert sorted((e.model_version, e.pairing_rule) for e in examples) == [
        ("v1", LATEST),
        ("v2", STARTED_FROM),
    ]
    report = build_report(examples)
    assert set(report["versions"]) == {"v1", "v2"}
    assert report["versions"]["v1"]["micro"]["f1"] == 1.0  # v1 put the box where the human did
    assert report["versions"]["v2"]["micro"]["f1"] == 0.0
    assert all(version["tasks"] == 1 for version in report["versions"].values())
