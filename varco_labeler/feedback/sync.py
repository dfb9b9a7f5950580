"""Reconciling the feedback store with Label Studio: Label Studio is the source of truth, webhooks
only the fast path.

:func:`sync_project` makes the store hold what Label Studio holds for one project, in two passes:

1. **changed tasks**: every task stamped at or after the project's cursor (Label Studio stamps a
   task whenever one of its annotations or predictions is saved or deleted one by one), read in
   full, oldest change first, and applied; the cursor is saved every SAVE_EVERY tasks, so an
   interrupted run resumes near where it stopped, and the next run re-reads only the last few
   seconds before the cursor (OVERLAP);
2. **counts**: one light page walk over all tasks compares Label Studio's counts (submitted and
   skipped annotations, predictions) with the store's, and reads in full only the tasks
   that differ. It catches what leaves no stamp: bulk deletions from the Data Manager, predictions
   imported in bulk, deleted tasks. A task's drafts are kept as they were when it was last read in
   full (saving a draft leaves no stamp and no count).

Both passes are idempotent: a second sync with nothing changed in Label Studio changes nothing.

:class:`ReadBack` settles webhook notifications: it reads each annotation an event names back from
Label Studio by id and applies that task as Label Studio returns it, so a forged event (an
annotation Label Studio does not have, a project this backend was never set up for) stores
nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

from tqdm import tqdm

from varco_labeler.feedback.pairing import as_int
from varco_labeler.feedback.store import (
    DELETE_ACTION,
    EventState,
    FeedbackStore,
    Notification,
    TaskChanges,
    TaskSummary,
)
from varco_labeler.labelstudio.client import LabelStudioClient
from varco_labeler.labelstudio.timestamps import parse_timestamp

log = logging.getLogger(__name__)

# Label Studio stamps a task before its transaction commits: a task stamped just before the
# cursor may become visible just after it. Re-reading this much is cheap and idempotent.
OVERLAP = timedelta(seconds=5)
# A cursor is saved after this many changed tasks.
SAVE_EVERY = 100
# The counts pass reads Label Studio's task list in pages this large (its maximum is 1,000).
COUNT_PAGE = 500


class SyncError(RuntimeError):
    """A project cannot be synced; the message says why."""


@dataclass
class SyncReport:
    """What one sync of one project read and changed."""

    project: int
    changed_tasks: int = 0
    checked_tasks: int = 0
    recounted_tasks: int = 0
    gone_tasks: int = 0
    changes: TaskChanges = field(default_factory=TaskChanges)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "changes": asdict(self.changes)}

    def summary(self) -> str:
        c = self.changes
        return (
            f"project {self.project}: {c.added} annotation(s) added, {c.updated} updated, "
            f"{c.deleted} deleted, {c.predictions} prediction(s) new; {self.changed_tasks} "
            f"changed task(s) read, {self.checked_tasks} counted, {self.recounted_tasks} "
            f"re-read for their counts, {self.gone_tasks} gone"
        )


def sync_project(
    store: FeedbackStore,
    client: LabelStudioClient,
    project_id: int,
    *,
    full: bool = False,
    progress: bool = False,
) -> SyncReport:
    """Make the store hold what Label Studio holds for ``project_id``; ``full``: read every task
    again, not just those changed since the last sync."""
    project = client.project(project_id)
    if project is None:
        raise SyncError(
            f"Label Studio at {client.url} has no project {project_id} (or LABEL_STUDIO_API_KEY "
            "cannot see it)"
        )
    store.register_project(
        project_id, title=project.get("title"), label_config=project.get("label_config")
    )
    report = SyncReport(project_id)
    state = store.sync_state(project_id)
    cursor = None if full or state is None else state.cursor
    since = cursor - OVERLAP if cursor is not None else None
    read: set[int] = set()
    bar = _bar(progress, client.task_count(project_id, updated_since=since), project_id, "changed")
    with bar:
        for task in client.tasks(project_id, updated_since=since, full=True):
            report.changes += store.apply_task(project_id, task)
            read.add(int(task["id"]))
            report.changed_tasks += 1
            stamped = parse_timestamp(task.get("updated_at"))
            if stamped is not None and (cursor is None or stamped > cursor):
                cursor = stamped
            if report.changed_tasks % SAVE_EVERY == 0:
                store.save_sync_state(project_id, cursor=cursor)
            bar.update()
    store.save_sync_state(project_id, cursor=cursor)
    _recount(store, client, project_id, read, report, progress)
    store.save_sync_state(project_id, cursor=cursor, stats=report.to_json(), finished=True)
    log.info("sync %s", report.summary())
    return report


def _recount(
    store: FeedbackStore,
    client: LabelStudioClient,
    project_id: int,
    read: set[int],
    report: SyncReport,
    progress: bool,
) -> None:
    """The counts pass: re-read the tasks whose counts differ, forget the tasks that are gone."""
    summaries = store.task_summaries(project_id)
    listed: set[int] = set()
    bar = _bar(progress, client.task_count(project_id), project_id, "counted")
    with bar:
        for task in client.tasks(project_id, page_size=COUNT_PAGE):
            task_id = int(task["id"])
            listed.add(task_id)
            report.checked_tasks += 1
            bar.update()
            if task_id in read or _same_counts(task, summaries.get(task_id, TaskSummary())):
                continue
            full = client.task(task_id)
            if full is not None:
                report.changes += store.apply_task(project_id, full)
                report.recounted_tasks += 1
    gone = [task_id for task_id in summaries if task_id not in listed]
    if gone:
        report.changes.deleted += store.forget_tasks(gone)
        report.gone_tasks = len(gone)


def _same_counts(task: Mapping[str, Any], summary: TaskSummary) -> bool:
    return (
        int(task.get("total_annotations") or 0) == summary.annotations
        and int(task.get("cancelled_annotations") or 0) == summary.cancelled
        and int(task.get("total_predictions") or 0) == summary.predictions
    )


def _bar(progress: bool, total: int, project: int, what: str) -> tqdm:
    return tqdm(
        total=total, desc=f"project {project}: {what} tasks", unit="task", disable=not progress
    )


class ReadBack:
    """Settles pending webhook notifications by reading what they name from Label Studio."""

    def __init__(self, store: FeedbackStore, client: LabelStudioClient) -> None:
        self.store, self.client = store, client

    def run(self, limit: int = 100) -> int:
        """Settle up to ``limit`` pending notifications, oldest first; returns how many. Raises
        :class:`~varco_labeler.labelstudio.client.LabelStudioUnavailable` when Label Studio
        cannot be reached: the rest stay pending for the next run."""
        pending = self.store.pending_events(limit)
        for notification in pending:
            self.store.settle(notification.id, self.settle(notification))
        return len(pending)

    def settle(self, notification: Notification) -> str:
        """Apply what Label Studio holds for the annotations an event names; the event's
        :class:`EventState`."""
        tasks: dict[int, int] = {}  # task id -> project
        deleted = unknown_project = False
        for annotation_id in notification.annotation_ids:
            annotation = self.client.annotation(annotation_id)
            if annotation is None:
                if notification.action == DELETE_ACTION:
                    deleted |= self.store.mark_deleted([annotation_id]) > 0
                continue
            project = as_int(annotation.get("project"))
            if not self.store.is_set_up(project):
                unknown_project = True
                continue
            assert project is not None
            tasks[int(annotation["task"])] = project
        for task_id, project in tasks.items():
            task = self.client.task(task_id)
            if task is not None:
                self.store.apply_task(project, task)
        if tasks or deleted:
            return EventState.APPLIED
        if unknown_project:
            log.warning(
                "%s webhook for a project this backend was never set up for: nothing kept",
                notification.action,
            )
            return EventState.UNKNOWN_PROJECT
        log.warning(
            "%s webhook names annotation(s) %s that Label Studio does not have: nothing kept",
            notification.action,
            notification.annotation_ids,
        )
        return EventState.NOT_IN_LABEL_STUDIO


def sync_all(
    store: FeedbackStore,
    client: LabelStudioClient,
    *,
    full: bool = False,
    progress: bool = False,
    on_error: Callable[[int, Exception], None] | None = None,
) -> list[SyncReport]:
    """Every project this backend serves (set up through /setup, or synced before)."""
    reports = []
    for project_id in store.projects():
        try:
            reports.append(sync_project(store, client, project_id, full=full, progress=progress))
        except SyncError as error:
            if on_error is None:
                raise
            on_error(project_id, error)
    return reports
