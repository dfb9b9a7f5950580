"""``varco-labeler prelabel``: pre-label a whole Label Studio project, or a folder of images.

Label Studio's "Retrieve predictions" sends every selected task in one blocking request that it
cuts at ~100 s. This goes around it: the tasks are batched into queue jobs, each job predicts its
batch and pushes the predictions into the project with the SDK, and this command only watches.
Tasks that already hold a prediction of this model version (the current release's, when one is
published) are skipped, so a second run does
nothing and an interrupted run resumes; Ctrl-C cancels the jobs no worker has started. With a
queue, the run is recorded in Redis (``runs``): ``varco-labeler status`` shows it from any shell
and ``varco-labeler cancel`` stops it the way Ctrl-C does.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError
from tqdm import tqdm

from varco_labeler import jobs
from varco_labeler.feedback.store import FeedbackStore, PredictionRecord
from varco_labeler.labelstudio import read_label_config
from varco_labeler.labelstudio.client import sdk_client
from varco_labeler.policy import Policy, PolicyError, agreed_version
from varco_labeler.queue import RQDispatcher, batches
from varco_labeler.releases import ReleaseChannel
from varco_labeler.runs import RunRecorder, RunState, TaskState
from varco_labeler.settings import Settings

if TYPE_CHECKING:  # the SDK loads pandas and numpy; sdk_client() imports it when connecting
    from label_studio_sdk import LabelStudio

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
# How often a queue run records which jobs run, writes its heartbeat and looks for a cancel.
POLL_SECONDS = 1.0


class RunCancelled(Exception):
    """``varco-labeler cancel`` asked this run to stop."""


@dataclass
class Summary:
    done: int = 0
    skipped: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    interrupted: bool = False  # by Ctrl-C, SIGTERM or `varco-labeler cancel`
    cancel_requested: bool = False  # by `varco-labeler cancel`
    cancelled: int = 0  # tasks whose jobs were cancelled before a worker took them
    seconds: float = 0.0
    run_id: str | None = None  # recorded in Redis (queue mode)

    def text(self) -> str:
        rate = self.done / self.seconds if self.seconds else 0.0
        lines = [
            (f"run {self.run_id}: " if self.run_id else "")
            + f"done {self.done}, skipped {self.skipped} (already predicted), "
            f"failed {len(self.failed)} in {self.seconds:.1f} s ({rate:.1f} tasks/s)"
        ]
        lines += [f"  task {task}: {reason}" for task, reason in list(self.failed.items())[:20]]
        if len(self.failed) > 20:
            lines.append(f"  ... and {len(self.failed) - 20} more")
        if self.cancel_requested:
            lines.append(
                f"cancelled (varco-labeler cancel): {self.cancelled} task(s) not started; run the "
                "same command again to finish the rest"
            )
        elif self.interrupted:
            lines.append("interrupted: run the same command again to finish the rest")
        return "\n".join(lines)


@dataclass(frozen=True)
class Selection:
    """Which tasks of a project: all, unlabelled only, a Data Manager view, or given ids."""

    unlabelled_only: bool = False
    view: int | None = None
    task_ids: frozenset[int] | None = None


def select_tasks(
    client: LabelStudio, project: int, model_version: str, selection: Selection
) -> tuple[list[Any], int]:
    """Tasks to pre-label, and how many selected ones already have this version's prediction."""
    predicted = {
        p.task for p in client.predictions.list(project=project) if p.model_version == model_version
    }
    chosen = [
        task
        for task in client.tasks.list(project=project, view=selection.view, fields="all")
        if (selection.task_ids is None or task.id in selection.task_ids)
        and not (selection.unlabelled_only and task.is_labeled)
    ]
    todo = [task for task in chosen if task.id not in predicted]
    return todo, len(chosen) - len(todo)


def connected_extra_params(client: LabelStudio, project: int) -> Any:
    """The ``extra_params`` of the ML backend connected to the project, as "Retrieve
    predictions" would use them; None when no backend is connected."""
    backends = sorted(client.ml.list(project=project), key=lambda backend: backend.id)
    if len(backends) > 1:
        log.warning(
            "project %d has %d ML backends connected; using the settings of the first (id %d, %s)",
            project,
            len(backends),
            backends[0].id,
            backends[0].url,
        )
    return backends[0].extra_params if backends else None


def prelabel_project(
    settings: Settings,
    project: int,
    selection: Selection = Selection(),
    *,
    extra_params: Any = None,
    store: FeedbackStore | None = None,
    progress: bool = True,
) -> Summary:
    """Pre-label a project's tasks under the project's policy (its label config and the
    connected model's ``extra_params``, unless ``extra_params`` is given), recording every
    prediction in the feedback store."""
    if not (settings.label_studio_url and settings.label_studio_api_key):
        raise ValueError("set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY")
    started = time.monotonic()
    client = sdk_client(settings.label_studio_url, settings.label_studio_api_key)
    config = read_label_config(client.projects.get(id=project).label_config)
    if extra_params is None:
        extra_params = connected_extra_params(client, project)
    dispatcher = None if settings.embedded else RQDispatcher(settings)
    workers = dispatcher.model_versions() if dispatcher else {}
    if dispatcher and not workers:
        log.warning("no worker is running on queue %r: jobs wait for one", settings.queue_name)
    if dispatcher is None:  # the model runs here: the current release, else settings.model
        jobs.install(jobs.build_context(settings, follow_releases="prelabel"))
        version = jobs.engine_version()
    elif release := ReleaseChannel.for_settings(settings).current():
        # Workers load the current release before their next job, so ours run it.
        version = release.version
    else:
        version = agreed_version(settings.version, settings.model_chosen, workers)
    policy = Policy.resolve(settings, config, extra_params, version=version)
    todo, skipped = select_tasks(client, project, policy.model_version, selection)
    summary = Summary(skipped=skipped)
    items = []
    for task in todo:
        try:
            items.append(
                policy.item(str(task.id), task.data or {}, task_id=task.id, project=project)
            )
        except PolicyError as error:
            summary.failed[str(task.id)] = str(error)
    calls = [(project, policy.to_json(), job) for job in batches(items, settings.prelabel_job_size)]
    store = store or FeedbackStore(settings.database_url, model_dir=settings.model_dir)
    record = None
    if dispatcher:
        ids = [task.id for task in todo]
        record = RunRecorder.start(dispatcher.redis, project, policy.model_version, ids, skipped)
        record.failed(summary.failed)
        summary.run_id = record.id
        print(
            f"run {record.id}: {len(ids)} task(s) of project {project}; "
            f"`varco-labeler status {record.id}` follows it, "
            f"`varco-labeler cancel {record.id}` stops it",
            file=sys.stderr,
        )
    bar = tqdm(total=len(items), unit="task", desc=f"project {project}", disable=not progress)
    try:
        with bar, _interrupt_as_keyboard():
            run = _QueueRun(dispatcher, calls, record) if record else _InlineRun(calls)
            try:
                for outcome in run.outcomes():
                    _tally(summary, outcome, store)
                    bar.update(outcome["count"])
            except (KeyboardInterrupt, RunCancelled) as stop:
                summary.interrupted = True
                summary.cancel_requested = isinstance(stop, RunCancelled)
                with suppress(KeyboardInterrupt):
                    for outcome in run.stop():
                        _tally(summary, outcome, store)
                        bar.update(outcome["count"])
    except Exception as error:
        if record:
            with suppress(RedisError):  # the error may be Redis itself: tell that one
                record.finish(RunState.FAILED, f"stopped on an error: {error}")
        raise
    summary.seconds = time.monotonic() - started
    if record:
        summary.cancelled = len(record.in_state(TaskState.CANCELLED))
        record.finish(*_ending(summary, record))
    return summary


def _ending(summary: Summary, record: RunRecorder) -> tuple[RunState, str | None]:
    """The state a run ends in, and why."""
    if summary.interrupted:
        how = "cancelled from another shell" if summary.cancel_requested else "interrupted"
        left = len(record.in_state(TaskState.RUNNING, TaskState.QUEUED))
        waited = f"; stopped waiting for {left} task(s) on workers" if left else ""
        return RunState.CANCELLED, f"{how}: {summary.cancelled} task(s) not started{waited}"
    if summary.failed:
        return RunState.FAILED, f"{len(summary.failed)} task(s) failed"
    return RunState.DONE, None


class _InlineRun:
    """Prelabel jobs run one after another in this process (no Redis)."""

    def __init__(self, calls: list[tuple[Any, ...]]) -> None:
        self.calls = calls

    def outcomes(self) -> Iterator[dict[str, Any]]:
        while self.calls:
            project, policy, batch = self.calls.pop(0)
            yield {"count": len(batch), **_safely(project, policy, batch)}

    def stop(self) -> Iterator[dict[str, Any]]:
        return iter(())  # the batch being run when Ctrl-C came was abandoned before its push


class _QueueRun:
    """Prelabel jobs on the queue's workers; this process only watches them finish, and keeps
    the run's record: which tasks are queued, running, done, failed or cancelled."""

    def __init__(
        self, dispatcher: RQDispatcher, calls: list[tuple[Any, ...]], record: RunRecorder
    ) -> None:
        self.dispatcher = dispatcher
        self.record = record
        submitted = self.dispatcher.submit(jobs.PRELABEL_BATCH, calls)
        record.add_jobs(job.id for job in submitted)
        self.task_ids = {
            job.id: [item["task_id"] for item in args[2]]
            for job, args in zip(submitted, calls, strict=True)
        }
        self.open = {job.id: job for job in submitted}
        self.running: set[str] = set()  # jobs whose tasks are recorded running

    def outcomes(self, *, stopping: bool = False) -> Iterator[dict[str, Any]]:
        """Each job's outcome as it finishes. A job that gave way to interactive work names the
        job that carries on with the rest of its tasks: that one is followed too (cancelled
        instead when the run is stopping). Raises RunCancelled when a cancel is requested."""
        while self.open:
            waiting = list(self.open.values())
            for job, value, error in self.dispatcher.completions(waiting, POLL_SECONDS):
                del self.open[job.id]
                ids = self.task_ids.pop(job.id)
                if error:
                    outcome = {"count": len(ids), "failed": {str(t): error for t in ids}}
                    self._record(outcome)
                    yield outcome
                    continue
                later = value.pop("continued", None)
                outcome = {"count": len(ids) - len(later["tasks"]) if later else len(ids), **value}
                self._record(outcome)
                yield outcome
                if later:
                    self._follow(later, stopping)
                    break  # wait again, with the job that carries on
            self._look_around(stopping)

    def _record(self, outcome: dict[str, Any]) -> None:
        done = [*outcome.get("pushed", []), *outcome.get("present", [])]
        self.record.update(done, TaskState.DONE)
        if outcome.get("failed"):
            self.record.failed(outcome["failed"])

    def _look_around(self, stopping: bool) -> None:
        """Record the tasks of jobs a worker has started, and take a cancel request (which
        also says this run lives)."""
        started = self.dispatcher.running(self.open) - self.running
        self.running |= started
        tasks = [task for job_id in started for task in self.task_ids[job_id]]
        if tasks:
            self.record.update(tasks, TaskState.RUNNING)
        else:
            self.record.heartbeat()
        if not stopping and self.record.cancel_requested():
            raise RunCancelled

    def stop(self) -> Iterator[dict[str, Any]]:
        """Cancel the jobs no worker has started, then wait for the running ones to push.

        Waiting means a run restarted right after cannot race them into duplicates.
        """
        cancelled = self.dispatcher.cancel_unstarted(list(self.open.values()))
        for job_id in cancelled:
            del self.open[job_id]
            self.record.update(self.task_ids.pop(job_id), TaskState.CANCELLED)
        log.warning(
            "stopping: %d queued job(s) cancelled; waiting for %d running job(s) to push their "
            "predictions (Ctrl-C again to stop waiting)",
            len(cancelled),
            len(self.open),
        )
        if self.open:
            yield from self.outcomes(stopping=True)

    def _follow(self, later: dict[str, Any], stopping: bool) -> None:
        job = self.dispatcher.fetch(later["job"])
        if stopping and self.dispatcher.cancel_queued([job]):
            self.record.update(later["tasks"], TaskState.CANCELLED)
            return
        self.open[job.id] = job
        self.task_ids[job.id] = later["tasks"]
        self.record.add_jobs([job.id])
        self.record.update(later["tasks"], TaskState.QUEUED)


def _safely(project: int, policy: dict[str, Any], batch: list[dict[str, Any]]) -> dict[str, Any]:
    try:
        return jobs.prelabel_batch(project, policy, batch)
    except Exception as error:  # one bad batch must not end a 10,000-task run
        log.exception("batch of tasks %s failed", [item["task_id"] for item in batch])
        return {"failed": {str(item["task_id"]): str(error) for item in batch}}


def _tally(summary: Summary, outcome: dict[str, Any], store: FeedbackStore) -> None:
    """Count a job's outcome and record its predictions (the job's worker has no database)."""
    records = [PredictionRecord(**record) for record in outcome.get("records", [])]
    try:
        store.record_predictions(records)
    except Exception:  # the predictions are in Label Studio: losing the record must not stop a run
        log.exception("could not record %d prediction(s) in the feedback store", len(records))
    summary.done += len(outcome.get("pushed", []))
    summary.skipped += len(outcome.get("present", []))
    summary.failed.update(outcome.get("failed", {}))


@contextmanager
def _interrupt_as_keyboard() -> Iterator[None]:
    """Make SIGINT and SIGTERM stop a run the way Ctrl-C does: also when the command was started
    with SIGINT ignored (a shell's background job `&` inherits that), so `kill -INT` still stops
    it cleanly."""
    stops = (signal.SIGINT, signal.SIGTERM)
    previous = {number: signal.signal(number, signal.default_int_handler) for number in stops}
    # A mask inherited from the parent would hold the signal back just as well.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def prelabel_folder(
    settings: Settings,
    folder: Path,
    label_config: str,
    url_prefix: str | None = None,
    *,
    extra_params: Any = None,
    store: FeedbackStore | None = None,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], Summary]:
    """Pre-label image files with the model in this process; returns Label Studio import tasks.

    Each task's image is ``url_prefix`` + the path relative to ``folder`` (for example
    ``/data/local-files/?d=photos/``), or the absolute path without a prefix. The policy is the
    one a project with this label config and ``extra_params`` gets; every prediction is recorded
    in the feedback store, under the image reference the import file gives.
    """
    started = time.monotonic()
    config = read_label_config(label_config)
    if config.labels_data_key is not None:
        raise ValueError(
            f"the label config takes its labels from each task's data[{config.labels_data_key!r}]"
            ", which a folder of images does not have; list the labels in the config"
        )
    policy = Policy.resolve(settings, config, extra_params)
    folder = folder.resolve()
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    jobs.install(jobs.build_context(_with_root(settings, folder)))
    store = store or FeedbackStore(settings.database_url, model_dir=settings.model_dir)
    tasks, summary = [], Summary()
    with tqdm(total=len(paths), unit="image", desc=str(folder), disable=not progress) as bar:
        for chunk in batches(paths, settings.batch_size):
            items = [
                policy.item(
                    str(path),
                    {config.data_key: str(path)},
                    reference=url_prefix + path.relative_to(folder).as_posix()
                    if url_prefix
                    else str(path),
                )
                for path in chunk
            ]
            converted, failed = jobs.convert_batch(policy, items, jobs.predict_batch(items))
            for done in converted:
                reference = done.record.image
                tasks.append(
                    {"data": {config.data_key: reference}, "predictions": [done.prediction]}
                )
            store.record_predictions(done.record for done in converted)
            summary.done += len(converted)
            summary.failed.update(failed)
            bar.update(len(chunk))
    summary.seconds = time.monotonic() - started
    return tasks, summary


def _with_root(settings: Settings, folder: Path) -> Settings:
    return settings.replace(local_image_roots=(*settings.local_image_roots, folder))
