"""The feedback store's Alembic migrations, on SQLite and on the local PostgreSQL: a store made by
the previous release (commit e4a277f, no ``alembic_version``) opens with every row kept, a fresh
database is built at head, the head equals the ORM models, and a newer release's store is refused
in one sentence."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from varco_labeler.feedback.store import (
    SCHEMA_REVISION,
    Base,
    FeedbackStore,
    PredictionRecord,
    SchemaError,
    alembic_config,
)

# The previous release's tables exactly as its ``create_all`` made them (commit e4a277f),
# compiled for each dialect: {id} a Label Studio id, {serial} an auto-incremented one.
PREVIOUS_RELEASE_DDL = [
    "CREATE TABLE feedback_annotations ( id {id} NOT NULL, task_id BIGINT, project INTEGER, "
    "result JSON NOT NULL, prediction JSON, was_cancelled BOOLEAN NOT NULL, ground_truth BOOLEAN "
    "NOT NULL, completed_by INTEGER, lead_time FLOAT, created_at {ts}, updated_at {ts} NOT NULL, "
    "deleted BOOLEAN NOT NULL, PRIMARY KEY (id) )",
    "CREATE INDEX ix_feedback_annotations_task_id ON feedback_annotations (task_id)",
    "CREATE TABLE feedback_events ( id {serial} NOT NULL, action VARCHAR(64) NOT NULL, project "
    "INTEGER, annotation_ids JSON, body JSON, received_at {ts} NOT NULL, PRIMARY KEY (id) )",
    "CREATE INDEX ix_feedback_events_action ON feedback_events (action)",
    "CREATE TABLE feedback_predictions ( id {serial} NOT NULL, task_id BIGINT, project INTEGER, "
    "image TEXT NOT NULL, width INTEGER, height INTEGER, prompt TEXT NOT NULL, task_kind "
    "VARCHAR(32) NOT NULL, raw TEXT NOT NULL, regions JSON NOT NULL, result JSON NOT NULL, "
    "model_version VARCHAR(256) NOT NULL, scores JSON, score FLOAT, created_at {ts} NOT NULL, "
    "PRIMARY KEY (id) )",
    "CREATE INDEX ix_feedback_predictions_task ON feedback_predictions (task_id, created_at)",
    "CREATE TABLE feedback_projects ( id {id} NOT NULL, title VARCHAR(512), label_config TEXT, "
    "updated_at {ts} NOT NULL, PRIMARY KEY (id) )",
    "CREATE TABLE feedback_tasks ( id {id} NOT NULL, project INTEGER, data JSON NOT NULL, "
    "updated_at {ts} NOT NULL, PRIMARY KEY (id) )",
    "CREATE INDEX ix_feedback_tasks_project ON feedback_tasks (project)",
]
TYPES = {
    "sqlite": {"id": "INTEGER", "serial": "INTEGER", "ts": "DATETIME"},
    "postgresql": {"id": "BIGINT", "serial": "BIGSERIAL", "ts": "TIMESTAMP WITHOUT TIME ZONE"},
}

WHEN = datetime(2026, 1, 2, 3, 4, 5)
# One row per table, as the previous release wrote them (ids as big as Label Studio's get).
OLD_ROWS: dict[str, list[dict[str, Any]]] = {
    "feedback_projects": [
        {"id": 3, "title": "Receipts", "label_config": "<View/>", "updated_at": WHEN}
    ],
    "feedback_tasks": [
        {"id": 2**40, "project": 3, "data": {"image": "/data/upload/3/a.png"}, "updated_at": WHEN}
    ],
    "feedback_predictions": [
        {
            "id": 1,
            "task_id": 2**40,
            "project": 3,
            "image": "/data/upload/3/a.png",
            "width": 640,
            "height": 480,
            "prompt": "<ocr>",
            "task_kind": "ocr",
            "raw": "<char>HI</char><bbox>0.1, 0.1, 0.2, 0.2</bbox>",
            "regions": [{"box": [0.1, 0.1, 0.2, 0.2], "text": "HI"}],
            "result": [{"type": "textarea", "value": {"text": ["HI"]}}],
            "model_version": "old-v1",
            "scores": [0.9, None],
            "score": 0.9,
            "created_at": WHEN,
        }
    ],
    "feedback_annotations": [
        {
            "id": 2**35,
            "task_id": 2**40,
            "project": 3,
            "result": [{"type": "textarea", "value": {"text": ["HELLO"]}}],
            "prediction": {"result": [], "model_version": "old-v1"},
            "was_cancelled": False,
            "ground_truth": True,
            "completed_by": 1,
            "lead_time": 12.5,
            "created_at": WHEN,
            "updated_at": WHEN,
            "deleted": False,
        }
    ],
    "feedback_events": [
        {
            "id": 1,
            "action": "ANNOTATION_CREATED",
            "project": 3,
            "annotation_ids": [2**35],
            "body": None,
            "received_at": WHEN,
        },
        {
            "id": 2,
            "action": "START_TRAINING",
            "project": 3,
            "annotation_ids": None,
            "body": {"action": "START_TRAINING", "project": {"id": 3}},
            "received_at": WHEN,
        },
    ],
}


@pytest.fixture(params=["sqlite", "postgresql"])
def databases(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], str]]:
    """Makes empty databases: SQLite files, or fresh schemas of the local PostgreSQL (the
    ``search_path`` puts every table, ``alembic_version`` too, in them), dropped afterwards."""
    if request.param == "sqlite":
        names = iter(range(100))
        yield lambda: f"sqlite:///{tmp_path / f'feedback-{next(names)}.sqlite3'}"
        return
    new_schema = request.getfixturevalue("postgres_schemas")
    yield lambda: new_schema("migrations")


def previous_release(url: str, rows: dict[str, list[dict[str, Any]]] = OLD_ROWS) -> None:
    """A store as the previous release left it: its tables, these rows, no alembic_version."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            for statement in PREVIOUS_RELEASE_DDL:
                conn.exec_driver_sql(statement.format(**TYPES[engine.dialect.name]))
        tables = reflect(engine)
        with engine.begin() as conn:
            for name, values in rows.items():
                conn.execute(tables[name].insert(), values)
            if engine.dialect.name == "postgresql":  # explicit ids leave the sequences behind
                for name in ("feedback_predictions", "feedback_events"):
                    conn.exec_driver_sql(
                        f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), "
                        f"(SELECT max(id) FROM {name}))"
                    )
    finally:
        engine.dispose()


def reflect(engine: sa.Engine) -> dict[str, sa.Table]:
    metadata = sa.MetaData()
    metadata.reflect(engine)
    return dict(metadata.tables)


def table_rows(engine: sa.Engine) -> dict[str, list[dict[str, Any]]]:
    with engine.connect() as conn:
        return {
            name: [
                dict(row._mapping)
                for row in conn.execute(table.select().order_by(*table.primary_key))
            ]
            for name, table in reflect(engine).items()
            if name.startswith("feedback_")
        }


def version(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalars())


def differences(engine: sa.Engine) -> list[Any]:
    """What autogenerate would change to make the database match the ORM models."""
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return [
            diff
            for diff in compare_metadata(context, Base.metadata)
            if not (diff[0] == "remove_table" and diff[1].name == "alembic_version")
        ]


def describe(engine: sa.Engine) -> dict[str, Any]:
    """Columns (name, type, nullable, default), primary keys and indexes of every table."""
    inspector = sa.inspect(engine)
    return {
        name: (
            [
                (c["name"], str(c["type"]), c["nullable"], str(c.get("default")))
                for c in inspector.get_columns(name)
            ],
            inspector.get_pk_constraint(name)["constrained_columns"],
            sorted(
                (i["name"], i["column_names"], i["unique"]) for i in inspector.get_indexes(name)
            ),
        )
        for name in sorted(inspector.get_table_names())
        if name.startswith("feedback_")
    }


def record(**changes: Any) -> PredictionRecord:
    fields: dict[str, Any] = dict(
        task_id=2**40,
        project=3,
        image="/data/upload/3/a.png",
        prompt="<ocr>",
        task_kind="ocr",
        raw="<char>HI</char>",
        result=[],
        model_version="new-v2",
    )
    return PredictionRecord(**(fields | changes))


def test_the_schema_revision_is_the_head_of_the_migrations() -> None:
    script = ScriptDirectory.from_config(alembic_config())
    assert script.get_heads() == [SCHEMA_REVISION]
    assert [r.revision for r in script.walk_revisions()] == ["0004", "0003", "0002", "0001"]


def test_revision_0001_is_the_previous_release_schema(databases: Callable[[], str]) -> None:
    old, migrated = sa.create_engine(databases()), sa.create_engine(databases())
    try:
        previous_release(old.url.render_as_string(hide_password=False), rows={})
        with migrated.begin() as conn:
            command.upgrade(alembic_config(connection=conn), "0001")
        assert describe(migrated) == describe(old)
        assert len(describe(old)) == 5
    finally:
        old.dispose()
        migrated.dispose()


def test_a_previous_release_store_opens_with_every_row_kept(
    databases: Callable[[], str],
) -> None:
    url = databases()
    previous_release(url)
    store = FeedbackStore(url)
    try:
        assert version(store.engine) == [SCHEMA_REVISION]
        assert differences(store.engine) == []
        expected = {name: [dict(row) for row in rows] for name, rows in OLD_ROWS.items()}
        for prediction in expected["feedback_predictions"]:
            del prediction["scores"]
            prediction["fingerprint"] = prediction["label_studio_id"] = None
        for annotation in expected["feedback_annotations"]:
            annotation["parent_prediction"] = None
        for task in expected["feedback_tasks"]:
            task["drafts"] = None
        for event in expected["feedback_events"]:
            event["state"] = "applied"  # received before notifications were read back
        expected["feedback_sync"] = []
        for loop_table in ("feedback_loop_rounds", "feedback_loop_split", "feedback_loop_control"):
            expected[loop_table] = []
        assert table_rows(store.engine) == expected

        # The store reads the old rows...
        (task,) = store.tasks()
        assert task.id == 2**40 and task.label_config == "<View/>"
        assert [a["result"] for a in task.annotations] == [
            OLD_ROWS["feedback_annotations"][0]["result"]
        ]
        assert [p["model_version"] for p in task.predictions] == ["old-v1"]
        # ...and records new ones once, next to the old one (whose fingerprint is NULL).
        assert store.record_predictions([record(), record()]) == 1
        assert store.record_predictions([record()]) == 0
        assert store.record_predictions([record(model_version="new-v3")]) == 1
        by_task = store.predictions_by_task()
        assert [p["model_version"] for p in by_task[2**40]] == ["old-v1", "new-v2", "new-v3"]
        store.append({"action": "START_TRAINING", "project": {"id": 3, "title": "Receipts"}})
        assert store.counts()["events"] == 3
    finally:
        store.close()


def test_a_fresh_database_is_built_at_head_and_a_second_open_runs_nothing(
    databases: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = databases()
    store = FeedbackStore(url)
    try:
        assert version(store.engine) == [SCHEMA_REVISION]
        assert differences(store.engine) == []
        assert store.record_predictions([record(), record()]) == 1
        schema = describe(store.engine)
    finally:
        store.close()

    def refuse(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("a store at head ran Alembic")

    monkeypatch.setattr(command, "upgrade", refuse)
    monkeypatch.setattr(command, "stamp", refuse)
    again = FeedbackStore(url)
    try:
        assert version(again.engine) == [SCHEMA_REVISION]
        assert describe(again.engine) == schema
        assert again.record_predictions([record()]) == 0
        assert again.counts()["predictions"] == 1
    finally:
        again.close()


def test_upgrading_a_store_at_head_changes_nothing(databases: Callable[[], str]) -> None:
    store = FeedbackStore(databases())
    try:
        schema = describe(store.engine)
        with store.engine.begin() as conn:
            command.upgrade(alembic_config(connection=conn), "head")
        assert describe(store.engine) == schema
        assert version(store.engine) == [SCHEMA_REVISION]
    finally:
        store.close()


def test_stores_opened_at_once_on_an_empty_database_all_open(
    databases: Callable[[], str],
) -> None:
    """Two processes starting together (the backend and prelabel): one migrates, the others
    wait and find the schema at head."""
    url = databases()
    errors: list[BaseException] = []

    def open_store() -> None:
        try:
            FeedbackStore(url).close()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    engine = sa.create_engine(url)
    try:
        assert version(engine) == [SCHEMA_REVISION]
        assert differences(engine) == []
    finally:
        engine.dispose()


def test_a_store_migrated_by_a_newer_release_is_refused_in_one_sentence(
    databases: Callable[[], str],
) -> None:
    url = databases()
    FeedbackStore(url).close()
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0099_future'")
    finally:
        engine.dispose()
    with pytest.raises(SchemaError, match=r"revision '0099_future'.*newer release") as raised:
        FeedbackStore(url)
    assert raised.value.__cause__ is None and raised.value.__suppress_context__
    assert SCHEMA_REVISION in str(raised.value)


def test_a_store_a_development_build_altered_is_adopted(tmp_path: Path) -> None:
    """Between the release and migrations, the store ALTERed ``fingerprint`` and its unique index
    into old stores (``scores`` stayed): such a store opens too, its fingerprints kept."""
    url = f"sqlite:///{tmp_path / 'dev.sqlite3'}"
    previous_release(url)
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "ALTER TABLE feedback_predictions ADD COLUMN fingerprint VARCHAR(64)"
            )
            conn.exec_driver_sql(
                "CREATE UNIQUE INDEX ix_feedback_predictions_fingerprint "
                "ON feedback_predictions (fingerprint)"
            )
            conn.exec_driver_sql("UPDATE feedback_predictions SET fingerprint = 'abc'")
    finally:
        engine.dispose()
    store = FeedbackStore(url)
    try:
        assert version(store.engine) == [SCHEMA_REVISION]
        assert differences(store.engine) == []
        (row,) = table_rows(store.engine)["feedback_predictions"]
        assert row["fingerprint"] == "abc" and row["model_version"] == "old-v1"
        assert store.record_predictions([record(), record()]) == 1
    finally:
        store.close()


def test_revision_0004_adds_the_loop_tables_to_a_0003_store_and_goes_back(
    databases: Callable[[], str],
) -> None:
    """A store at 0003 with rows gains the loop's empty tables, every row kept; downgrading
    removes just them."""
    url = databases()
    previous_release(url)
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            command.upgrade(alembic_config(connection=conn), "0003")
        before = table_rows(engine)
        store = FeedbackStore(url)  # migrates to head
        try:
            assert version(store.engine) == [SCHEMA_REVISION] == ["0004"]
            assert differences(store.engine) == []
            after = table_rows(store.engine)
            loop_tables = {"feedback_loop_rounds", "feedback_loop_split", "feedback_loop_control"}
            assert {name: after[name] for name in loop_tables} == {name: [] for name in loop_tables}
            assert {k: v for k, v in after.items() if k not in loop_tables} == before
        finally:
            store.close()
        with engine.begin() as conn:
            command.downgrade(alembic_config(connection=conn), "0003")
        assert table_rows(engine) == before
        assert version(engine) == ["0003"]
    finally:
        engine.dispose()
