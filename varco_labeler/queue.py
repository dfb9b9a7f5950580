"""Getting work done: on RQ workers through Redis, or in this process (the embedded mode).

Both dispatchers take the same items, split them into batches (one GPU batch per job), and return
within a deadline with whatever finished: an item that did not finish comes back as ``None`` and
its job keeps running, so its output is cached for the next request.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from enum import StrEnum
from typing import Any, Protocol, TypeVar

from pydantic import SecretStr
from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, Retry, Worker
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from rq.results import Result
from rq.results import get_key as result_key
from rq.serializers import JSONSerializer

from varco_labeler.jobs import PREDICT_BATCH, PRELABEL_BATCH
from varco_labeler.settings import Settings, reveal

log = logging.getLogger(__name__)

T = TypeVar("T")
Item = dict[str, Any]
Output = dict[str, Any]
# How often a waiting backend requeues jobs of workers that died (their heartbeat expired).
RESCUE_INTERVAL = 2.0
# Result types after which RQ does nothing more with a job (RETRIED means it runs again).
_FINAL = frozenset(
    {
        Result.Type.SUCCESSFUL,
        Result.Type.FAILED,
        Result.Type.STOPPED,
        Result.Type.MAX_RETRIES_EXCEEDED,
    }
)


class QueueUnavailable(RuntimeError):
    """Redis cannot be reached; the message says where and why."""


# Worker name -> the model version it runs, written by each worker when it starts (and swaps).
WORKER_VERSIONS = "varco:worker-versions"
# A task's item queued or running: "varco:in-flight:<sha256 of the task, image, prompt, task kind
# and model version>"
# holds {"job": job id, "key": the item's key in that job, "at": when it was claimed}.
IN_FLIGHT = "varco:in-flight:"
# The name the embedded mode's engine goes by, as a worker's would.
EMBEDDED = "embedded"
# A claim whose job is not in Redis yet (its enqueue is under way) counts for this many seconds.
CLAIM_GRACE = 10.0
_LIVE = frozenset({JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED, JobStatus.SCHEDULED})


class Priority(StrEnum):
    """Which queue a job waits in. Workers listen to all three, highest first (RQ takes the
    first non-empty queue in order), so interactive work never waits behind bulk work."""

    HIGH = "high"  # someone waits in the editor: a region drawn, a phrase typed
    NORMAL = "normal"  # other /predict work: a task opened, "Retrieve predictions"
    LOW = "low"  # prelabel runs


def queue_name(base: str, priority: Priority) -> str:
    """The RQ queue of a priority: ``varco-high``, ``varco`` (normal, as before), ``varco-low``."""
    return base if priority is Priority.NORMAL else f"{base}-{priority.value}"


def queue_names(base: str) -> list[str]:
    """The queues a worker listens to, in the order it takes them."""
    return [queue_name(base, priority) for priority in Priority]


class Dispatcher(Protocol):
    def run(
        self, items: Sequence[Item], deadline: float, priority: Priority = Priority.NORMAL
    ) -> list[Output | None]:
        """Outputs in item order; ``None`` for items not finished within ``deadline`` seconds."""
        ...

    def status(self) -> dict[str, Any]: ...

    def model_versions(self) -> dict[str, str]:
        """The model version each live worker runs ("embedded": this process's engine)."""
        ...


def batches(items: Sequence[T], size: int) -> list[list[T]]:
    return [list(items[start : start + size]) for start in range(0, len(items), size)]


def connect(redis_url: str | SecretStr) -> Redis:
    # Short timeouts: a dead Redis must turn into a clear error, not a hung request.
    return Redis.from_url(reveal(redis_url) or "", socket_connect_timeout=2, socket_timeout=10)


class RQDispatcher:
    """Enqueues batches on an RQ queue (JSON serializer: a job in Redis can never run code)."""

    def __init__(self, settings: Settings, redis: Redis | None = None) -> None:
        assert settings.redis_url, "RQDispatcher needs REDIS_URL"
        self.settings = settings
        self.redis = redis or connect(settings.redis_url)
        self.queues = {
            priority: Queue(
                queue_name(settings.queue_name, priority),
                connection=self.redis,
                serializer=JSONSerializer,
            )
            for priority in Priority
        }
        self.queue = self.queues[Priority.NORMAL]
        self._last_rescue = 0.0

    def submit(
        self,
        function: str,
        calls: Sequence[tuple[Any, ...]],
        priority: Priority | None = None,
        job_ids: Sequence[str] | None = None,
        *,
        at_front: bool = False,
    ) -> list[Job]:
        """Enqueue one job per argument tuple, in one round trip. ``priority``: prelabel jobs
        default to LOW, the others to NORMAL; ``at_front``: ahead of that queue's others."""
        s = self.settings
        if priority is None:
            priority = Priority.LOW if function == PRELABEL_BATCH else Priority.NORMAL
        ids = list(job_ids) if job_ids is not None else [None] * len(calls)
        specs = [
            Queue.prepare_data(
                function,
                args=args,
                timeout=s.job_timeout,
                result_ttl=s.result_ttl,
                failure_ttl=s.result_ttl,
                retry=Retry(max=s.job_retries) if s.job_retries else None,
                job_id=job_id,
                at_front=at_front,
            )
            for args, job_id in zip(calls, ids, strict=True)
        ]
        try:
            return self.queues[priority].enqueue_many(specs)
        except RedisError as error:
            raise QueueUnavailable(self._unreachable(error)) from error

    def completions(
        self, jobs: Sequence[Job], deadline: float = math.inf
    ) -> Iterator[tuple[Job, Any, str | None]]:
        """Yield (job, return value, error) as jobs finish or fail for good, until the deadline.

        Blocks on RQ's result streams (XREAD over every waiting job), so a result is seen the
        moment a worker writes it. Every RESCUE_INTERVAL it also requeues the jobs of workers that
        died, and notices cancelled jobs (which write no result).
        """
        give_up_at = time.monotonic() + deadline
        waiting = {job.id: job for job in jobs}
        seen = dict.fromkeys(waiting, "0-0")
        try:
            while waiting and (remaining := give_up_at - time.monotonic()) > 0:
                self._rescue_abandoned()
                block_ms = max(1, int(min(remaining, RESCUE_INTERVAL) * 1000))
                streams = {result_key(job_id): seen[job_id] for job_id in waiting}
                arrived = self.redis.xread(streams, block=block_ms) or []
                for key, entries in arrived:
                    job_id = key.decode().removeprefix(result_key(""))
                    for entry_id, payload in entries:
                        seen[job_id] = entry_id.decode()
                        result = Result.restore(
                            job_id, seen[job_id], payload, self.redis, JSONSerializer
                        )
                        if job_id in waiting and result.type in _FINAL:
                            job = waiting.pop(job_id)
                            if result.type == Result.Type.SUCCESSFUL:
                                yield job, result.return_value, None
                            else:
                                yield job, None, _last_line(result.exc_string, result.type.name)
                if not arrived:
                    yield from self._cancelled(waiting)
        except RedisError as error:
            raise QueueUnavailable(self._unreachable(error)) from error

    def _cancelled(self, waiting: dict[str, Job]) -> Iterator[tuple[Job, Any, str | None]]:
        for job in Job.fetch_many(list(waiting), self.redis, serializer=JSONSerializer):
            if job is not None and job.get_status(refresh=False) == JobStatus.CANCELED:
                del waiting[job.id]
                yield job, None, "job canceled"

    def run(
        self, items: Sequence[Item], deadline: float, priority: Priority = Priority.NORMAL
    ) -> list[Output | None]:
        """Enqueue the items on ``priority``'s queue and wait for them. A task's item already
        queued or running (the same image, prompt, task kind and model version) is not enqueued
        again: it waits for that job (so asking twice for unfinished tasks adds no work)."""
        try:
            places = self._place(items, priority)
        except RedisError as error:
            raise QueueUnavailable(self._unreachable(error)) from error
        job_ids = list(dict.fromkeys(job_id for job_id, _ in places))
        jobs = [Job(job_id, connection=self.redis, serializer=JSONSerializer) for job_id in job_ids]
        outputs: dict[tuple[str, str], Output] = {}
        finished = 0
        for job, value, error in self.completions(jobs, deadline):
            finished += 1
            if error:
                log.error("job %s failed: %s", job.id, error)
                continue
            outputs.update(((job.id, output["key"]), output) for output in value or [])
        if finished < len(jobs):
            log.warning(
                "%d job(s) unfinished at the %.0f s deadline", len(jobs) - finished, deadline
            )
        results: list[Output | None] = []
        for item, place in zip(items, places, strict=True):
            output = outputs.get(place)
            results.append(None if output is None else {**output, "key": item["key"]})
        return results

    def _place(self, items: Sequence[Item], priority: Priority) -> list[tuple[str, str]]:
        """(job id, key in that job) for each item: a live job that already has it, or a new one
        on ``priority``'s queue. Claims are SET NX, so two requests racing enqueue it once."""
        version = self._version()
        keys = [_in_flight_key(item, version) for item in items]
        claims = self._claims(set(keys))
        places = self._live(claims)
        fresh: dict[str, Item] = {}
        for item, key in zip(items, keys, strict=True):
            if key not in places:
                fresh.setdefault(key, item)
        if stale := set(fresh) & set(claims):  # their jobs are done: claim them anew
            self.redis.delete(*stale)
        ttl = self.settings.job_timeout * (self.settings.job_retries + 1) + 60
        planned: list[tuple[str, list[tuple[str, Item]]]] = [
            (str(uuid.uuid4()), batch)
            for batch in batches(list(fresh.items()), self.settings.batch_size)
        ]
        pipe = self.redis.pipeline(transaction=False)
        for job_id, batch in planned:
            for key, item in batch:
                claim = {"job": job_id, "key": item["key"], "at": time.time()}
                pipe.set(key, json.dumps(claim), nx=True, ex=ttl)
        won = iter(pipe.execute())
        calls, ids = [], []
        lost = set()
        for job_id, batch in planned:
            mine = []
            for key, item in batch:
                if next(won):
                    places[key] = (job_id, item["key"])
                    mine.append(item)
                else:  # another request claimed it a moment ago: wait for its job
                    lost.add(key)
            if mine:
                calls.append((mine,))
                ids.append(job_id)
        if lost:  # whatever state its job is in now, it has (or will have) the output
            places.update(
                (key, (claim["job"], claim["key"])) for key, claim in self._claims(lost).items()
            )
        if calls:
            self.submit(PREDICT_BATCH, calls, priority, ids)
        joined = len(set(keys) - set(fresh)) + len(lost)
        if joined:
            log.info("%d item(s) already queued or running: waiting for their job", joined)
        return [places[key] for key in keys]

    def _claims(self, keys: set[str]) -> dict[str, dict[str, Any]]:
        """The in-flight claims held on ``keys``."""
        ordered = sorted(keys)
        values = self.redis.mget(ordered) if ordered else []
        found = zip(ordered, values, strict=True)
        return {key: json.loads(value) for key, value in found if value}

    def _live(self, claims: dict[str, dict[str, Any]]) -> dict[str, tuple[str, str]]:
        """(job id, item key) of the claims whose job is queued or running (or being enqueued:
        claimed under CLAIM_GRACE seconds ago and not in Redis yet)."""
        if not claims:
            return {}
        job_ids = [claim["job"] for claim in claims.values()]
        jobs = Job.fetch_many(job_ids, self.redis, serializer=JSONSerializer)
        status = {job.id: job.get_status(refresh=False) for job in jobs if job is not None}
        live = {}
        for key, claim in claims.items():
            state = status.get(claim["job"])
            enqueuing = state is None and time.time() - claim["at"] < CLAIM_GRACE
            if state in _LIVE or enqueuing:
                live[key] = (claim["job"], claim["key"])
        return live

    def _version(self) -> str:
        """The model version the workers run (outputs depend on it), else this process's."""
        versions = sorted(set(self.model_versions().values()))
        return ",".join(versions) or self.settings.version

    def fetch(self, job_id: str) -> Job:
        """A job by id (one a worker enqueued, such as a prelabel job's continuation)."""
        return Job.fetch(job_id, connection=self.redis, serializer=JSONSerializer)

    def cancel_queued(self, jobs: Sequence[Job]) -> list[str]:
        """Cancel jobs no worker has started (running ones go on); returns their ids."""
        cancelled = []
        for job in Job.fetch_many([job.id for job in jobs], self.redis, serializer=JSONSerializer):
            if job is not None and job.get_status(refresh=False) == JobStatus.QUEUED:
                job.cancel()
                cancelled.append(job.id)
        return cancelled

    def cancel_unstarted(self, jobs: Sequence[Job]) -> list[str]:
        """Cancel the jobs no worker has started; returns the ids of those that stay cancelled.
        A worker may take a job in the instant before its cancel: one that started anyway is
        left out, to run and push (a run restarted at once must wait for it, not race it)."""
        cancelled = self.cancel_queued(jobs)
        time.sleep(1.0)  # that instant, and then some
        started = self.started_or_done(cancelled)
        return [job_id for job_id in cancelled if job_id not in started]

    def started_or_done(self, job_ids: Sequence[str]) -> set[str]:
        """Which of these jobs a worker has taken (running, finished or failed)."""
        taken = {JobStatus.STARTED, JobStatus.FINISHED, JobStatus.FAILED}
        jobs = Job.fetch_many(list(job_ids), self.redis, serializer=JSONSerializer)
        return {
            job.id for job in jobs if job is not None and job.get_status(refresh=False) in taken
        }

    def running(self, job_ids: Collection[str]) -> set[str]:
        """Which of these jobs a worker is running now (read from the started registries)."""
        pipe = self.redis.pipeline(transaction=False)
        for queue in self.queues.values():
            pipe.zrange(StartedJobRegistry(queue=queue).key, 0, -1)
        members = (member for found in pipe.execute() for member in found)
        return {StartedJobRegistry.parse_job_id(member) for member in members} & set(job_ids)

    def _rescue_abandoned(self) -> None:
        """Requeue jobs whose worker stopped heartbeating (killed, machine lost)."""
        if time.monotonic() - self._last_rescue < RESCUE_INTERVAL:
            return
        self._last_rescue = time.monotonic()
        for queue in self.queues.values():
            StartedJobRegistry(queue=queue).cleanup()

    def status(self) -> dict[str, Any]:
        try:
            self.redis.ping()
            queued = {priority.value: queue.count for priority, queue in self.queues.items()}
            return {
                "redis": "ok",
                "workers": Worker.count(queue=self.queue),
                "queued_jobs": sum(queued.values()),
                "queued_by_priority": queued,
                "running_jobs": sum(
                    StartedJobRegistry(queue=queue).count for queue in self.queues.values()
                ),
                "failed_jobs": sum(
                    queue.failed_job_registry.count for queue in self.queues.values()
                ),
            }
        except RedisError as error:
            return {"redis": self._unreachable(error)}

    def model_versions(self) -> dict[str, str]:
        try:
            live = {worker.name for worker in Worker.all(queue=self.queue)}
            published = self.redis.hgetall(WORKER_VERSIONS)
        except RedisError:
            return {}
        versions = {name.decode(): version.decode() for name, version in published.items()}
        return {name: version for name, version in versions.items() if name in live}

    def _unreachable(self, error: Exception) -> str:
        where = self.redis.connection_pool.connection_kwargs
        return (
            f"Redis at {where.get('host', '?')}:{where.get('port', '?')} is unreachable "
            f"({type(error).__name__}: {error})"
        )


class InlineDispatcher:
    """Runs batches in this process, one at a time (one GPU), on a background thread; the
    waiting batch of the highest priority goes next."""

    def __init__(
        self,
        run_batch: Callable[[list[Item]], list[Output]],
        batch_size: int,
        engine_version: Callable[[], str] | None = None,
    ) -> None:
        """``engine_version``: the version this process's engine runs (it changes with a model
        release), reported as the "embedded" worker's."""
        self.run_batch = run_batch
        self.batch_size = batch_size
        self.engine_version = engine_version
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self._pending = 0
        self._lock = threading.Lock()
        self._waiting: list[tuple[int, int, list[Item], Future[list[Output]]]] = []
        self._order = 0

    def _submit(self, batch: list[Item], priority: Priority) -> Future[list[Output]]:
        future: Future[list[Output]] = Future()
        with self._lock:
            self._pending += 1
            self._order += 1
            rank = list(Priority).index(priority)
            heapq.heappush(self._waiting, (rank, self._order, batch, future))
        # One engine call per batch; each takes whichever waiting batch ranks first.
        self._executor.submit(self._run_next)
        return future

    def _run_next(self) -> None:
        with self._lock:
            _, _, batch, future = heapq.heappop(self._waiting)
        try:
            future.set_result(self.run_batch(batch))
        except BaseException as error:  # reported to the request that waits for it
            future.set_exception(error)
        finally:
            with self._lock:
                self._pending -= 1

    def run(
        self, items: Sequence[Item], deadline: float, priority: Priority = Priority.NORMAL
    ) -> list[Output | None]:
        futures = [self._submit(batch, priority) for batch in batches(items, self.batch_size)]
        wait_futures(futures, timeout=deadline)
        outputs: dict[str, Output] = {}
        for future in futures:
            if not future.done():
                continue
            if future.exception() is not None:
                log.error("batch failed: %r", future.exception())
                continue
            outputs.update((output["key"], output) for output in future.result())
        return [outputs.get(item["key"]) for item in items]

    def status(self) -> dict[str, Any]:
        with self._lock:
            ranks = [rank for rank, *_ in self._waiting]
        queued = {priority.value: ranks.count(rank) for rank, priority in enumerate(Priority)}
        return {"mode": "embedded", "queued_batches": self._pending, "queued_by_priority": queued}

    def model_versions(self) -> dict[str, str]:
        return {EMBEDDED: self.engine_version()} if self.engine_version else {}


def _in_flight_key(item: Item, version: str) -> str:
    """The same task asked the same thing of the same image and model version: one job does."""
    task = item.get("task_id", item["key"])
    identity = json.dumps([task, item["image"], item["prompt"], item["task"], version])
    return IN_FLIGHT + hashlib.sha256(identity.encode()).hexdigest()


def _last_line(text: str | None, fallback: str) -> str:
    return text.strip().splitlines()[-1] if text and text.strip() else fallback.lower()
