"""A worker whose engine blocks forever: its job is failed, requeued and done by another worker,
and the stalled worker's supervisor starts it again. Real redis-server, real varco-worker
processes, and a real server that takes the stuck worker's model requests and never answers."""

from __future__ import annotations

import os
import signal
import socket
import threading
from collections.abc import Iterator

import pytest
from processes import Processes, RedisProcess, wait_until
from redis import Redis
from rq import Worker

from varco_labeler.jobs import PREDICT_BATCH
from varco_labeler.queue import RQDispatcher
from varco_labeler.settings import Settings

VERSION = "tiny-stall-test"  # both workers stamp this, so either may take the job
# Above the healthy worker's start (5-15 s here), so that it usually waits when the job comes back;
# if the restarted stuck worker takes it again first, it stalls again and comes back once more.
STALL_TIMEOUT = "10"
ITEM = {
    "key": "red",
    "image": "/data/local-files/?d=images/red.png",
    "task": "ocr",
    "prompt": "<ocr>",
}


@pytest.fixture
def silent_server() -> Iterator[str]:
    """An OpenAI-compatible URL whose server accepts connections and never answers (a hung GPU)."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def hold() -> None:
        while True:
            try:
                held.append(listener.accept()[0])
            except OSError:  # closed at the end of the test
                return

    threading.Thread(target=hold, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    listener.shutdown(socket.SHUT_RDWR)
    listener.close()
    for connection in held:
        connection.close()


def _worker(redis: Redis, name: str) -> Worker | None:
    return next((w for w in Worker.all(connection=redis) if w.name == name), None)


def test_a_stalled_job_is_requeued_done_elsewhere_and_its_worker_restarts(
    processes: Processes, redis_server: RedisProcess, silent_server: str
) -> None:
    redis = Redis.from_url(redis_server.url)
    stuck = processes.worker(
        redis_server.url,
        "stuck",
        VARCO_OPENAI_URL=silent_server,
        VARCO_MODEL_VERSION=VERSION,
        VARCO_JOB_STALL_TIMEOUT=STALL_TIMEOUT,
    )
    first = _worker(redis, "stuck")
    assert first is not None
    settings = Settings(redis_url=redis_server.url)
    dispatcher = RQDispatcher(settings, redis)
    (job,) = dispatcher.submit(PREDICT_BATCH, [([ITEM],)])
    taken = lambda: (w := _worker(redis, "stuck")) and w.get_current_job_id() == job.id  # noqa: E731
    wait_until(taken, 30, "the stuck worker to take the job")

    processes.worker(redis_server.url, "healthy", VARCO_MODEL_VERSION=VERSION)
    ((_, outputs, error),) = list(dispatcher.completions([job], deadline=90))

    assert error is None
    assert [(o["key"], o["model_version"], "error" in o) for o in outputs] == [
        ("red", VERSION, False)
    ]
    job.refresh()
    assert job.worker_name == "healthy"
    stalls = processes.log(stuck).count("made no progress")
    assert stalls >= 1
    assert job.retries_left == settings.job_retries - stalls  # each stall requeued it once
    # The supervisor (still running) started the worker again: same name, a new process.
    restarted = lambda: (w := _worker(redis, "stuck")) and w.pid != first.pid  # noqa: E731
    wait_until(restarted, 30, "the stalled worker to be started again")
    assert stuck.poll() is None


def test_a_stop_signal_to_the_supervisor_stops_its_worker(
    processes: Processes, redis_server: RedisProcess, silent_server: str
) -> None:
    supervisor = processes.worker(
        redis_server.url,
        "supervised",
        VARCO_OPENAI_URL=silent_server,
        VARCO_JOB_STALL_TIMEOUT=STALL_TIMEOUT,
    )
    os.kill(supervisor.pid, signal.SIGTERM)  # the supervisor alone, as compose's stop does
    assert supervisor.wait(30) == 0
    assert _worker(Redis.from_url(redis_server.url), "supervised") is None
