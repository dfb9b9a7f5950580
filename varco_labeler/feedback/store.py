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
from dataclasses import dataclass, field
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
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from varco_labeler.labelstudio.timestamps import iso as _iso
from varco_labeler.labelstudio.timestamps import parse_timestamp
from varco_labeler.settings import reveal

if TYPE_CHECKING:
    from alembic.config import Config
    from pydantic import SecretStr

log = logging.getLogger(__name__)

DEFAULT_FILE = "feedback.sqlite3"
ANNOTATION_ACTIONS = frozenset({"ANNOTATION_CREATED", "ANNOTATION_UPDATED"})
DELETE_ACTION = "ANNOTATIONS_DELETED"

MIGRATIONS = Path(__file__).with_name("migrations")
# The head of migrations/versions (a test checks it): a store already there opens without
# loading Alembic at all.
SCHEMA_REVISION = "0004"
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
    # Unsubmitted work Label Studio held for the task ({id, annotation, user, updated_at} each)
    # when it was last read in full: never training data, but it says the task is in hand.
    drafts: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)


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
    # Label Studio's id for this prediction once read back (what ``parent_prediction`` names).
    label_studio_id: Mapped[int | None] = mapped_column(BigInteger)
    __table_args__ = (
        Index("ix_feedback_predictions_task", "task_id", "created_at"),
        Index("ix_feedback_predictions_fingerprint", "fingerprint", unique=True),
        Index("ix_feedback_predictions_label_studio_id", "label_studio_id", unique=True),
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
    # Label Studio's id of that prediction (``parent_prediction``), when it keeps one.
    parent_prediction: Mapped[int | None] = mapped_column(BigInteger)
    was_cancelled: Mapped[bool] = mapped_column(Boolean, default=False)
    ground_truth: Mapped[bool] = mapped_column(Boolean, default=False)
    completed_by: Mapped[int | None] = mapped_column(Integer)
    lead_time: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime | None] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)


class EventRow(Base):
    """Every webhook received; bodies are kept only for actions the store does not interpret.

    An annotation event is a notification: it waits ``pending`` until what it names is read back
    from Label Studio, then says what came of it (:class:`EventState`).
    """

    __tablename__ = "feedback_events"
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    action: Mapped[str] = mapped_column(String(64), index=True)
    project: Mapped[int | None] = mapped_column(Integer)
    annotation_ids: Mapped[list[int] | None] = mapped_column(JSON)
    body: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    received_at: Mapped[datetime] = mapped_column(DateTime)
    state: Mapped[str] = mapped_column(
        String(16), default="applied", server_default="applied", index=True
    )


class SyncRow(Base):
    """Where ``sync`` got to in a project: tasks changed before ``cursor`` are in the store."""

    __tablename__ = "feedback_sync"
    project: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=False)
    cursor: Mapped[datetime | None] = mapped_column(DateTime)
    synced_at: Mapped[datetime | None] = mapped_column(DateTime)
    stats: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class LoopRoundRow(Base):
    """One active-learning round of a project (``kind`` ``round``), or a rollback (``rollback``),
    written step by step: ``state`` says how far it got, so a crashed round resumes there."""

    __tablename__ = "feedback_loop_rounds"
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    project: Mapped[int | None] = mapped_column(Integer)
    number: Mapped[int | None] = mapped_column(Integer)  # the round's number in its project
    kind: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    decision: Mapped[str | None] = mapped_column(String(32))
    started_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    # The newest correction the round counted (Label Studio's clock): the next round counts after.
    data_until: Mapped[datetime | None] = mapped_column(DateTime)
    serving_version: Mapped[str | None] = mapped_column(String(256))
    candidate_version: Mapped[str | None] = mapped_column(String(256))
    candidate_model: Mapped[str | None] = mapped_column(Text)
    serving_score: Mapped[float | None] = mapped_column(Float)
    candidate_score: Mapped[float | None] = mapped_column(Float)
    # Data counts, options, full scores, timings, the re-labelling's outcome.
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    __table_args__ = (
        Index("ix_feedback_loop_rounds_project_number", "project", "number", unique=True),
    )


class LoopSplitRow(Base):
    """Which side of the loop's split a corrected task fell on, once and for good."""

    __tablename__ = "feedback_loop_split"
    project: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=False)
    task_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    held_out: Mapped[bool] = mapped_column(Boolean)
    round: Mapped[int] = mapped_column(Integer)  # the round that assigned it


class LoopControlRow(Base):
    """Whether a project's loop may start new rounds."""

    __tablename__ = "feedback_loop_control"
    project: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=False)
    paused: Mapped[bool] = mapped_column(Boolean)
    changed_at: Mapped[datetime] = mapped_column(DateTime)
    reason: Mapped[str | None] = mapped_column(Text)


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
        # Shallow: the fields are plain JSON already; asdict's deep copy cost a worker about
        # 1 ms a record, between its GPU batches.
        return dict(vars(self))

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


class EventState:
    """What came of a webhook (``feedback_events.state``)."""

    PENDING = "pending"  # an annotation event not yet read back from Label Studio
    APPLIED = "applied"  # read back: the store holds what Label Studio holds
    NOT_IN_LABEL_STUDIO = "not_found"  # Label Studio has no such annotation: nothing kept
    UNKNOWN_PROJECT = "unknown_project"  # a project this backend was never set up for
    KEPT = "kept"  # not an annotation event: kept for the record


@dataclass(frozen=True)
class Notification:
    """A pending annotation event: which annotations to read back."""

    id: int
    action: str
    project: int | None
    annotation_ids: list[int]


@dataclass
class TaskChanges:
    """What applying one task changed: annotations added, updated, marked deleted, and
    Label Studio predictions new to the store."""

    added: int = 0
    updated: int = 0
    deleted: int = 0
    predictions: int = 0

    def __iadd__(self, other: TaskChanges) -> TaskChanges:
        self.added += other.added
        self.updated += other.updated
        self.deleted += other.deleted
        self.predictions += other.predictions
        return self


@dataclass
class TaskSummary:
    """How many submitted and skipped annotations and Label Studio predictions the store holds
    for a task."""

    annotations: int = 0
    cancelled: int = 0
    predictions: int = 0


@dataclass(frozen=True)
class SyncState:
    """Where ``sync`` got to in a project, and what its last finished run did."""

    cursor: datetime | None
    synced_at: datetime | None
    stats: dict[str, Any] | None


@dataclass(frozen=True)
class _Event:
    action: str
    project: int | None
    annotation_ids: list[int]

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> _Event:
        action = str(body.get("action") or "")
        project = body.get("project")
        project_id = _int(project.get("id")) if isinstance(project, Mapping) else _int(project)
        ids: list[int] = []
        annotation = body.get("annotation")
        if action in ANNOTATION_ACTIONS and isinstance(annotation, Mapping):
            ids = [i for i in [_int(annotation.get("id"))] if i is not None]
        elif action == DELETE_ACTION:
            listed = body.get("annotations") or []
            ids = [
                i
                for i in (_int(a.get("id")) for a in listed if isinstance(a, Mapping))
                if i is not None
            ]
        return cls(action, project_id, ids)


class StoreUnavailable(RuntimeError):
    """The feedback store cannot be opened; the message names VARCO_DATABASE_URL, no password."""


def _unusable(url: str, error: Exception) -> str:
    try:
        shown = make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        shown = "(not a database URL)"
    cause = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
    return (
        f"the feedback store (VARCO_DATABASE_URL={shown}) cannot be opened: {cause}. Set it to "
        "sqlite:///path/to/file.db or postgresql+psycopg://user:password@host/db, or unset it "
        "for SQLite under MODEL_DIR."
    )


class FeedbackStore:
    """Predictions and annotations in SQL. ``url``: a SQLAlchemy URL, or None for SQLite in
    ``model_dir``."""

    def __init__(self, url: str | SecretStr | None = None, model_dir: Path | None = None) -> None:
        url = reveal(url)  # VARCO_DATABASE_URL may carry a password: plain only to connect
        if url is None:
            directory = Path(model_dir or ".")
            directory.mkdir(parents=True, exist_ok=True)
            url = f"sqlite:///{directory / DEFAULT_FILE}"
        try:
            self.engine: Engine = create_engine(url, pool_pre_ping=not url.startswith("sqlite"))
            if self.engine.dialect.name == "sqlite":
                event.listen(self.engine, "connect", _sqlite_pragmas)
                # SQLite allows one writer: serialise ours, not fail with "database locked".
                self._write_lock: threading.Lock | None = threading.Lock()
            else:
                self._write_lock = None
            migrate(self.engine)
        except (ArgumentError, NoSuchModuleError, DBAPIError, OSError) as error:
            raise StoreUnavailable(_unusable(url, error)) from error

    def close(self) -> None:
        self.engine.dispose()

    # -- webhooks: notifications -----------------------------------------------------------
    def notify(self, event_body: Mapping[str, Any]) -> str:
        """Keep one webhook as a notification, in one short transaction (Label Studio gives a
        webhook 1 s). An annotation event is ``pending`` until :class:`ReadBack` reads what it
        names from Label Studio; nothing it claims is taken as true. Others (START_TRAINING,
        PROJECT_UPDATED, ...) are kept as they came, for the record. Returns the state."""
        event = _Event.of(event_body)
        state = EventState.PENDING if event.annotation_ids else EventState.KEPT
        if event.action in ANNOTATION_ACTIONS | {DELETE_ACTION} and not event.annotation_ids:
            log.warning("%s webhook without an annotation id: kept as it came", event.action)
        with self._transaction() as conn:
            _log_event(conn, event, event_body, state)
        return state

    def append(self, event_body: Mapping[str, Any]) -> None:
        """Apply a webhook body as true, as if Label Studio had vouched for it: for bodies read
        from Label Studio itself (tests replay captured ones). The backend calls :meth:`notify`.
        """
        event = _Event.of(event_body)
        now = _now()
        project = event_body.get("project")
        with self._transaction() as conn:
            if isinstance(project, Mapping) and event.project is not None:
                self._upsert_project(conn, event.project, project, now)
            task, annotation = event_body.get("task"), event_body.get("annotation")
            if event.action in ANNOTATION_ACTIONS and event.annotation_ids:
                assert isinstance(annotation, Mapping)
                if isinstance(task, Mapping) and _int(task.get("id")) is not None:
                    self._upsert_task(conn, task, event.project, now)
                self._upsert_annotation(conn, annotation, event.project, now)
            elif event.action == DELETE_ACTION:
                self._mark_deleted(conn, event.annotation_ids)
            state = EventState.APPLIED if event.annotation_ids else EventState.KEPT
            _log_event(conn, event, event_body, state)

    def pending_events(self, limit: int = 100) -> list[Notification]:
        """Annotation events not yet read back, oldest first."""
        query = (
            select(EventRow.id, EventRow.action, EventRow.project, EventRow.annotation_ids)
            .where(EventRow.state == EventState.PENDING)
            .order_by(EventRow.id)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [Notification(*row) for row in conn.execute(query)]

    def settle(self, event_id: int, state: str) -> None:
        """Say what came of a notification once what it names was read back."""
        with self._transaction() as conn:
            conn.execute(update(EventRow).where(EventRow.id == event_id).values(state=state))

    def event_states(self) -> dict[str, int]:
        """How many webhooks are in each :class:`EventState`."""
        query = select(EventRow.state, func.count()).group_by(EventRow.state)
        with self.engine.connect() as conn:
            return {state: int(count) for state, count in conn.execute(query)}

    # -- Label Studio's own word ------------------------------------------------------------
    def register_project(
        self, project_id: int, *, title: str | None = None, label_config: str | None = None
    ) -> None:
        """A project this backend serves (its /setup, or ``sync``): only such a project's
        annotations are kept."""
        project = {"title": title, "label_config": label_config}
        with self._transaction() as conn:
            self._upsert_project(conn, int(project_id), project, _now())

    def is_set_up(self, project_id: int | None) -> bool:
        if project_id is None:
            return False
        query = select(func.count()).select_from(ProjectRow).where(ProjectRow.id == project_id)
        with self.engine.connect() as conn:
            return bool(conn.execute(query).scalar_one())

    def projects(self) -> list[int]:
        """The projects this backend serves."""
        with self.engine.connect() as conn:
            return list(conn.execute(select(ProjectRow.id).order_by(ProjectRow.id)).scalars())

    def apply_task(self, project_id: int, task: Mapping[str, Any]) -> TaskChanges:
        """Make the store hold what Label Studio holds for one task: ``task`` as Label Studio
        returns it with its annotations, drafts and predictions (``GET /api/tasks/{id}/``, or a
        Data Manager page with ``fields=all``).

        Annotations Label Studio no longer has are marked deleted; a stored annotation is
        replaced only by a version at least as new. Predictions are matched to the ones this
        backend recorded (same task, version and result) and given Label Studio's id, or kept
        as read when another model made them.
        """
        task_id = int(task["id"])
        annotations = [a for a in task.get("annotations") or [] if _int(a.get("id")) is not None]
        now = _now()
        with self._transaction() as conn:
            self._upsert_task(conn, task, project_id, now, drafts=_drafts(task))
            stored = {
                row.id: row
                for row in conn.execute(
                    select(AnnotationRow.id, AnnotationRow.updated_at, AnnotationRow.deleted).where(
                        AnnotationRow.task_id == task_id
                    )
                )
            }
            changes = TaskChanges()
            for annotation in annotations:
                old = stored.get(int(annotation["id"]))
                new_time = parse_timestamp(annotation.get("updated_at"))
                if old is None or old.deleted:
                    changes.added += 1
                elif new_time is not None and new_time > old.updated_at:
                    changes.updated += 1
                else:
                    continue
                self._upsert_annotation(conn, annotation, project_id, now, revive=True)
            held = {int(a["id"]) for a in annotations}
            gone = [i for i, row in stored.items() if i not in held and not row.deleted]
            changes.deleted = self._mark_deleted(conn, gone)
            changes.predictions = self._link_predictions(conn, task, project_id)
            return changes

    def mark_deleted(self, annotation_ids: Iterable[int]) -> int:
        """Annotations Label Studio no longer has (confirmed by asking it)."""
        with self._transaction() as conn:
            return self._mark_deleted(conn, list(annotation_ids))

    def forget_tasks(self, task_ids: Iterable[int]) -> int:
        """Tasks deleted in Label Studio: their annotations are marked deleted."""
        ids = list(task_ids)
        with self._transaction() as conn:
            gone = conn.execute(
                select(AnnotationRow.id).where(
                    AnnotationRow.task_id.in_(ids), AnnotationRow.deleted.is_(False)
                )
            ).scalars()
            return self._mark_deleted(conn, list(gone))

    def task_summaries(self, project: int) -> dict[int, TaskSummary]:
        """What the store holds of each task of a project, to compare with Label Studio's
        counts without reading every task in full."""
        summaries: dict[int, TaskSummary] = {}
        with self.engine.connect() as conn:
            for task_id in conn.execute(select(TaskRow.id).where(TaskRow.project == project)):
                summaries[task_id[0]] = TaskSummary()
            for task_id, cancelled in conn.execute(
                select(AnnotationRow.task_id, AnnotationRow.was_cancelled).where(
                    AnnotationRow.project == project, AnnotationRow.deleted.is_(False)
                )
            ):
                summary = summaries.setdefault(task_id, TaskSummary())
                summary.cancelled += bool(cancelled)
                summary.annotations += not cancelled
            for (task_id,) in conn.execute(
                select(PredictionRow.task_id).where(
                    PredictionRow.project == project, PredictionRow.label_studio_id.is_not(None)
                )
            ):
                summaries.setdefault(task_id, TaskSummary()).predictions += 1
        return summaries

    def sync_state(self, project: int) -> SyncState | None:
        query = select(SyncRow.cursor, SyncRow.synced_at, SyncRow.stats).where(
            SyncRow.project == project
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
            return SyncState(*row) if row else None

    def save_sync_state(
        self,
        project: int,
        *,
        cursor: datetime | None,
        stats: Mapping[str, Any] | None = None,
        finished: bool = False,
    ) -> None:
        """Where ``sync`` got to; written after every page, so a stopped run resumes there."""
        values: dict[str, Any] = {"cursor": cursor}
        if finished:
            values |= {"synced_at": _now(), "stats": dict(stats or {})}
        with self._transaction() as conn:
            statement = self._insert(SyncRow.__table__).values(project=project, **values)
            conn.execute(statement.on_conflict_do_update(index_elements=["project"], set_=values))

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

    # -- for the modules that keep tables here (the loop's) ---------------------------------
    def transaction(self) -> _Transaction:
        """One write transaction (SQLite: under this process's write lock)."""
        return self._transaction()

    def upsert(self, table: Any) -> Any:
        """An INSERT for ``table`` that can take ``on_conflict_do_update`` (SQLite, PostgreSQL)."""
        return self._insert(table)

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
        self,
        conn: Connection,
        task: Mapping[str, Any],
        project_id: int | None,
        now: datetime,
        *,
        drafts: list[dict[str, Any]] | None = None,
    ) -> None:
        values: dict[str, Any] = {
            "project": _int(task.get("project")) or project_id,
            "data": dict(task.get("data") or {}),
            "updated_at": now,
        }
        if drafts is not None:
            values["drafts"] = drafts
        statement = self._insert(TaskRow.__table__).values(id=_int(task["id"]), **values)
        conn.execute(statement.on_conflict_do_update(index_elements=["id"], set_=values))

    def _upsert_annotation(
        self,
        conn: Connection,
        annotation: Mapping[str, Any],
        project_id: int | None,
        now: datetime,
        *,
        revive: bool = False,
    ) -> int:
        """``revive``: Label Studio itself says the annotation exists, so a stored deletion
        (from a webhook that came first) gives way."""
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
            "completed_by": _user_id(annotation.get("completed_by")),
            "parent_prediction": _int(annotation.get("parent_prediction")),
            "lead_time": annotation.get("lead_time"),
            "created_at": parse_timestamp(annotation.get("created_at")),
            "updated_at": parse_timestamp(annotation.get("updated_at")) or now,
        }
        table = AnnotationRow.__table__
        statement = self._insert(table).values(id=annotation_id, deleted=False, **values)
        # Only a version at least as new replaces the stored one; a deletion stays unless
        # Label Studio itself shows the annotation.
        newer = table.c.updated_at <= statement.excluded.updated_at
        conn.execute(
            statement.on_conflict_do_update(
                index_elements=["id"],
                set_={**values, "deleted": False} if revive else values,
                where=(newer | table.c.deleted) if revive else newer & table.c.deleted.is_(False),
            )
        )
        return annotation_id

    def _mark_deleted(self, conn: Connection, annotation_ids: list[int]) -> int:
        if not annotation_ids:
            return 0
        result = conn.execute(
            update(AnnotationRow)
            .where(AnnotationRow.id.in_(annotation_ids), AnnotationRow.deleted.is_(False))
            .values(deleted=True)
        )
        return int(result.rowcount or 0)

    def _link_predictions(self, conn: Connection, task: Mapping[str, Any], project_id: int) -> int:
        """Give the predictions this backend recorded Label Studio's ids; keep the others as
        read. Returns how many of Label Studio's predictions were new to the store."""
        task_id = int(task["id"])
        rows = conn.execute(
            select(
                PredictionRow.id,
                PredictionRow.label_studio_id,
                PredictionRow.model_version,
                PredictionRow.result,
            ).where(PredictionRow.task_id == task_id)
        ).all()
        linked = {row.label_studio_id for row in rows if row.label_studio_id is not None}
        unlinked = [row for row in rows if row.label_studio_id is None]
        new = 0
        for prediction in task.get("predictions") or []:
            ls_id = _int(prediction.get("id")) if isinstance(prediction, Mapping) else None
            if ls_id is None or ls_id in linked:
                continue
            ours = next(
                (
                    row
                    for row in unlinked
                    if row.model_version == prediction.get("model_version")
                    and row.result == prediction.get("result")
                ),
                None,
            )
            if ours is not None:
                unlinked.remove(ours)
                conn.execute(
                    update(PredictionRow)
                    .where(PredictionRow.id == ours.id)
                    .values(label_studio_id=ls_id)
                )
            else:
                conn.execute(
                    PredictionRow.__table__.insert().values(
                        _prediction_from_label_studio(prediction, task, project_id, ls_id)
                    )
                )
            new += 1
            linked.add(ls_id)
        return new


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
        "parent_prediction": row.parent_prediction,
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
        "id": row.label_studio_id,
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


def _log_event(conn: Connection, event: _Event, body: Mapping[str, Any], state: str) -> None:
    kept = None if event.annotation_ids else _without_label_config(body)
    conn.execute(
        EventRow.__table__.insert().values(
            action=event.action,
            project=event.project,
            annotation_ids=event.annotation_ids or None,
            body=kept,
            received_at=_now(),
            state=state,
        )
    )


def _drafts(task: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A task's drafts as the store keeps them: who has what in hand, not the work itself."""
    return [
        {
            "id": _int(draft.get("id")),
            "annotation": _int(draft.get("annotation")),
            "user": draft.get("user"),  # Label Studio names the user (an email)
            "updated_at": draft.get("updated_at"),
        }
        for draft in task.get("drafts") or []
        if isinstance(draft, Mapping) and _int(draft.get("id")) is not None
    ]


def _prediction_from_label_studio(
    prediction: Mapping[str, Any], task: Mapping[str, Any], project_id: int, ls_id: int
) -> dict[str, Any]:
    """A prediction another model (or an import) made, as Label Studio keeps it: no raw text."""
    data = task.get("data") or {}
    image = next((v for v in data.values() if isinstance(v, str)), "")
    score = prediction.get("score")
    return {
        "task_id": int(task["id"]),
        "project": project_id,
        "image": image,
        "prompt": "",
        "task_kind": "",
        "raw": "",
        "regions": [],
        "result": list(prediction.get("result") or []),
        "model_version": str(prediction.get("model_version") or ""),
        "score": float(score) if isinstance(score, int | float) else None,
        "created_at": parse_timestamp(prediction.get("created_at")) or _now(),
        "fingerprint": f"label-studio:{ls_id}",
        "label_studio_id": ls_id,
    }


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


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _user_id(user: Any) -> int | None:
    """Label Studio names a user by id in lists and as an object ({"id": ...}) in a task."""
    return _int(user.get("id")) if isinstance(user, Mapping) else _int(user)


def _project_id(project: int | str | None) -> int | None:
    """Label Studio sends the project as "ID.TIMESTAMP" in /setup and /predict."""
    if project is None:
        return None
    return _int(str(project).split(".")[0])
