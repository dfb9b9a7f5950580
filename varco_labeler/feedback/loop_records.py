"""What the active-learning loop writes down in the feedback store: its rounds, step by step
(and rollbacks), the held-out split, whether a project's loop is paused, and the corrections it
counts. The tables are in ``store.py`` (revision 0004); this module reads and writes them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, update

from varco_labeler.feedback.store import (
    AnnotationRow,
    FeedbackStore,
    LoopControlRow,
    LoopRoundRow,
    LoopSplitRow,
)
from varco_labeler.labelstudio.timestamps import iso


class State:
    """How far a round got (``feedback_loop_rounds.state``), in order."""

    STARTED = "started"  # the split is recorded: train next
    TRAINED = "trained"  # the candidate is on disk: evaluate next
    EVALUATED = "evaluated"  # both models scored, the decision taken: publish next
    PUBLISHED = "published"  # the candidate is the current release: re-label next
    DONE = "done"
    FAILED = "failed"  # an error ended it; ``error`` says which
    DISCARDED = "discarded"  # left unfinished by a crash and could not be resumed

    FINISHED = frozenset({DONE, FAILED, DISCARDED})


class Decision:
    PROMOTE = "promote"  # evaluated better by the margin; not yet published
    PROMOTED = "promoted"
    REJECTED = "rejected"
    ROLLED_BACK = "rolled back"


ROUND, ROLLBACK = "round", "rollback"


@dataclass(frozen=True)
class RoundRecord:
    id: int
    project: int | None
    number: int | None
    kind: str
    state: str
    decision: str | None
    started_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    data_until: datetime | None
    serving_version: str | None
    candidate_version: str | None
    candidate_model: str | None
    serving_score: float | None
    candidate_score: float | None
    details: dict[str, Any]
    error: str | None

    @property
    def finished(self) -> bool:
        return self.state in State.FINISHED

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("started_at", "updated_at", "finished_at", "data_until"):
            data[key] = iso(data[key]) if data[key] else None
        return data


class LoopRecords:
    """The loop's tables in one feedback store."""

    def __init__(self, store: FeedbackStore) -> None:
        self.store = store

    # -- rounds ------------------------------------------------------------------------------
    def rounds(self, project: int | None = None, limit: int | None = None) -> list[RoundRecord]:
        """Rounds and rollbacks, newest first; with ``project``, that project's (and rollbacks
        recorded without a project)."""
        query = select(LoopRoundRow).order_by(LoopRoundRow.id.desc())
        if project is not None:
            query = query.where((LoopRoundRow.project == project) | LoopRoundRow.project.is_(None))
        if limit is not None:
            query = query.limit(limit)
        with self.store.engine.connect() as conn:
            return [_record(row) for row in conn.execute(query)]

    def round(self, round_id: int) -> RoundRecord:
        with self.store.engine.connect() as conn:
            row = conn.execute(select(LoopRoundRow).where(LoopRoundRow.id == round_id)).one()
            return _record(row)

    def unfinished(self, project: int) -> RoundRecord | None:
        """The project's round left unfinished (by a crash), if any."""
        query = select(LoopRoundRow).where(
            LoopRoundRow.project == project,
            LoopRoundRow.kind == ROUND,
            LoopRoundRow.state.not_in(State.FINISHED),
        )
        with self.store.engine.connect() as conn:
            row = conn.execute(query.order_by(LoopRoundRow.id.desc())).first()
            return _record(row) if row else None

    def counted_until(self, project: int) -> datetime | None:
        """The newest correction a completed round of the project counted: new ones come after.
        Failed and discarded rounds do not count, so their corrections wait for the next."""
        query = select(func.max(LoopRoundRow.data_until)).where(
            LoopRoundRow.project == project,
            LoopRoundRow.kind == ROUND,
            LoopRoundRow.state.not_in((State.FAILED, State.DISCARDED)),
        )
        with self.store.engine.connect() as conn:
            return conn.execute(query).scalar_one_or_none()

    def start_round(
        self,
        project: int,
        *,
        data_until: datetime | None,
        serving_version: str,
        details: Mapping[str, Any],
        split: Mapping[int, bool],
    ) -> RoundRecord:
        """A new round of the project, and the sides of the tasks it assigned, in one
        transaction: a round on record always has its split."""
        now = _now()
        with self.store.transaction() as conn:
            last = conn.execute(
                select(func.max(LoopRoundRow.number)).where(LoopRoundRow.project == project)
            ).scalar_one_or_none()
            number = (last or 0) + 1
            round_id = conn.execute(
                LoopRoundRow.__table__.insert()
                .values(
                    project=project,
                    number=number,
                    kind=ROUND,
                    state=State.STARTED,
                    started_at=now,
                    updated_at=now,
                    data_until=data_until,
                    serving_version=serving_version,
                    details=dict(details),
                )
                .returning(LoopRoundRow.id)
            ).scalar_one()
            if split:
                conn.execute(
                    LoopSplitRow.__table__.insert(),
                    [
                        {"project": project, "task_id": t, "held_out": h, "round": number}
                        for t, h in split.items()
                    ],
                )
        return self.round(round_id)

    def advance(
        self, round_id: int, state: str, details: Mapping[str, Any] | None = None, **values: Any
    ) -> RoundRecord:
        """Record a step: the new state, columns in ``values``, and ``details`` merged into the
        round's details (one key per step)."""
        now = _now()
        with self.store.transaction() as conn:
            if details:
                stored = conn.execute(
                    select(LoopRoundRow.details).where(LoopRoundRow.id == round_id)
                ).scalar_one()
                values["details"] = {**(stored or {}), **details}
            if state in State.FINISHED:
                values["finished_at"] = now
            conn.execute(
                update(LoopRoundRow)
                .where(LoopRoundRow.id == round_id)
                .values(state=state, updated_at=now, **values)
            )
        return self.round(round_id)

    def record_rollback(
        self, project: int | None, *, from_version: str | None, to_version: str, note: str
    ) -> RoundRecord:
        now = _now()
        with self.store.transaction() as conn:
            round_id = conn.execute(
                LoopRoundRow.__table__.insert()
                .values(
                    project=project,
                    kind=ROLLBACK,
                    state=State.DONE,
                    decision=Decision.ROLLED_BACK,
                    started_at=now,
                    updated_at=now,
                    finished_at=now,
                    serving_version=from_version,
                    candidate_version=to_version,
                    details={"note": note},
                )
                .returning(LoopRoundRow.id)
            ).scalar_one()
        return self.round(round_id)

    # -- the split ---------------------------------------------------------------------------
    def split(self, project: int, up_to_round: int | None = None) -> dict[int, bool]:
        """Task id -> held out, as assigned by the project's rounds (up to one round)."""
        query = select(LoopSplitRow.task_id, LoopSplitRow.held_out).where(
            LoopSplitRow.project == project
        )
        if up_to_round is not None:
            query = query.where(LoopSplitRow.round <= up_to_round)
        with self.store.engine.connect() as conn:
            return {task_id: bool(held) for task_id, held in conn.execute(query)}

    # -- corrections -------------------------------------------------------------------------
    def corrections(
        self, project: int, since: datetime | None = None
    ) -> tuple[int, datetime | None]:
        """How many submitted annotations of the project were made or changed after ``since``,
        and the newest one's time (Label Studio's clock)."""
        query = select(func.count(), func.max(AnnotationRow.updated_at)).where(
            AnnotationRow.project == project,
            AnnotationRow.deleted.is_(False),
            AnnotationRow.was_cancelled.is_(False),
        )
        if since is not None:
            query = query.where(AnnotationRow.updated_at > since)
        with self.store.engine.connect() as conn:
            count, newest = conn.execute(query).one()
            return int(count), newest

    # -- pause -------------------------------------------------------------------------------
    def set_paused(self, project: int, paused: bool, reason: str | None = None) -> None:
        values = {"paused": paused, "changed_at": _now(), "reason": reason}
        with self.store.transaction() as conn:
            statement = self.store.upsert(LoopControlRow.__table__).values(
                project=project, **values
            )
            conn.execute(statement.on_conflict_do_update(index_elements=["project"], set_=values))

    def paused(self, project: int) -> bool:
        query = select(LoopControlRow.paused).where(LoopControlRow.project == project)
        with self.store.engine.connect() as conn:
            return bool(conn.execute(query).scalar_one_or_none())

    def pause_reason(self, project: int) -> str | None:
        """Why the loop of ``project`` is paused; None when it is not, or no reason was given."""
        query = select(LoopControlRow.reason).where(
            LoopControlRow.project == project, LoopControlRow.paused.is_(True)
        )
        with self.store.engine.connect() as conn:
            return conn.execute(query).scalar_one_or_none()


def round_line(round_: Mapping[str, Any]) -> str:
    """One line for a round or a rollback (:meth:`RoundRecord.to_json`): ``loop status``,
    ``loop --once``, ``report``."""
    when = str(round_["started_at"])[:16].replace("T", " ")
    if round_["kind"] == ROLLBACK:
        return f"rollback {when}: {round_['serving_version']} -> {round_['candidate_version']}"
    details = round_["details"] or {}
    data = details.get("data", {})
    line = (
        f"round {round_['number']} {when}: {round_['state']}"
        + (f", {round_['decision']}" if round_["decision"] else "")
        + f"; {data.get('new_corrections', 0)} new correction(s), "
        f"{data.get('train_tasks', 0)} train / {data.get('held_out_tasks', 0)} held-out task(s)"
    )
    if round_["candidate_score"] is not None:
        line += (
            f"; held-out score {round_['serving_version']} {round_['serving_score']:.3f}, "
            f"{round_['candidate_version']} {round_['candidate_score']:.3f}"
        )
    relabel = details.get("relabel") or {}
    if relabel.get("done") is not None:
        line += f"; re-labelled {relabel['done']} task(s)"
    seconds = sum((details.get("timings") or {}).values())
    if seconds:
        line += f"; {seconds:.0f} s"
    if round_["error"]:
        line += f"; error: {round_['error']}"
    return line


def _record(row: Any) -> RoundRecord:
    values = {key: getattr(row, key) for key in RoundRecord.__dataclass_fields__}
    values["details"] = values["details"] or {}
    return RoundRecord(**values)


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)
