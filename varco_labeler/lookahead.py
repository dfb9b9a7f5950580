"""The next job, begun before the current one ends: a worker's GPU kept busy from job to job.

RQ hands a worker one job at a time, so between two jobs the GPU would wait for the last push of
the one (an import into Label Studio) and the first images of the next (downloads, decoding). A
worker with a :class:`Lookahead` claims, as a job starts, the job it will run next: the first
queued bulk job that no other worker has claimed. That job's first images are fetched on the
download threads after the current job's own; while the current job's last predictions are
pushed, its first GPU batch runs, into the output cache; and the worker then takes the claimed job
out of its queue itself, unless work of a higher priority waits (RQ's order is kept).

A claim is only a hint between workers: the job stays in its queue until it is taken, so an idle
worker may take it first (the claim is then dropped, and what was computed ahead waits in the
shared output cache for whoever runs it). Nothing is lost when a worker holding a claim dies: its
job is still queued, and the claim expires.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from redis import Redis
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.queue import Queue
from rq.serializers import JSONSerializer
from rq.worker import Worker

from varco_labeler.settings import Settings

log = logging.getLogger(__name__)

CLAIM = "varco:lookahead:"  # + job id -> the name of the worker that will run it next
WINDOW = 32  # queued jobs looked at, from the front, for one not claimed yet
Download = Future[Any]  # what jobs._download gives: (image, bytes) or an ImageError


@dataclass
class Claim:
    """A queued job this worker will run next, and its first images, being fetched."""

    job_id: str
    queue: Queue
    items: list[dict[str, Any]]
    downloads: dict[str, Download] = field(default_factory=dict)  # by image reference


class Lookahead:
    """One worker's claim on its next job (see the module's docstring).

    ``queues``: the worker's queues in the order it takes them; ``claimable``: those whose jobs
    may be claimed (the bulk ones: interactive jobs are taken at once by an idle worker anyway).
    ``images``: how many of the next job's images to fetch ahead (two GPU batches: the first
    runs ahead, the second is ready when the job starts).
    """

    def __init__(
        self,
        connection: Redis,
        worker: str,
        queues: Sequence[Queue],
        claimable: Sequence[Queue],
        *,
        images: int = 16,
    ) -> None:
        self.connection, self.worker = connection, worker
        self.queues, self.claimable = list(queues), list(claimable)
        self.images = images
        self.claimed: Claim | None = None

    @classmethod
    def for_worker(cls, worker: Worker, settings: Settings) -> Lookahead | None:
        """A worker's lookahead, unless the settings turn it off (VARCO_LOOKAHEAD=0)."""
        if not settings.lookahead:
            return None
        bulk = worker.queues[1:]  # interactive jobs are taken at once by an idle worker anyway
        images = 2 * settings.batch_size  # one batch to run ahead, one ready to start with
        return cls(worker.connection, worker.name, worker.queues, bulk, images=images)

    def handover(self, job_id: str | None) -> dict[str, Download]:
        """A job starts: its images fetched ahead, by reference, if it is the claimed one. A
        claim on another job is kept: the worker runs work of a higher priority first (see
        :meth:`take`), then comes back to it."""
        claim = self.claimed
        if claim is None or claim.job_id != job_id:
            return {}
        self.claimed = None
        self._unclaim(claim.job_id)
        return claim.downloads

    def claim_next(self, fetch: Callable[[str], Download], job_timeout: int) -> Claim | None:
        """Claim the first queued job that no worker has claimed, and start fetching its first
        images with ``fetch`` (after what is already on the download threads)."""
        if self.claimed is not None:
            return self.claimed
        for queue in self.claimable:
            for raw in self.connection.lrange(queue.key, 0, WINDOW - 1):
                job_id = raw.decode()
                key = CLAIM + job_id
                if not self.connection.set(key, self.worker, nx=True, ex=job_timeout):
                    continue
                items = self._items(job_id)
                if not items:
                    self.connection.delete(key)
                    continue
                ahead = items[: self.images]
                downloads = {}
                for item in ahead:
                    downloads.setdefault(item["image"], fetch(item["image"]))
                self.claimed = Claim(job_id, queue, ahead, downloads)
                log.debug("claimed job %s: %d image(s) fetched ahead", job_id, len(downloads))
                return self.claimed
        return None

    def still_claimed(self) -> Claim | None:
        """The claim, if its job still waits in its queue (not taken by another worker, nor
        cancelled): worth running ahead."""
        claim = self.claimed
        if claim is not None and self.connection.lpos(claim.queue.key, claim.job_id) is None:
            self.release()
            return None
        return claim

    def take(self) -> tuple[Job, Queue] | None:
        """The worker's next job: the claimed one, out of its queue, unless a job of a higher
        priority waits (RQ takes that first) or another worker took it (claim dropped)."""
        claim = self.claimed
        if claim is None:
            return None
        higher = self.queues[: self.queues.index(claim.queue)]
        if any(queue.count for queue in higher):
            return None
        if not self.connection.lrem(claim.queue.key, 1, claim.job_id):
            self.release()  # taken by another worker, or cancelled
            return None
        try:
            job = Job.fetch(claim.job_id, connection=self.connection, serializer=JSONSerializer)
        except NoSuchJobError:
            self.release()
            return None
        return job, claim.queue

    def release(self) -> None:
        """Give the claim up: its job was taken by another worker or cancelled, or this worker
        stops."""
        claim, self.claimed = self.claimed, None
        if claim is None:
            return
        self._unclaim(claim.job_id)
        for download in claim.downloads.values():
            download.cancel()

    def _items(self, job_id: str) -> list[dict[str, Any]] | None:
        try:
            job = Job.fetch(job_id, connection=self.connection, serializer=JSONSerializer)
        except NoSuchJobError:
            return None
        from varco_labeler.jobs import PREDICT_BATCH, PRELABEL_BATCH  # jobs imports this module

        # Where a job function keeps its items: predict_batch(items), prelabel_batch(project,
        # policy, items).
        position = {PREDICT_BATCH: 0, PRELABEL_BATCH: 2}.get(job.func_name)
        if position is None or len(job.args) <= position:
            return None
        items = job.args[position]
        return items if isinstance(items, list) else None

    def _unclaim(self, job_id: str) -> None:
        key = CLAIM + job_id
        if self.connection.get(key) == self.worker.encode():
            self.connection.delete(key)
