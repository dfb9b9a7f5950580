"""A SimpleWorker that keeps heartbeating while a job runs, and gives up a job that stalls.

RQ's SimpleWorker runs jobs in its own process (the engine stays loaded, CUDA is never forked)
but sends no heartbeat during a job, so a killed worker's job looks alive until job_timeout + 60 s.
Heartbeating from a thread with a short TTL lets a dead worker's job be requeued within seconds.

A heartbeat proves that the process lives, not that its job moves: a GPU call that never returns
would heartbeat forever. With a stall timeout the same thread also watches engine.progress (each
image fetched, batch done, generation step): a job without progress for that long is failed the
way RQ fails any job (requeued while it has retries left), the worker unregisters, and the process
ends with STALLED_EXIT_CODE (worker/supervisor.py starts it again). It has to end: a thread stuck
in a CUDA call cannot be interrupted from Python (no signal handler or exception reaches it), so
the watchdog ends the process with os._exit instead of raising into the stuck thread.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import NoReturn

from redis.exceptions import RedisError
from rq import SimpleWorker
from rq.job import Job
from rq.queue import Queue

from varco_labeler.engine import progress
from varco_labeler.lookahead import Lookahead
from varco_labeler.queue import WORKER_VERSIONS

# EX_TEMPFAIL: the worker gave up a stalled job and wants to be started again.
STALLED_EXIT_CODE = 75


class HeartbeatWorker(SimpleWorker):
    heartbeat_interval: int = 5
    # Seconds without progress after which a job is given up; 0: never.
    stall_timeout: float = 0.0
    # The job this worker claimed to run next (varco_labeler.lookahead); None: RQ's order alone.
    lookahead: Lookahead | None = None

    def get_heartbeat_ttl(self, job: Job) -> int:
        # Three missed beats mean the worker is gone; the job timeout still bounds the job itself.
        return min(3 * self.heartbeat_interval, int(job.timeout or 3 * self.heartbeat_interval))

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[Job, Queue] | None:
        taken = self.lookahead.take() if self.lookahead is not None else None
        if taken is None:
            return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
        job, queue = taken
        self.heartbeat()
        self.log.info("Worker %s: %s: %s (claimed ahead)", self.name, queue.name, job.id)
        return taken

    def execute_job(self, job: Job, queue: Queue) -> None:
        done = threading.Event()
        progress.report()  # the job's clock starts now, not at the previous job's last step

        def beat() -> None:
            while not done.wait(self.heartbeat_interval):
                if self.stall_timeout and progress.seconds_since() > self.stall_timeout:
                    self._give_up_stalled(job, queue)
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

    def _give_up_stalled(self, job: Job, queue: Queue) -> NoReturn:
        """Fail the job (RQ requeues it while it has retries left), unregister, end the process."""
        idle = progress.seconds_since()
        self.log.error(
            "job %s made no progress for %.0f s (limit %.0f s): giving it up, worker restarts",
            job.id,
            idle,
            self.stall_timeout,
        )
        try:
            reason = f"JobStalled: no progress for {idle:.0f} s on worker {self.name}"
            self.handle_job_failure(job, queue, exc_string=reason)
            self.register_death()  # so that a restarted worker may take the same name at once
            self.connection.hdel(WORKER_VERSIONS, self.name)
        except RedisError:  # the job's heartbeat stops with us: RQ requeues it as abandoned
            self.log.warning("could not fail job %s in Redis", job.id, exc_info=True)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(STALLED_EXIT_CODE)
