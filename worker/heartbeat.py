"""A SimpleWorker that keeps heartbeating while a job runs.

RQ's SimpleWorker runs jobs in its own process (the engine stays loaded, CUDA is never forked)
but sends no heartbeat during a job, so a killed worker's job looks alive until job_timeout + 60 s.
Heartbeating from a thread with a short TTL lets a dead worker's job be requeued within seconds.
"""

from __future__ import annotations

import threading

from rq import SimpleWorker
from rq.job import Job
from rq.queue import Queue


class HeartbeatWorker(SimpleWorker):
    heartbeat_interval: int = 5

    def get_heartbeat_ttl(self, job: Job) -> int:
        # Three missed beats mean the worker is gone; the job timeout still bounds the job itself.
        return min(3 * self.heartbeat_interval, int(job.timeout or 3 * self.heartbeat_interval))

    def execute_job(self, job: Job, queue: Queue) -> None:
        done = threading.Event()

        def beat() -> None:
            while not done.wait(self.heartbeat_interval):
                try:
                    self.maintain_heartbeats(job)
                except Exception:  # a missed beat is retried; the job must not die of it
                    self.log.warning("heartbeat for job %s failed", job.id, exc_info=True)

        beater = threading.Thread(target=beat, name="heartbeat", daemon=True)
        beater.start()
        try:
            super().execute_job(job, queue)
        finally:
            done.set()
            beater.join()
