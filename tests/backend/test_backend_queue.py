"""The queue mode under load and faults: real redis-server, real varco-worker processes."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import zlib

import httpx
from helpers import CATS_CONFIG
from processes import Processes, RedisProcess, wait_until
from redis import Redis
from rq import Queue, Worker
from rq.job import Job
from rq.registry import FinishedJobRegistry
from rq.serializers import JSONSerializer

SLOW_RED = "/data/local-files/?d=images/red.png&slow={}"


def _tasks(count: int, image: str = "/data/local-files/?d=images/red.png") -> list[dict]:
    return [{"id": i, "data": {"image": image}} for i in range(count)]


def _predict(url: str, tasks: list[dict], timeout: float = 120) -> httpx.Response:
    return httpx.post(
        f"{url}/predict", json={"tasks": tasks, "label_config": CATS_CONFIG}, timeout=timeout
    )


def _finished_jobs(redis_url: str) -> list[Job]:
    redis = Redis.from_url(redis_url)
    queue = Queue("varco", connection=redis, serializer=JSONSerializer)
    ids = FinishedJobRegistry(queue=queue).get_job_ids()
    return [j for j in Job.fetch_many(ids, redis, serializer=JSONSerializer) if j]


def _all_cats(results: list) -> bool:
    return all(
        r and [i["value"]["rectanglelabels"] for i in r["result"]] == [["Cat"]] for r in results
    )


def test_a_batch_is_split_across_two_workers(processes: Processes, redis_server: RedisProcess):
    for name in ("gpu-0", "gpu-1"):
        processes.worker(redis_server.url, name)
    url = processes.backend(redis_server.url, VARCO_BATCH_SIZE="1")
    # Slow images keep each worker busy long enough for the other to take the next job.
    reply = _predict(url, _tasks(6, SLOW_RED.format(0.5)))
    results = reply.json()["results"]
    assert len(results) == 6 and _all_cats(results)
    jobs = _finished_jobs(redis_server.url)
    assert len(jobs) == 6
    assert {job.worker_name for job in jobs} == {"gpu-0", "gpu-1"}


def test_a_worker_killed_mid_job_loses_nothing(processes: Processes, redis_server: RedisProcess):
    doomed = processes.worker(redis_server.url, "doomed")
    processes.worker(redis_server.url, "survivor")
    url = processes.backend(redis_server.url, VARCO_BATCH_SIZE="2")
    replies: list[httpx.Response] = []
    request = threading.Thread(
        target=lambda: replies.append(_predict(url, _tasks(4, SLOW_RED.format(2))))
    )
    request.start()
    redis = Redis.from_url(redis_server.url)
    busy = lambda: any(  # noqa: E731
        w.name == "doomed" and w.get_current_job_id() for w in Worker.all(connection=redis)
    )
    wait_until(busy, 30, "the doomed worker to start a job")
    os.kill(doomed.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    request.join(120)
    results = replies[0].json()["results"]
    assert len(results) == 4 and _all_cats(results), results
    # Recovered by the survivor within a few heartbeats, not RQ's job_timeout + 60 s.
    assert time.monotonic() - killed_at < 30
    jobs = _finished_jobs(redis_server.url)
    assert len(jobs) == 2 and {job.worker_name for job in jobs} == {"survivor"}


def test_redis_down_gives_a_prompt_clear_error_and_recovery(
    processes: Processes, redis_server: RedisProcess
):
    processes.worker(redis_server.url, "patient")
    url = processes.backend(redis_server.url)
    assert _all_cats(_predict(url, _tasks(1)).json()["results"])
    redis_server.stop()
    started = time.monotonic()
    reply = _predict(url, _tasks(2), timeout=30)
    assert time.monotonic() - started < 10
    assert reply.status_code == 503
    assert f"Redis at 127.0.0.1:{redis_server.port} is unreachable" in reply.json()["error"]
    health = httpx.get(f"{url}/health", timeout=10).json()
    assert health["status"] == "DEGRADED" and "unreachable" in health["queue"]["redis"]
    redis_server.start()
    # The worker reconnects by itself; the backend answers again with no restart.
    wait_until(
        lambda: _all_cats(_predict(url, _tasks(1), timeout=30).json()["results"]),
        90,
        "predictions after Redis came back",
    )
    assert httpx.get(f"{url}/health", timeout=10).json()["status"] == "UP"


def test_unfinished_tasks_are_skipped_then_served_from_the_cache(
    processes: Processes, redis_server: RedisProcess
):
    processes.worker(redis_server.url, "slowpoke")
    url = processes.backend(redis_server.url, VARCO_PREDICT_DEADLINE="1", VARCO_BATCH_SIZE="1")
    tasks = _tasks(2, SLOW_RED.format(1.5))
    started = time.monotonic()
    first = _predict(url, tasks).json()["results"]
    assert time.monotonic() - started < 5
    # Label Studio skips an empty list without storing an (empty) prediction.
    assert first == [[], []]
    assert httpx.get(f"{url}/health").json()["tasks"]["unfinished"] == 2
    # The jobs went on; their outputs are cached by image content, prompt and model version.
    wait_until(lambda: len(_finished_jobs(redis_server.url)) == 2, 30, "the jobs to finish")
    cached = _predict(url, _tasks(2)).json()["results"]
    assert _all_cats(cached)
    newest = max(_finished_jobs(redis_server.url), key=lambda job: job.ended_at)
    assert all(output["cached"] for output in newest.return_value())


def test_jobs_in_redis_are_json_not_pickle(processes: Processes, redis_server: RedisProcess):
    processes.worker(redis_server.url, "json-only")
    url = processes.backend(redis_server.url)
    _predict(url, _tasks(1))
    (job,) = _finished_jobs(redis_server.url)
    stored = zlib.decompress(Redis.from_url(redis_server.url).hget(job.key, "data"))
    # JSON parses it: a pickle (which could run code on load) would not.
    function, _, args, _ = json.loads(stored)
    assert function == "varco_labeler.jobs.predict_batch"
    assert args[0][0]["image"] == "/data/local-files/?d=images/red.png"


def test_sigterm_finishes_the_running_job_then_exits(
    processes: Processes, redis_server: RedisProcess
):
    worker = processes.worker(redis_server.url, "polite")
    url = processes.backend(redis_server.url)
    replies: list[httpx.Response] = []
    request = threading.Thread(
        target=lambda: replies.append(_predict(url, _tasks(1, SLOW_RED.format(2))))
    )
    request.start()
    redis = Redis.from_url(redis_server.url)
    busy = lambda: any(w.get_current_job_id() for w in Worker.all(connection=redis))  # noqa: E731
    wait_until(busy, 30, "the worker to start the job")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    request.join(60)
    assert _all_cats(replies[0].json()["results"])
