"""The feedback store: what the model predicted and what people made of it, in SQL.

SQLite under MODEL_DIR by default, PostgreSQL (or any SQLAlchemy URL) for a team. Label Studio
gives a webhook 1 s and never retries it, so :meth:`FeedbackStore.append` does one short
transaction of upserts and nothing else; pairing and exports read the tables later.

Annotation webhooks are applied as upserts keyed by Label Studio's annotation id, guarded by the
annotation's ``updated_at``: a redelivered or late, older version never overwrites a newer one,
and a deletion is sticky.

The schema is migrated with Alembic when a store opens (``migrations/``, packaged with the code;
no alembic.ini): the ORM models below describe the head revision.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Text,
    create_engine,
    event,
    func,
    inspect,
    select,
    update,
)
from sqlalchemy import column as sql_column
from sqlalchemy import table as sql_table
from sqlalchemy import text as sql_text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger(__name__)

DEFAULT_FILE = "feedback.sqlite3"
ANNOTATION_ACTIONS = frozenset({"ANNOTATION_CREATED", "ANNOTATION_UPDATED"})
DELETE_ACTION = "ANNOTATIONS_DELETED"

MIGRATIONS = Path(__file__).with_name("migrations")
# The head of migrations/versions (a test checks it): a store already there opens without
# loading Alembic at all.
SCHEMA_REVISION = "0002"
# The revision that describes the last release without migrations, and its tables.
_UNVERSIONED_REVISION = "0001"
_UNVERSIONED_TABLES = frozenset(
    {
        "feedback_projects",
        "feedback_tasks",
        "feedback_predictions",
        "feedback_annotations",
        "feedback_events",
    }
)
_VERSION_TABLE = "alembic_version"


# Label Studio ids are 64-bit in PostgreSQL; SQLite auto-increments only INTEGER primary keys.
Id = BigInteger().with_variant(Integer, "sqlite")


class Base(DeclarativeBase):
    pass


class ProjectRow(Base):
    """A Label Studio project as last seen in a webhook: its label config decides the task kind."""

    __tablename__ = "feedback_projects"
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=False)
    title: Mapped[str | None] = mapped_column(String(512))
    label_config: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime)


class TaskRow(Base):
    """A task's data (its image reference) as last seen."""

    __tablename__ = "feedback_tasks"
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=False)
    project: Mapped[int | None] = mapped_column(Integer, index=True)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(DateTime)


class PredictionRow(Base):
    __tablename__ = "feedback_predictions"
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    task_id: Mapped[int | None] = mapped_column(BigInteger)
    project: Mapped[int | None] = mapped_column(Integer)
    image: Mapped[str] = mapped_column(Text)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    prompt: Mapped[str] = mapped_column(Text)
    task_kind: Mapped[str] = mapped_column(String(32))
    raw: Mapped[str] = mapped_column(Text)
    regions: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    result: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    model_version: Mapped[str] = mapped_column(String(256))
    score: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    # What makes a prediction the same one (see PredictionRecord.fingerprint): recorded once.
    fingerprint: Mapped[str | None] = mapped_column(String(64))
    __table_args__ = (
        Index("ix_feedback_predictions_task", "task_id", "created_at"),
        Index("ix_feedback_predictions_fingerprint", "fingerprint", unique=True),
    )


class AnnotationRow(Base):
    """The latest version of one Label Studio annotation (its id is Label Studio's)."""

    __tablename__ = "feedback_annotations"
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=False)
    task_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    project: Mapped[int | None] = mapped_column(Integer)
    result: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    # The prediction the annotator started from, when Label Studio sent it in full.
    prediction: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    was_cancelled: Mapped[bool] = mapped_column(Boolean, default=False)
    ground_truth: Mapped[bool] = mapped_column(Boolean, default=False)
    completed_by: Mapped[int | None] = mapped_column(Integer)
    lead_time: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime | None] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)


class EventRow(Base):
    """Every webhook received; bodies are kept only for actions the store does not interpret."""

    __tablename__ = "feedback_events"
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    action: Mapped[str] = mapped_column(String(64), index=True)
    project: Mapped[int | None] = mapped_column(Integer)
    annotation_ids: Mapped[list[int] | None] = mapped_column(JSON)
    body: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    received_at: Mapped[datetime] = mapped_column(DateTime)


@dataclass(frozen=True)
class PredictionRecord:
    """One prediction as the model made it, whatever path made it: the raw text, the regions
    after the checkpoint's post-processing, and the Label Studio result they became.

    Plain JSON fields: a prelabel job hands these back through the queue to the process that
    records them, so workers need no database.
    """

    task_id: int | None
    project: int | str | None
    image: str
    prompt: str
    task_kind: str
    raw: str
    result: list[dict[str, Any]]
    model_version: str
    regions: list[dict[str, Any]] = field(default_factory=list)
    width: int | None = None
    height: int | None = None
    score: float | None = None
    # When the prediction was made (ISO), if not now: a prediction read back from elsewhere.
    created_at: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def fingerprint(self) -> str:
        """Same task (or image), prompt, model version and answer: the same prediction."""
        parts = [str(self.project), str(self.task_id), self.image, self.prompt]
        parts += [self.model_version, self.raw]
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()

    def row(self) -> dict[str, Any]:
        return {
            **self.to_json(),
            "project": _project_id(self.project),
            "task_kind": str(self.task_kind),
            "fingerprint": self.fingerprint,
            "created_at": parse_timestamp(self.created_at) or _now(),
        }


@dataclass(frozen=True)
class StoredTask:
    """A task with its annotations and predictions, in Label Studio's export shape."""

    id: int
    project: int | None
    data: dict[str, Any]
    annotations: list[dict[str, Any]]
    predictions: list[dict[str, Any]]
    label_config: str | None


class FeedbackStore:
    """Predictions and annotations in SQL. ``url``: a SQLAlchemy URL, or None for SQLite in
    ``model_dir``."""

    def __init__(self, url: str | None = None, model_dir: Path | None = None) -> None:
        if url is None:
            directory = Path(model_dir or ".")
            directory.mkdir(parents=True, exist_ok=True)
            url = f"sqlite:///{directory / DEFAULT_FILE}"
        self.url = url
        self.engine: Engine = create_engine(url, pool_pre_ping=not url.startswith("sqlite"))
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
            # SQLite allows one writer: serialise ours instead of failing with "database locked".
            self._write_lock: threading.Lock | None = threading.Lock()
        else:
            self._write_lock = None
        migrate(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    # -- writing ---------------------------------------------------------------------------
    def append(self, event_body: Mapping[str, Any]) -> None:
        """Apply one Label Studio webhook body. Same signature as the old ``EventLog.append``."""
        action = str(event_body.get("action") or "")
        now = _now()
        project = event_body.get("project")
        project_id = _int(project.get("id")) if isinstance(project, Mapping) else _int(project)
        with self._transaction() as conn:
            if isinstance(project, Mapping) and project_id is not None:
                self._upsert_project(conn, project_id, project, now)
            annotation_ids: list[int] | None = None
            body: dict[str, Any] | None = None
            annotation = event_body.get("annotation")
            has_id = isinstance(annotation, Mapping) and _int(annotation.get("id")) is not None
            if action in ANNOTATION_ACTIONS and has_id:
                task = event_body.get("task")
                if isinstance(task, Mapping) and _int(task.get("id")) is not None:
                    self._upsert_task(conn, task, project_id, now)
                annotation_ids = [self._upsert_annotation(conn, annotation, project_id, now)]
            elif action == DELETE_ACTION:
                annotation_ids = [
                    i
                    for i in (_int(a.get("id")) for a in event_body.get("annotations") or [])
                    if i is not None
                ]
                if annotation_ids:
                    conn.execute(
                        update(AnnotationRow)
                        .where(AnnotationRow.id.in_(annotation_ids))
                        .values(deleted=True)
                    )
            else:  # START_TRAINING, PROJECT_UPDATED, ...: kept as they came, for the record
                if action in ANNOTATION_ACTIONS:
                    log.warning("%s webhook without an annotation id: kept as it came", action)
                body = _without_label_config(event_body)
            conn.execute(
                EventRow.__table__.insert().values(
                    action=action,
                    project=project_id,
                    annotation_ids=annotation_ids,
                    body=body,
                    received_at=now,
                )
            )

    def record_predictions(self, records: Iterable[PredictionRecord]) -> int:
        """Keep predictions as made: raw model text, regions and the Label Studio result.

        Idempotent: a record already kept (the same fingerprint: a task served again from the
        cache, a retried job, a rerun) is not kept twice. Returns how many rows were new.
        """
        rows = [record.row() for record in records]
        if not rows:
            return 0
        with self._transaction() as conn:
            statement = (
                self._insert(PredictionRow.__table__)
                .on_conflict_do_nothing(index_elements=["fingerprint"])
                .returning(PredictionRow.id)  # rows skipped as already kept return nothing
            )
            return len(conn.execute(statement, rows).all())

    def record_prediction(self, **fields: Any) -> None:
        """One :class:`PredictionRecord` given by its fields."""
        self.record_predictions([PredictionRecord(**fields)])

    # -- reading ---------------------------------------------------------------------------
    def tasks(self, project: int | None = None) -> list[StoredTask]:
        """Annotated tasks with their annotations (deleted ones left out) and predictions, in
        Label Studio's export shape, ordered by task id."""
        with self.engine.connect() as conn:
            projects = {row.id: row.label_config for row in conn.execute(select(ProjectRow))}
            tasks = select(TaskRow).order_by(TaskRow.id)
            annotations = select(AnnotationRow).where(AnnotationRow.deleted.is_(False))
            predictions = select(PredictionRow)
            if project is not None:
                tasks = tasks.where(TaskRow.project == project)
                annotations = annotations.where(AnnotationRow.project == project)
                predictions = predictions.where(PredictionRow.project == project)
            by_task: dict[int, list[dict[str, Any]]] = {}
            for row in conn.execute(annotations.order_by(AnnotationRow.id)):
                by_task.setdefault(row.task_id, []).append(_annotation_json(row))
            predicted: dict[int, list[dict[str, Any]]] = {}
            for row in conn.execute(
                predictions.order_by(PredictionRow.created_at, PredictionRow.id)
            ):
                predicted.setdefault(row.task_id, []).append(_prediction_json(row))
            return [
                StoredTask(
                    id=task.id,
                    project=task.project,
                    data=task.data,
                    annotations=by_task.get(task.id, []),
                    predictions=predicted.get(task.id, []),
                    label_config=projects.get(task.project),
                )
                for task in conn.execute(tasks)
            ]

    def predictions(self) -> list[dict[str, Any]]:
        """Every recorded prediction in Label Studio's shape, oldest first, with or without a
        task (a folder pre-labelled for an import file has none yet)."""
        with self.engine.connect() as conn:
            query = select(PredictionRow).order_by(PredictionRow.created_at, PredictionRow.id)
            return [_prediction_json(row) for row in conn.execute(query)]

    def predictions_by_task(self) -> dict[int, list[dict[str, Any]]]:
        """Every recorded prediction of a task, by task id, oldest first."""
        by_task: dict[int, list[dict[str, Any]]] = {}
        for prediction in self.predictions():
            if prediction["task"] is not None:
                by_task.setdefault(prediction["task"], []).append(prediction)
        return by_task

    def label_config(self, project: int) -> str | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(ProjectRow.label_config).where(ProjectRow.id == project))
            return row.scalar_one_or_none()

    def counts(self) -> dict[str, int]:
        """Rows per table, and annotations that exports use (not deleted, not cancelled)."""
        with self.engine.connect() as conn:

            def count(*where: Any, table: Any = AnnotationRow) -> int:
                return int(
                    conn.execute(select(func.count()).select_from(table).where(*where)).one()[0]
                )

            return {
                "projects": count(table=ProjectRow),
                "tasks": count(table=TaskRow),
                "predictions": count(table=PredictionRow),
                "annotations": count(),
                "usable_annotations": count(
                    AnnotationRow.deleted.is_(False), AnnotationRow.was_cancelled.is_(False)
                ),
                "deleted_annotations": count(AnnotationRow.deleted.is_(True)),
                "cancelled_annotations": count(AnnotationRow.was_cancelled.is_(True)),
                "events": count(table=EventRow),
            }

    # -- internals -------------------------------------------------------------------------
    def _transaction(self) -> _Transaction:
        return _Transaction(self.engine, self._write_lock)

    def _insert(self, table: Any) -> Any:
        dialect = self.engine.dialect.name
        if dialect == "postgresql":
            return postgresql.insert(table)
        if dialect == "sqlite":
            return sqlite.insert(table)
        raise NotImplementedError(
            f"the feedback store supports SQLite and PostgreSQL, not {dialect}"
        )

    def _upsert_project(
        self, conn: Connection, project_id: int, project: Mapping[str, Any], now: datetime
    ) -> None:
        values = {"title": project.get("title"), "label_config": project.get("label_config")}
        values = {k: v for k, v in values.items() if v is not None}
        statement = self._insert(ProjectRow.__table__).values(
            id=project_id, updated_at=now, **values
        )
        conn.execute(
            statement.on_conflict_do_update(
                index_elements=["id"], set_={"updated_at": now, **values}
            )
        )

    def _upsert_task(
        self, conn: Connection, task: Mapping[str, Any], project_id: int | None, now: datetime
    ) -> None:
        values = {
            "project": _int(task.get("project")) or project_id,
            "data": dict(task.get("data") or {}),
            "updated_at": now,
        }
        statement = self._insert(TaskRow.__table__).values(id=_int(task["id"]), **values)
        conn.execute(statement.on_conflict_do_update(index_elements=["id"], set_=values))

    def _upsert_annotation(
        self,
        conn: Connection,
        annotation: Mapping[str, Any],
        project_id: int | None,
        now: datetime,
    ) -> int:
        annotation_id = int(annotation["id"])
        prediction = annotation.get("prediction")
        values = {
            "task_id": _int(annotation.get("task")),
            "project": _int(annotation.get("project")) or project_id,
            "result": list(annotation.get("result") or []),
            "prediction": dict(prediction)
            if isinstance(prediction, Mapping) and isinstance(prediction.get("result"), list)
            else None,
            "was_cancelled": bool(annotation.get("was_cancelled")),
            "ground_truth": bool(annotation.get("ground_truth")),
            "completed_by": _int(annotation.get("completed_by")),
            "lead_time": annotation.get("lead_time"),
            "created_at": parse_timestamp(annotation.get("created_at")),
            "updated_at": parse_timestamp(annotation.get("updated_at")) or now,
        }
        table = AnnotationRow.__table__
        statement = self._insert(table).values(id=annotation_id, deleted=False, **values)
        # Only a version at least as new replaces the stored one; a deletion stays.
        conn.execute(
            statement.on_conflict_do_update(
                index_elements=["id"],
                set_=values,
                where=(table.c.updated_at <= statement.excluded.updated_at)
                & table.c.deleted.is_(False),
            )
        )
        return annotation_id


class SchemaError(RuntimeError):
    """The store's schema is not one this release can migrate (e.g. a newer release's)."""


class _Transaction:
    """``with`` block: one connection, one transaction, and for SQLite the process's write lock."""

    def __init__(self, engine: Engine, lock: threading.Lock | None) -> None:
        self.engine, self.lock = engine, lock

    def __enter__(self) -> Connection:
        if self.lock is not None:
            self.lock.acquire()
        try:
            self._context = self.engine.begin()
            return self._context.__enter__()
        except BaseException:
            if self.lock is not None:
                self.lock.release()
            raise

    def __exit__(self, *exc: object) -> None:
        try:
            self._context.__exit__(*exc)
        finally:
            if self.lock is not None:
                self.lock.release()


def migrate(engine: Engine) -> None:
    """Bring the store's schema to the head revision (:data:`SCHEMA_REVISION`).

    A store already there costs one query and never loads Alembic. Otherwise Alembic runs, in
    one transaction that a second process opening the store at the same time waits for (SQLite:
    ``BEGIN IMMEDIATE``; PostgreSQL: an advisory lock per schema). A store made before migrations
    (the tables, no ``alembic_version``) is stamped at the revision that describes it first; an
    empty database is built from nothing. Raises :class:`SchemaError` for a revision this release
    does not know (a newer release migrated the store).
    """
    with engine.connect() as conn:
        if _revisions(conn) == {SCHEMA_REVISION}:
            return
    alembic_log = logging.getLogger("alembic")
    if alembic_log.level == logging.NOTSET:  # its INFO lines (plugins, DDL) are noise to users
        alembic_log.setLevel(logging.WARNING)
    with _migration_transaction(engine) as conn:
        _upgrade(conn)


def alembic_config(url: str | None = None, *, connection: Connection | None = None) -> Config:
    """Alembic's configuration for the store's migrations, without an alembic.ini: the
    connection to migrate (the store's way), or a URL (for ``alembic.command`` by hand)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _revisions(conn: Connection) -> set[str]:
    """The revisions ``alembic_version`` holds; empty when there is no such table."""
    if not inspect(conn).has_table(_VERSION_TABLE):
        return set()
    return set(
        conn.execute(
            select(sql_column("version_num")).select_from(sql_table(_VERSION_TABLE))
        ).scalars()
    )


@contextmanager
def _migration_transaction(engine: Engine) -> Iterator[Connection]:
    """One connection in one transaction that holds the schema for itself, DDL included."""
    with engine.connect() as conn:
        if engine.dialect.name != "sqlite":
            with conn.begin():
                if engine.dialect.name == "postgresql":
                    key = "varco_labeler.feedback migrations: "
                    conn.execute(
                        sql_text(
                            "SELECT pg_advisory_xact_lock(hashtext(:key || current_schema()))"
                        ),
                        {"key": key},
                    )
                yield conn
            return
        # pysqlite begins a transaction before DML only, so DDL would commit one statement at a
        # time: take transactions over for this connection, and the write lock up front.
        driver = conn.connection.driver_connection
        assert driver is not None
        level = driver.isolation_level
        driver.isolation_level = None
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.rollback()
                raise
            conn.commit()
        finally:
            driver.isolation_level = level


def _upgrade(conn: Connection) -> None:
    from alembic import command
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    config = alembic_config(connection=conn)
    current = _revisions(conn)  # again, now that no one else migrates
    if current == {SCHEMA_REVISION}:
        return
    script = ScriptDirectory.from_config(config)
    for revision in sorted(current):
        try:
            script.get_revision(revision)
        except CommandError:
            where = conn.engine.url.render_as_string(hide_password=True)
            raise SchemaError(
                f"the feedback store at {where} has schema revision {revision!r}, which this "
                f"release of varco-labeler does not know (its newest is {SCHEMA_REVISION!r}): a "
                "newer release migrated it. Run that release, or point this one at another store "
                "(VARCO_DATABASE_URL, MODEL_DIR)."
            ) from None
    if not current:
        tables = set(inspect(conn).get_table_names()) & _UNVERSIONED_TABLES
        if tables == _UNVERSIONED_TABLES:
            log.info("feedback store made before migrations: stamped at %s", _UNVERSIONED_REVISION)
            command.stamp(config, _UNVERSIONED_REVISION)
        elif tables:
            log.info("feedback store with only %s: creating the rest", ", ".join(sorted(tables)))
    command.upgrade(config, "head")
    log.info("feedback store schema at %s", SCHEMA_REVISION)


def _annotation_json(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "task": row.task_id,
        "project": row.project,
        "result": row.result,
        "prediction": row.prediction or {},
        "was_cancelled": row.was_cancelled,
        "ground_truth": row.ground_truth,
        "completed_by": row.completed_by,
        "lead_time": row.lead_time,
        "created_at": _iso(row.created_at),
        "updated_at": _iso(row.updated_at),
    }


def _prediction_json(row: Any) -> dict[str, Any]:
    """A stored prediction in Label Studio's shape, plus what only the backend knew."""
    return {
        "result": row.result,
        "score": row.score,
        "model_version": row.model_version,
        "created_at": _iso(row.created_at),
        "task": row.task_id,
        "project": row.project,
        "image": row.image,
        "raw": row.raw,
        "prompt": row.prompt,
        "task_kind": row.task_kind,
        "regions": row.regions,
        "width": row.width,
        "height": row.height,
    }


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    # WAL lets exports read while the webhook writes; NORMAL sync is durable across a process crash
    # and keeps a webhook write at a few milliseconds.
    cursor = connection.cursor()
    cursor.execute("PRAGMA busy_timeout=5000")  # first: switching to WAL waits for others too
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _without_label_config(body: Mapping[str, Any]) -> dict[str, Any]:
    """The event body without the project's label config, which the projects table keeps."""
    out = dict(body)
    if isinstance(out.get("project"), Mapping):
        out["project"] = {
            k: v
            for k, v in out["project"].items()
            if k not in ("label_config", "parsed_label_config")
        }
    return out


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def parse_timestamp(value: Any) -> datetime | None:
    """Label Studio's ISO timestamps ("...Z"), ours ("+00:00") or seconds since the epoch (older
    files), as naive UTC, comparable in every database; None for anything else."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value, UTC).replace(tzinfo=None)
        except (OverflowError, OSError, ValueError):
            return None
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    return parsed


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() + "Z" if value else None


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _project_id(project: int | str | None) -> int | None:
    """Label Studio sends the project as "ID.TIMESTAMP" in /setup and /predict."""
    if project is None:
        return None
    return _int(str(project).split(".")[0])
