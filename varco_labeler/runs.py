"""A ``prelabel`` run's record in Redis, and the ``status`` and ``cancel`` commands that read it.

Every queue-mode run gets an id and two keys: ``varco:run:<id>`` (a hash: project, model version,
host, pid, state, per-state task counts, heartbeat) and ``varco:run:<id>:tasks`` (task id -> its
state, and the reason of a failure), ``varco:run:<id>:jobs`` (the queue jobs that carry its tasks).
``varco:runs`` lists the ids by start time. The ``prelabel`` process is the only writer while it
lives; ``cancel`` sets a flag that the process polls while it waits, and ends a run whose process
is lost itself (it cancels the run's queued jobs: nobody else would).
A run without Redis (the embedded mode) lives in its own process and is not recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from redis import Redis
from redis.exceptions import RedisError

if TYPE_CHECKING:
    from varco_labeler.queue import RQDispatcher

RUNS = "varco:runs"
# A live run writes a heartbeat about every second: one silent for this long lost its process.
LOST_AFTER = 60.0
# A live run's record outlives its last heartbeat by this long; an ended run's, its end.
LIVE_TTL = 24 * 3600
ENDED_TTL = 7 * 24 * 3600


class RunState(StrEnum):
    QUEUED = "queued"  # jobs submitted, none started yet
    RUNNING = "running"
    DONE = "done"  # every task predicted (or already predicted)
    FAILED = "failed"  # some tasks failed, or the run stopped on an error
    CANCELLED = "cancelled"  # `varco-labeler cancel`, Ctrl-C or SIGTERM
    LOST = "lost"  # never written: read for a live run whose process went silent


class TaskState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE = frozenset({RunState.QUEUED, RunState.RUNNING})


def _meta_key(run_id: str) -> str:
    return f"varco:run:{run_id}"


def _tasks_key(run_id: str) -> str:
    return f"{_meta_key(run_id)}:tasks"


def _jobs_key(run_id: str) -> str:
    return f"{_meta_key(run_id)}:jobs"


@dataclass(frozen=True)
class Run:
    """What a run's record says, as read (``state`` is LOST for a silent live run)."""

    id: str
    project: int
    model_version: str
    host: str
    pid: int
    started_at: float
    updated_at: float
    ended_at: float | None
    total: int
    skipped: int
    state: RunState
    counts: dict[str, int]
    message: str | None
    cancel_requested: bool

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    def progress(self) -> str:
        finished = sum(self.counts.get(s, 0) for s in (TaskState.DONE, TaskState.FAILED))
        return f"{finished}/{self.total}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"state": self.state.value}


def _parse(fields: Mapping[bytes, bytes], now: float) -> Run:
    meta = {key.decode(): value.decode() for key, value in fields.items()}
    state = RunState(meta["state"])
    updated = float(meta["updated_at"])
    if state in ACTIVE and now - updated > LOST_AFTER:
        state = RunState.LOST
    return Run(
        id=meta["id"],
        project=int(meta["project"]),
        model_version=meta["model_version"],
        host=meta["host"],
        pid=int(meta["pid"]),
        started_at=float(meta["started_at"]),
        updated_at=updated,
        ended_at=float(meta["ended_at"]) if "ended_at" in meta else None,
        total=int(meta["total"]),
        skipped=int(meta["skipped"]),
        state=state,
        counts=json.loads(meta["counts"]),
        message=meta.get("message"),
        cancel_requested="cancel_requested_at" in meta,
    )


class RunRecorder:
    """The record of the run this process makes: task states as they change, a heartbeat."""

    def __init__(self, redis: Redis, run_id: str, tasks: Iterable[int | str]) -> None:
        self.redis, self.id = redis, run_id
        self.tasks = dict.fromkeys((str(task) for task in tasks), TaskState.QUEUED)
        self.state = RunState.QUEUED

    @classmethod
    def start(
        cls,
        redis: Redis,
        project: int,
        model_version: str,
        tasks: Iterable[int | str],
        skipped: int = 0,
    ) -> RunRecorder:
        now = time.time()
        run_id = time.strftime("%Y%m%d-%H%M%S", time.localtime(now)) + "-" + secrets.token_hex(2)
        recorder = cls(redis, run_id, tasks)
        meta = {
            "id": run_id,
            "project": project,
            "model_version": model_version,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started_at": now,
            "updated_at": now,
            "total": len(recorder.tasks),
            "skipped": skipped,
            "state": recorder.state.value,
            "counts": recorder._counts(),
        }
        pipe = redis.pipeline()
        pipe.hset(_meta_key(run_id), mapping=meta)
        if recorder.tasks:
            encoded = {task: _task_value(TaskState.QUEUED) for task in recorder.tasks}
            pipe.hset(_tasks_key(run_id), mapping=encoded)
        pipe.zadd(RUNS, {run_id: now})
        pipe.zremrangebyscore(RUNS, "-inf", now - ENDED_TTL - LIVE_TTL)  # long expired
        recorder._expire(pipe, LIVE_TTL)
        pipe.execute()
        return recorder

    def update(
        self,
        tasks: Iterable[int | str],
        state: TaskState,
        reasons: Mapping[str, str] | None = None,
    ) -> None:
        """Set these tasks' state (``reasons``: why each failed); also a heartbeat."""
        changed = {str(task): _task_value(state, (reasons or {}).get(str(task))) for task in tasks}
        self.tasks.update(dict.fromkeys(changed, state))
        if self.state is RunState.QUEUED and state in (TaskState.RUNNING, TaskState.DONE):
            self.state = RunState.RUNNING
        self._write(changed)

    @classmethod
    def resume(cls, redis: Redis, run_id: str) -> RunRecorder:
        """The record of a run another process started, to end it (its process is gone)."""
        recorder = cls(redis, run_id, [])
        states = task_states(redis, run_id)
        recorder.tasks = {task: TaskState(value["state"]) for task, value in states.items()}
        recorder.state = RunState.RUNNING
        return recorder

    def add_jobs(self, job_ids: Iterable[str]) -> None:
        """The queue jobs that carry the run's tasks: ``cancel`` stops them if this process
        is lost."""
        ids = list(job_ids)
        if not ids:
            return
        pipe = self.redis.pipeline()
        pipe.sadd(_jobs_key(self.id), *ids)
        self._expire(pipe, LIVE_TTL)
        pipe.execute()

    def failed(self, reasons: Mapping[str, str]) -> None:
        self.update(reasons, TaskState.FAILED, reasons)

    def heartbeat(self) -> None:
        """Say the run's process lives (``status`` reports a run silent for a minute lost)."""
        self._write({})

    def _write(self, changed: dict[str, str]) -> None:
        pipe = self.redis.pipeline()
        if changed:
            pipe.hset(_tasks_key(self.id), mapping=changed)
        pipe.hset(_meta_key(self.id), mapping=self._meta_update())
        self._expire(pipe, LIVE_TTL)
        pipe.execute()

    def in_state(self, *states: TaskState) -> list[str]:
        return [task for task, state in self.tasks.items() if state in states]

    def cancel_requested(self) -> bool:
        return bool(self.redis.hexists(_meta_key(self.id), "cancel_requested_at"))

    def finish(self, state: RunState, message: str | None = None) -> None:
        self.state = state
        update = self._meta_update() | {"ended_at": time.time()}
        if message:
            update["message"] = message
        pipe = self.redis.pipeline()
        pipe.hset(_meta_key(self.id), mapping=update)
        self._expire(pipe, ENDED_TTL)
        pipe.execute()

    def _counts(self) -> str:
        return json.dumps(dict(Counter(state.value for state in self.tasks.values())))

    def _meta_update(self) -> dict[str, Any]:
        return {"state": self.state.value, "counts": self._counts(), "updated_at": time.time()}

    def _expire(self, pipe: Any, seconds: int) -> None:
        for key in (_meta_key(self.id), _tasks_key(self.id), _jobs_key(self.id)):
            pipe.expire(key, seconds)


def _task_value(state: TaskState, reason: str | None = None) -> str:
    return json.dumps({"state": state.value} | ({"reason": reason} if reason else {}))


def recent_runs(redis: Redis, limit: int = 20) -> list[Run]:
    """The latest runs first (ended ones until their record expires)."""
    ids = [run_id.decode() for run_id in redis.zrevrange(RUNS, 0, limit - 1)]
    pipe = redis.pipeline()
    for run_id in ids:
        pipe.hgetall(_meta_key(run_id))
    metas = pipe.execute()
    if gone := [run_id for run_id, fields in zip(ids, metas, strict=True) if not fields]:
        redis.zrem(RUNS, *gone)  # expired
    now = time.time()
    return [_parse(fields, now) for fields in metas if fields]


def read_run(redis: Redis, run_id: str) -> Run | None:
    fields = redis.hgetall(_meta_key(run_id))
    return _parse(fields, time.time()) if fields else None


def task_states(redis: Redis, run_id: str) -> dict[str, dict[str, str]]:
    """Task id -> ``{"state": ..., "reason"?: ...}``, in task id order."""
    raw = redis.hgetall(_tasks_key(run_id))
    states = {task.decode(): json.loads(value) for task, value in raw.items()}
    return dict(sorted(states.items(), key=lambda item: (len(item[0]), item[0])))


def request_cancel(redis: Redis, run_id: str) -> Run | None:
    """Ask the run's process to stop; the run as it was (None: no such run)."""
    run = read_run(redis, run_id)
    if run is not None and run.active:
        redis.hset(_meta_key(run_id), "cancel_requested_at", time.time())
    return run


def cancel_lost(dispatcher: RQDispatcher, run: Run) -> tuple[int, int]:
    """End a run whose process is gone: nobody else will cancel its queued jobs. Their tasks
    are marked cancelled and the run ends cancelled; jobs a worker has started finish and push.
    Returns (jobs cancelled, jobs still running)."""
    from rq.job import Job
    from rq.serializers import JSONSerializer

    redis = dispatcher.redis
    ids = [job_id.decode() for job_id in redis.smembers(_jobs_key(run.id))]
    found = Job.fetch_many(ids, redis, serializer=JSONSerializer)
    jobs = {job.id: job for job in found if job is not None}
    cancelled = dispatcher.cancel_unstarted(list(jobs.values()))
    tasks = [item["task_id"] for job_id in cancelled for item in jobs[job_id].args[2]]
    record = RunRecorder.resume(redis, run.id)
    record.update(tasks, TaskState.CANCELLED)
    message = f"cancelled after its process was lost: {len(cancelled)} queued job(s) cancelled"
    record.finish(RunState.CANCELLED, message)
    return len(cancelled), len(dispatcher.running(ids))


def active_runs(redis: Redis) -> list[dict[str, Any]]:
    """For /health: the runs under way, with their progress; empty when Redis is down."""
    try:
        runs = recent_runs(redis, limit=100)
    except RedisError:
        return []
    return [
        {"id": run.id, "project": run.project, "state": run.state.value, "done": run.progress()}
        | {"counts": run.counts}
        for run in runs
        if run.active
    ]


# -- the commands ------------------------------------------------------------------------------

NO_REDIS = (
    "run status lives in Redis: set REDIS_URL (or --redis-url) to the queue's Redis. A prelabel "
    "run without REDIS_URL runs the model in its own process and is not recorded: its progress "
    "bar is its status, and Ctrl-C (or SIGTERM to its pid) stops it."
)


def _redis(args: argparse.Namespace) -> Redis | None:
    from varco_labeler.queue import connect
    from varco_labeler.settings import Settings, SettingsError, reveal

    try:
        url = reveal(Settings.from_env(redis_url=args.redis_url).redis_url)
    except SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        return None
    if not url:
        print(f"error: {NO_REDIS}", file=sys.stderr)
        return None
    return connect(url)


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _table(runs: list[Run], now: float) -> str:
    rows = [("RUN", "PROJECT", "STATE", *(s.value.upper() for s in TaskState), "TOTAL", "AGE")]
    for run in runs:
        counts = [str(run.counts.get(state.value, 0)) for state in TaskState]
        age = _age(now - run.started_at)
        rows.append((run.id, str(run.project), run.state.value, *counts, str(run.total), age))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _detail(run: Run, tasks: dict[str, dict[str, str]], now: float) -> str:
    ended = f", ended {_age(now - run.ended_at)} ago" if run.ended_at else ""
    counts = ", ".join(f"{run.counts.get(state.value, 0)} {state.value}" for state in TaskState)
    lines = [
        f"run {run.id}: {run.state.value}" + (f" ({run.message})" if run.message else ""),
        f"  project {run.project}, model version {run.model_version}",
        f"  started {_age(now - run.started_at)} ago on {run.host} (pid {run.pid}){ended}",
        f"  {run.total} task(s): {counts}; {run.skipped} skipped (already predicted)",
    ]
    if run.state is RunState.LOST:
        lines.append(f"  no heartbeat for {_age(now - run.updated_at)}: its process is gone")
    if run.cancel_requested and run.active:
        lines.append("  cancel requested: stopping")
    lines += [
        f"  task {task} failed: {value.get('reason', '')}"
        for task, value in tasks.items()
        if value["state"] == TaskState.FAILED
    ]
    return "\n".join(lines)


def _status(args: argparse.Namespace) -> int:
    redis = _redis(args)
    if redis is None:
        return 2
    now = time.time()
    try:
        if args.run is None:
            runs = recent_runs(redis, args.limit)
            if args.json:
                print(json.dumps([run.to_json() for run in runs], indent=1))
            else:
                print(_table(runs, now) if runs else "no prelabel runs recorded")
            return 0
        run = read_run(redis, args.run)
        if run is None:
            print(f"error: no run {args.run!r} (ended runs are kept 7 days)", file=sys.stderr)
            return 2
        tasks = task_states(redis, run.id)
    except RedisError as error:
        print(f"error: Redis unreachable ({type(error).__name__}: {error})", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(run.to_json() | {"tasks": tasks}, indent=1))
    else:
        print(_detail(run, tasks, now))
    return 0


def _cancel(args: argparse.Namespace) -> int:
    redis = _redis(args)
    if redis is None:
        return 2
    try:
        run = request_cancel(redis, args.run)
    except RedisError as error:
        print(f"error: Redis unreachable ({type(error).__name__}: {error})", file=sys.stderr)
        return 2
    if run is None:
        print(f"error: no run {args.run!r}", file=sys.stderr)
        return 2
    if run.state is RunState.LOST:
        from varco_labeler.queue import RQDispatcher
        from varco_labeler.settings import Settings

        settings = Settings.from_env(redis_url=args.redis_url)  # as _redis read it
        cancelled, running = cancel_lost(RQDispatcher(settings, redis), run)
        print(
            f"run {run.id}: its process ({run.host}, pid {run.pid}) stopped writing "
            f"{_age(time.time() - run.updated_at)} ago. {cancelled} queued job(s) cancelled; "
            f"{running} job(s) a worker had started finish and push their predictions. "
            "`prelabel` again finishes the rest."
        )
        return 0
    if not run.active:
        print(f"run {run.id} has already ended: {run.state.value}", file=sys.stderr)
        return 1
    print(
        f"run {run.id} (project {run.project}): cancel requested. Within seconds its prelabel "
        "process cancels the jobs no worker has started, waits for the running ones to push "
        "their predictions, and exits; `prelabel` again finishes the rest."
    )
    return 0


def add_command(commands: argparse._SubParsersAction) -> None:
    status = commands.add_parser(
        "status",
        help="show prelabel runs and their progress (queue mode, REDIS_URL)",
        description="Without RUN: a table of the latest prelabel runs (id, project, state, task "
        "counts, age). With RUN: that run, and every failed task with its reason. Runs are "
        "recorded in the queue's Redis (REDIS_URL), so this works from any shell or machine "
        "that reaches it; ended runs are kept 7 days.",
    )
    status.add_argument("run", nargs="?", help="a run id, as prelabel printed it")
    status.add_argument("--limit", type=int, default=20, help="runs in the table (default 20)")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.add_argument("--redis-url", help="the queue's Redis (env REDIS_URL)")
    status.set_defaults(handler=_status)

    cancel = commands.add_parser(
        "cancel",
        help="stop a prelabel run from another shell",
        description="Ask a prelabel run to stop: its process cancels the jobs no worker has "
        "started, waits for the running ones to push (nothing is lost or pushed twice), marks "
        "the rest cancelled and exits with a non-zero status. A run whose process is lost (no "
        "heartbeat for a minute) is ended here: its queued jobs are cancelled, started ones "
        "finish. Running prelabel again on the project finishes what is left.",
    )
    cancel.add_argument("run", help="a run id, as prelabel printed it")
    cancel.add_argument("--redis-url", help="the queue's Redis (env REDIS_URL)")
    cancel.set_defaults(handler=_cancel)
