"""The store's side of reconciling with Label Studio, on SQLite and on the local PostgreSQL: a task
as Label Studio returns it is applied exactly once, webhooks are notifications until read back,
and Label Studio's prediction ids join the predictions this backend recorded."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from copy import deepcopy
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from helpers import labelstudio_fixture

from varco_labeler.feedback.pairing import LATEST_BEFORE, STARTED_FROM, PairingStats
from varco_labeler.feedback.sources import examples_from_store
from varco_labeler.feedback.store import (
    EventState,
    FeedbackStore,
    TaskChanges,
)

PROJECT = 1


@pytest.fixture(params=["sqlite", "postgresql"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FeedbackStore]:
    if request.param == "sqlite":
        store = FeedbackStore(model_dir=tmp_path)
    else:
        schemas: Callable[[str], str] = request.getfixturevalue("postgres_schemas")
        store = FeedbackStore(schemas("reconcile"))
    store.register_project(PROJECT, label_config=labelstudio_fixture("setup")["schema"])
    yield store
    store.close()


def label_studio_task(*annotations: dict[str, Any], predictions: Any = ()) -> dict[str, Any]:
    """Task 1 as ``GET /api/tasks/1/`` returns it, from a captured webhook."""
    body = labelstudio_fixture("webhook_annotation_created")
    task = deepcopy(body["task"])
    task["annotations"] = [deepcopy(a) for a in annotations]
    task["predictions"] = [deepcopy(p) for p in predictions]
    task["drafts"] = []
    return task


def annotation(**changes: Any) -> dict[str, Any]:
    return {**deepcopy(labelstudio_fixture("webhook_annotation_created")["annotation"]), **changes}


def test_a_task_is_applied_once_and_follows_label_studio(any_store: FeedbackStore) -> None:
    first = annotation()
    assert any_store.apply_task(PROJECT, label_studio_task(first)) == TaskChanges(added=1)
    assert any_store.apply_task(PROJECT, label_studio_task(first)) == TaskChanges()

    later = annotation(updated_at="2026-11-21T22:50:00Z", result=[], lead_time=20.0)
    assert any_store.apply_task(PROJECT, label_studio_task(later)) == TaskChanges(updated=1)
    older = annotation(updated_at="2026-11-21T22:40:00Z")  # a stale read changes nothing
    assert any_store.apply_task(PROJECT, label_studio_task(older)) == TaskChanges()
    (task,) = any_store.tasks(PROJECT)
    assert [(a["result"], a["lead_time"]) for a in task.annotations] == [([], 20.0)]

    skipped = annotation(id=2, was_cancelled=True, result=[])
    changes = any_store.apply_task(PROJECT, label_studio_task(skipped))
    assert changes == TaskChanges(added=1, deleted=1)  # annotation 1 is gone from the task
    assert any_store.task_summaries(PROJECT)[1].cancelled == 1
    assert any_store.task_summaries(PROJECT)[1].annotations == 0

    # Label Studio shows annotation 1 again (a stale deletion): it comes back.
    changes = any_store.apply_task(PROJECT, label_studio_task(later, skipped))
    assert changes == TaskChanges(added=1)
    assert any_store.forget_tasks([1]) == 2
    assert any_store.tasks(PROJECT)[0].annotations == []


def test_a_webhook_is_a_notification_until_read_back(any_store: FeedbackStore) -> None:
    body = labelstudio_fixture("webhook_annotation_created")
    assert any_store.notify(body) == EventState.PENDING
    assert any_store.notify({"action": "PROJECT_UPDATED", "project": {"id": 7}}) == "kept"
    assert any_store.counts()["annotations"] == 0  # nothing the body claims is stored
    (pending,) = any_store.pending_events()
    assert (pending.action, pending.project, pending.annotation_ids) == (
        "ANNOTATION_CREATED",
        PROJECT,
        [1],
    )
    any_store.settle(pending.id, EventState.NOT_IN_LABEL_STUDIO)
    assert any_store.pending_events() == []
    assert any_store.event_states() == {EventState.NOT_IN_LABEL_STUDIO: 1, EventState.KEPT: 1}
    assert any_store.is_set_up(PROJECT) and not any_store.is_set_up(7)


def test_label_studio_ids_join_recorded_predictions_and_pairing_uses_them(
    any_store: FeedbackStore,
) -> None:
    result = deepcopy(annotation()["result"])
    for version in ("A", "B"):
        any_store.record_prediction(
            task_id=1,
            project=PROJECT,
            image="/data/local-files/?d=images/a.png",
            prompt="<ocr>",
            task_kind="ocr",
            raw=f"raw {version}",
            result=result,
            model_version=version,
            created_at="2026-11-21T22:00:00Z" if version == "A" else "2026-11-21T22:30:00Z",
        )
    ours_a = {"id": 11, "model_version": "A", "result": result, "score": 0.5}
    ours_b = {"id": 12, "model_version": "B", "result": result, "score": 0.6}
    theirs = {"id": 13, "model_version": "other", "result": [], "created_at": "2026-11-21T23:00Z"}
    made_from_a = annotation(parent_prediction=11)
    task = label_studio_task(made_from_a, predictions=[ours_a, ours_b, theirs])
    assert any_store.apply_task(PROJECT, task).predictions == 3
    assert any_store.apply_task(PROJECT, task).predictions == 0
    by_id = {p["id"]: p for p in any_store.predictions()}
    assert set(by_id) == {11, 12, 13}
    assert by_id[11]["raw"] == "raw A" and by_id[12]["raw"] == "raw B"  # ours, now with ids
    assert by_id[13]["raw"] == "" and by_id[13]["model_version"] == "other"  # kept as read
    assert any_store.task_summaries(PROJECT)[1].predictions == 3

    stats = PairingStats()
    (example,) = examples_from_store(any_store, PROJECT, stats=stats)
    assert (example.model_version, example.pairing_rule) == ("A", STARTED_FROM)

    # Without parent_prediction: the newest made before the annotation (22:44), B, not theirs.
    any_store.apply_task(
        PROJECT,
        label_studio_task(
            annotation(parent_prediction=None, updated_at="2026-11-22T00:00:00Z"),
            predictions=[ours_a, ours_b, theirs],
        ),
    )
    (example,) = examples_from_store(any_store, PROJECT)
    assert (example.model_version, example.pairing_rule) == ("B", LATEST_BEFORE)


def test_sync_state_is_kept_per_project(any_store: FeedbackStore) -> None:
    assert any_store.sync_state(PROJECT) is None
    cursor = datetime(2026, 11, 30, 12, 0, 0)
    any_store.save_sync_state(PROJECT, cursor=cursor)
    state = any_store.sync_state(PROJECT)
    assert state is not None and state.cursor == cursor and state.synced_at is None
    any_store.save_sync_state(PROJECT, cursor=cursor, stats={"changed_tasks": 3}, finished=True)
    state = any_store.sync_state(PROJECT)
    assert state is not None and state.stats == {"changed_tasks": 3} and state.synced_at
    assert any_store.projects() == [PROJECT]
