"""The store against the webhooks Label Studio 1.23.2 really sent (tests/fixtures)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from copy import deepcopy
from pathlib import Path
from typing import Any

import pytest
from helpers import labelstudio_fixture

from varco_labeler.feedback.sources import examples_from_store
from varco_labeler.feedback.store import FeedbackStore, PredictionRecord, StoreUnavailable
from varco_labeler.regions import Region
from varco_labeler.varco import Box

CREATED = "webhook_annotation_created"
UPDATED = "webhook_annotation_updated"
CANCELLED = "webhook_annotation_cancelled"
DELETED = "webhook_annotations_deleted"
TRAINING = "webhook_start_training"
ALL = (CREATED, UPDATED, CANCELLED, DELETED, TRAINING)


def feed(store: FeedbackStore, *names: str) -> None:
    for name in names:
        store.append(labelstudio_fixture(name))


def test_captured_payloads_land(store: FeedbackStore) -> None:
    feed(store, CREATED, CANCELLED, TRAINING)
    counts = store.counts()
    assert counts["projects"] == 1 and counts["tasks"] == 2 and counts["events"] == 3
    assert counts["annotations"] == 2 and counts["cancelled_annotations"] == 1
    assert store.label_config(1).startswith("<View>")
    tasks = {task.id: task for task in store.tasks()}
    assert tasks[1].data == {"image": "/data/local-files/?d=images/a.png"}
    (annotation,) = tasks[1].annotations
    assert annotation["completed_by"] == 1 and len(annotation["result"]) == 2
    # The skip came with the prediction the annotator was shown: it is kept with it.
    (skipped,) = tasks[2].annotations
    assert skipped["was_cancelled"] and skipped["prediction"]["model_version"] == "offline-v0"


def test_update_replaces_and_redelivery_adds_nothing(store: FeedbackStore) -> None:
    feed(store, CREATED, UPDATED, UPDATED, CREATED)  # the late CREATED is older than UPDATED
    counts = store.counts()
    assert counts["annotations"] == 1 and counts["events"] == 4
    (task,) = store.tasks()
    (annotation,) = task.annotations
    assert annotation["ground_truth"] is True  # from UPDATED; the stale CREATED did not win
    assert annotation["updated_at"] == "2026-11-21T22:44:21.147316Z"


def test_delete_marks_and_exports_exclude(store: FeedbackStore) -> None:
    feed(store, CREATED, CANCELLED, DELETED)  # DELETED names annotation 2, the skip
    counts = store.counts()
    assert counts["deleted_annotations"] == 1 and counts["annotations"] == 2
    assert [a["id"] for t in store.tasks() for a in t.annotations] == [1]
    feed(store, CANCELLED)  # a redelivered event does not bring a deleted annotation back
    assert [a["id"] for t in store.tasks() for a in t.annotations] == [1]
    assert [e.task_id for e in examples_from_store(store)] == [1]


def test_cancelled_kept_but_not_exported(store: FeedbackStore) -> None:
    feed(store, CANCELLED)
    assert store.counts()["cancelled_annotations"] == 1
    assert examples_from_store(store) == []


def test_other_actions_are_recorded_without_label_config(store: FeedbackStore) -> None:
    feed(store, TRAINING)
    store.append({"action": "PROJECT_UPDATED", "project": {"id": 7, "title": "x"}})
    store.append({"action": "SOMETHING_NEW"})
    store.append({"action": "ANNOTATION_CREATED", "annotation": {"result": []}})  # no id
    assert store.counts()["events"] == 4 and store.counts()["annotations"] == 0
    with store.engine.connect() as conn:
        from sqlalchemy import select

        from varco_labeler.feedback.store import EventRow

        bodies = [row.body for row in conn.execute(select(EventRow).order_by(EventRow.id))]
    assert bodies[0]["action"] == "START_TRAINING"
    assert "label_config" not in bodies[0]["project"]  # kept once, in the projects table


def test_recorded_prediction_pairs_with_the_annotation(store: FeedbackStore) -> None:
    feed(store, UPDATED)
    result = deepcopy(labelstudio_fixture(UPDATED)["annotation"]["result"])
    for item in result:
        if item["type"] == "textarea":
            item["value"]["text"] = ["HELL0"]
    store.record_prediction(
        task_id=1,
        project="1.1795301059",
        image="/data/local-files/?d=images/a.png",
        prompt="<ocr>",
        task_kind="ocr",
        raw="<char>HELL0</char><bbox>0.1, 0.2, 0.4, 0.25</bbox>",
        result=result,
        model_version="tiny-v1",
        regions=[Region(Box(0.1, 0.2, 0.4, 0.25), text="HELL0", score=0.5).to_json()],
        width=640,
        height=480,
        score=0.5,
        created_at="2026-11-21T22:40:00Z",  # before the captured annotation
    )
    (example,) = examples_from_store(store)
    assert example.model_version == "tiny-v1" and example.project == 1
    assert example.model_raw == "<char>HELL0</char><bbox>0.1, 0.2, 0.4, 0.25</bbox>"
    assert example.model_answer == "<char>HELL0</char><bbox>0.1, 0.2, 0.4, 0.25</bbox>"
    assert example.answer == "<char>HELLO</char><bbox>0.1, 0.2, 0.4, 0.25</bbox>"


@pytest.fixture
def postgres_store(postgres_schemas: Callable[[str], str]) -> Iterator[FeedbackStore]:
    """A store in a fresh schema of the local PostgreSQL."""
    store = FeedbackStore(postgres_schemas("feedback"))
    yield store
    store.close()


def test_postgresql_store(postgres_store: FeedbackStore) -> None:
    assert postgres_store.engine.dialect.name == "postgresql"
    feed(postgres_store, *ALL, CREATED, UPDATED)
    counts = postgres_store.counts()
    assert counts["annotations"] == 2 and counts["deleted_annotations"] == 1
    assert counts["events"] == len(ALL) + 2
    (example,) = examples_from_store(postgres_store)
    assert example.ground_truth and example.answer.startswith("<char>HELLO</char>")


def _record(**changes: Any) -> PredictionRecord:
    fields: dict[str, Any] = dict(
        task_id=7,
        project=2,
        image="/data/upload/2/a.png",
        prompt="<ocr>",
        task_kind="ocr",
        raw="<char>A</char><bbox>0.1, 0.1, 0.2, 0.2</bbox>",
        regions=[{"box": [0.1, 0.1, 0.2, 0.2], "text": "A", "score": 0.9}],
        result=[],
        model_version="v1",
    )
    return PredictionRecord(**(fields | changes))


@pytest.mark.parametrize("kind", ["store", "postgres_store"])
def test_a_prediction_is_recorded_once_however_often_it_arrives(kind: str, request) -> None:
    """A task served again from the cache, a retried job, a rerun: one row each."""
    store = request.getfixturevalue(kind)
    assert store.record_predictions([_record(), _record()]) == 1
    assert store.record_predictions([_record(), _record(model_version="v2")]) == 1
    assert store.record_predictions([_record(task_id=8)]) == 1
    by_task = store.predictions_by_task()
    assert [p["model_version"] for p in by_task[7]] == ["v1", "v2"]
    assert by_task[7][0]["regions"] == _record().regions


def test_a_store_made_by_an_earlier_release_gains_the_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as old:
        old.execute(
            "CREATE TABLE feedback_predictions (id INTEGER PRIMARY KEY, task_id BIGINT, "
            "project INTEGER, image TEXT, width INTEGER, height INTEGER, prompt TEXT, "
            "task_kind VARCHAR(32), raw TEXT, regions JSON, result JSON, "
            "model_version VARCHAR(256), scores JSON, score FLOAT, created_at DATETIME)"
        )
        old.execute(
            "INSERT INTO feedback_predictions (task_id, image, prompt, task_kind, raw, regions, "
            "result, model_version, created_at) VALUES (1, 'a', '<ocr>', 'ocr', '', '[]', '[]', "
            "'old', '2026-01-01 00:00:00')"
        )
    store = FeedbackStore(f"sqlite:///{path}")
    try:
        assert store.record_predictions([_record(), _record()]) == 1
        assert [p["model_version"] for p in store.predictions_by_task()[1]] == ["old"]
    finally:
        store.close()


@pytest.mark.parametrize(
    "url",
    ["nodb://x", "postgresql+psycopg://u:hidden-pw@127.0.0.1:1/db", "sqlite:////no/such/dir/x.db"],
)
def test_a_store_that_cannot_be_opened_is_named_without_its_password(url: str) -> None:
    with pytest.raises(StoreUnavailable, match="VARCO_DATABASE_URL=") as refused:
        FeedbackStore(url)
    assert "hidden-pw" not in str(refused.value)


def test_serve_with_a_wrong_database_url_says_so_before_loading_the_model(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "varco_labeler.cli", "serve", "--model", str(tmp_path / "none")],
        env={"VARCO_DATABASE_URL": "postgresql+psycopg://u:hidden-pw@127.0.0.1:1/db", "PATH": ""},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "VARCO_DATABASE_URL=postgresql+psycopg://u:***@127.0.0.1:1/db" in done.stderr
    assert "Traceback" not in done.stderr and "hidden-pw" not in done.stdout + done.stderr
