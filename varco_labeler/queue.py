"""Getting work done: on RQ workers through Redis, or in this process (the embedded mode).

Both dispatchers take the same items, split them into batches (one GPU batch per job), and return
within a deadline with whatever finished: an item that did not finish comes back as ``None`` and
its job keeps running, so its output is cached for the next request.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Any, Protocol, TypeVar

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, Retry, Worker
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from rq.results import Result
from rq.results import get_key as result_key
from rq.serializers import JSONSerializer

from varco_labeler.jobs import PREDICT_BATCH
from varco_labeler.settings import Settings

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


# Worker name -> the model version it runs, written by each worker when it starts.
WORKER_VERSIONS = "varco:worker-versions"


class Dispatcher(Protocol):
    def run(self, items: Sequence[Item], deadline: float) -> list[Output | None]:
        """Outputs in item order; ``None`` for items not finished within ``deadline`` seconds."""
        ...

    def status(self) -> dict[str, Any]: ...

    def model_versions(self) -> dict[str, str]:
        """The model version each live worker runs (empty when this process runs the model)."""
        ...


def batches(items: Sequence[T], size: int) -> list[list[T]]:
    return [list(items[start : start + size]) for start in range(0, len(items), size)]


def connect(redis_url: str) -> Redis:
    # Short timeouts: a dead Redis must turn into a clear error, not a hung request.
    return Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=10)


class RQDispatcher:
    """Enqueues batches on an RQ queue (JSON serializer: a job in Redis can never run code)."""

    def __init__(self, settings: Settings, redis: Redis | None = None) -> None:
        assert settings.redis_url, "RQDispatcher needs REDIS_URL"
        self.settings = settings
        self.redis = redis or connect(settings.redis_url)
        self.queue = Queue(settings.queue_name, connection=self.redis, serializer=JSONSerializer)
        self._last_rescue = 0.0

    def submit(self, function: str, calls: Sequence[tuple[Any, ...]]) -> list[Job]:
        """Enqueue one job per argument tuple, in one round trip."""
        s = self.settings
        specs = [
            Queue.prepare_data(
                function,
                args=args,
                timeout=s.job_timeout,
                result_ttl=s.result_ttl,
                failure_ttl=s.result_ttl,
                retry=Retry(max=s.job_retries) if s.job_retries else None,
            )
            for args in calls
        ]
        try:
            return self.queue.enqueue_many(specs)
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

    def run(self, items: Sequence[Item], deadline: float) -> list[Output | None]:
        jobs = self.submit(
            PREDICT_BATCH, [(batch,) for batch in batches(items, self.settings.batch_size)]
        )
        outputs: dict[str, Output] = {}
        finished = 0
        for job, value, error in self.completions(jobs, deadline):
            finished += 1
            if error:
                log.error("job %s failed: %s", job.id, error)
                continue
            outputs.update((output["key"], output) for output in value or [])
        if finished < len(jobs):
            log.warning(
                "%d job(s) unfinished at the %.0f s deadline", len(jobs) - finished, deadline
            )
        return [outputs.get(item["key"]) for item in items]

    def cancel_queued(self, jobs: Sequence[Job]) -> list[str]:
        """Cancel jobs no worker has started (running ones go on); returns their ids."""
        cancelled = []
        for job in Job.fetch_many([job.id for job in jobs], self.redis, serializer=JSONSerializer):
            if job is not None and job.get_status(refresh=False) == JobStatus.QUEUED:
                job.cancel()
                cancelled.append(job.id)
        return cancelled

    def started_or_done(self, job_ids: Sequence[str]) -> set[str]:
        """Which of these jobs a worker has taken (running, finished or failed)."""
        taken = {JobStatus.STARTED, JobStatus.FINISHED, JobStatus.FAILED}
        jobs = Job.fetch_many(list(job_ids), self.redis, serializer=JSONSerializer)
        return {
            job.id for job in jobs if job is not None and job.get_status(refresh=False) in taken
        }

    def _rescue_abandoned(self) -> None:
        """Requeue jobs whose worker stopped heartbeating (killed, machine lost)."""
        if time.monotonic() - self._last_rescue < RESCUE_INTERVAL:
            return
        self._last_rescue = time.monotonic()
        StartedJobRegistry(queue=self.queue).cleanup()

    def status(self) -> dict[str, Any]:
        try:
            self.redis.ping()
            return {
                "redis": "ok",
                "workers": Worker.count(queue=self.queue),
                "queued_jobs": self.queue.count,
                "running_jobs": StartedJobRegistry(queue=self.queue).count,
                "failed_jobs": self.queue.failed_job_registry.count,
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
    """Runs batches in this process, one at a time (one GPU), on a background thread."""

    def __init__(self, run_batch: Callable[[list[Item]], list[Output]], batch_size: int) -> None:
        self.run_batch = run_batch
        self.batch_size = batch_size
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self._pending = 0
        self._lock = threading.Lock()

    def _submit(self, batch: list[Item]) -> Future[list[Output]]:
        with self._lock:
            self._pending += 1
        future = self._executor.submit(self.run_batch, batch)
        future.add_done_callback(self._done)
        return future

    def _done(self, _: Future[list[Output]]) -> None:
        with self._lock:
            self._pending -= 1

    def run(self, items: Sequence[Item], deadline: float) -> list[Output | None]:
        futures = [self._submit(batch) for batch in batches(items, self.batch_size)]
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
        return {"mode": "embedded", "queued_batches": self._pending}

    def model_versions(self) -> dict[str, str]:
        return {}


def _last_line(text: str | None, fallback: str) -> str:
    return text.strip().splitlines()[-1] if text and text.strip() else fallback.lower()
