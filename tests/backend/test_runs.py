"""A prelabel run's record in a real redis-server: what `status` and `cancel` read and write, and
what /health shows of it."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from processes import Processes, RedisProcess
from redis import Redis

from varco_labeler import runs
from varco_labeler.cli import main
from varco_labeler.runs import RunRecorder, RunState, TaskState


@pytest.fixture
def redis(redis_server: RedisProcess) -> Redis:
    return Redis.from_url(redis_server.url)


def test_a_run_records_each_task_state_and_its_counts(redis: Redis) -> None:
    record = RunRecorder.start(redis, 7, "tiny-v1", [1, 2, 3, 4, 5], skipped=2)
    run = runs.read_run(redis, record.id)
    assert run is not None and run.state is RunState.QUEUED and run.active
    assert (run.project, run.model_version, run.total, run.skipped) == (7, "tiny-v1", 5, 2)
    assert run.counts == {"queued": 5}

    record.update([1, 2], TaskState.RUNNING)
    record.update([1], TaskState.DONE)
    record.failed({"2": "image unreachable: HTTP 404"})
    record.update([3], TaskState.CANCELLED)
    run = runs.read_run(redis, record.id)
    assert run.state is RunState.RUNNING
    assert run.counts == {"queued": 2, "done": 1, "failed": 1, "cancelled": 1}
    assert run.progress() == "2/5"
    assert runs.task_states(redis, record.id) == {
        "1": {"state": "done"},
        "2": {"state": "failed", "reason": "image unreachable: HTTP 404"},
        "3": {"state": "cancelled"},
        "4": {"state": "queued"},
        "5": {"state": "queued"},
    }

    record.finish(RunState.FAILED, "1 task(s) failed")
    run = runs.read_run(redis, record.id)
    assert run.state is RunState.FAILED and not run.active and run.ended_at is not None
    assert run.message == "1 task(s) failed"
    # Ended: kept for a while, then gone by itself.
    assert runs.LIVE_TTL < redis.ttl(f"varco:run:{record.id}") <= runs.ENDED_TTL


def test_recent_runs_come_newest_first_and_expired_ones_drop_out(redis: Redis) -> None:
    first = RunRecorder.start(redis, 1, "v", [1])
    second = RunRecorder.start(redis, 2, "v", [1])
    assert [run.id for run in runs.recent_runs(redis)] == [second.id, first.id]
    redis.delete(f"varco:run:{first.id}")  # as its TTL would
    assert [run.id for run in runs.recent_runs(redis)] == [second.id]
    assert redis.zrange(runs.RUNS, 0, -1) == [second.id.encode()]


def test_a_live_run_whose_process_went_silent_is_reported_lost(redis: Redis) -> None:
    record = RunRecorder.start(redis, 1, "v", [1, 2])
    silent_since = time.time() - runs.LOST_AFTER - 1
    redis.hset(f"varco:run:{record.id}", "updated_at", silent_since)  # a killed process
    assert runs.read_run(redis, record.id).state is RunState.LOST
    assert runs.active_runs(redis) == []
    record.heartbeat()
    assert runs.read_run(redis, record.id).state is RunState.QUEUED


def test_cancel_sets_the_flag_the_run_polls_and_leaves_an_ended_run_alone(redis: Redis) -> None:
    record = RunRecorder.start(redis, 1, "v", [1])
    assert not record.cancel_requested()
    assert runs.request_cancel(redis, record.id).active
    assert record.cancel_requested()

    ended = RunRecorder.start(redis, 1, "v", [1])
    ended.finish(RunState.DONE)
    assert runs.request_cancel(redis, ended.id).state is RunState.DONE
    assert not ended.cancel_requested()
    assert runs.request_cancel(redis, "no-such-run") is None


def test_status_and_cancel_commands(
    redis: Redis, redis_server: RedisProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    record = RunRecorder.start(redis, 12, "tiny-v1", [10, 11, 12])
    record.update([10], TaskState.DONE)
    record.failed({"11": "no image"})
    url = ["--redis-url", redis_server.url]

    assert main(["status", *url]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == [
        *("RUN", "PROJECT", "STATE", "QUEUED", "RUNNING", "DONE", "FAILED", "CANCELLED"),
        *("TOTAL", "AGE"),
    ]
    assert row.split()[:9] == [record.id, "12", "running", "1", "0", "1", "1", "0", "3"]

    assert main(["status", record.id, *url]) == 0
    detail = capsys.readouterr().out
    assert "project 12, model version tiny-v1" in detail
    assert "task 11 failed: no image" in detail

    assert main(["status", record.id, "--json", *url]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["tasks"]["11"] == {"state": "failed", "reason": "no image"}
    assert shown["counts"] == {"queued": 1, "done": 1, "failed": 1}

    assert main(["cancel", record.id, *url]) == 0
    assert "cancel requested" in capsys.readouterr().out
    assert record.cancel_requested()
    record.finish(RunState.CANCELLED)
    assert main(["cancel", record.id, *url]) == 1
    assert "already ended: cancelled" in capsys.readouterr().err
    assert main(["status", "nope", *url]) == 2


def test_status_without_redis_says_where_runs_live(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    assert main(["status"]) == 2
    assert "set REDIS_URL" in capsys.readouterr().err


def test_health_lists_active_runs_only_to_those_who_may_see_details(
    processes: Processes, redis_server: RedisProcess, redis: Redis
) -> None:
    active = RunRecorder.start(redis, 5, "v", [1, 2])
    active.update([1], TaskState.DONE)
    ended = RunRecorder.start(redis, 6, "v", [1])
    ended.finish(RunState.DONE)
    url = processes.backend(redis_server.url, BASIC_AUTH_USER="ann", BASIC_AUTH_PASS="s3cret")

    full = httpx.get(f"{url}/health", auth=("ann", "s3cret")).json()
    assert [(r["id"], r["project"], r["done"]) for r in full["prelabel_runs"]] == [
        (active.id, 5, "1/2")
    ]
    assert "prelabel_runs" not in httpx.get(f"{url}/health").json()


def test_cancel_of_a_lost_run_cancels_its_queued_jobs_itself(
    redis: Redis, redis_server: RedisProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    from rq import Queue, SimpleWorker
    from rq.job import Job, JobStatus
    from rq.serializers import JSONSerializer

    from varco_labeler.jobs import PRELABEL_BATCH
    from varco_labeler.queue import RQDispatcher
    from varco_labeler.settings import Settings

    dispatcher = RQDispatcher(Settings(redis_url=redis_server.url), redis)
    calls = [(3, {}, [{"task_id": t} for t in (2 * n + 1, 2 * n + 2)]) for n in range(3)]
    record = RunRecorder.start(redis, 3, "tiny-v1", range(1, 7))
    submitted = dispatcher.submit(PRELABEL_BATCH, calls)
    record.add_jobs(job.id for job in submitted)
    # A worker took the first job, as RQ does, and is running it.
    bulk = submitted[0].origin
    queue = Queue(bulk, connection=redis, serializer=JSONSerializer)
    taken, _ = Queue.dequeue_any([queue], None, connection=redis, serializer=JSONSerializer)
    worker = SimpleWorker([queue], connection=redis, serializer=JSONSerializer)
    worker.prepare_execution(taken)  # what RQ's worker does before it runs a job
    worker.prepare_job_execution(taken)
    record.update([1, 2], TaskState.RUNNING)
    silent_since = time.time() - runs.LOST_AFTER - 1
    redis.hset(f"varco:run:{record.id}", "updated_at", silent_since)  # its process was killed
    assert runs.read_run(redis, record.id).state is RunState.LOST

    assert main(["cancel", record.id, "--redis-url", redis_server.url]) == 0
    said = capsys.readouterr().out
    assert "2 queued job(s) cancelled; 1 job(s) a worker had started finish" in said
    ids = [job.id for job in submitted]
    statuses = [job.get_status() for job in Job.fetch_many(ids, redis, JSONSerializer)]
    assert statuses == [JobStatus.STARTED, JobStatus.CANCELED, JobStatus.CANCELED]
    assert Queue(bulk, connection=redis).count == 0, "nothing left for a worker to run"
    run = runs.read_run(redis, record.id)
    assert run.state is RunState.CANCELLED and not run.active
    assert run.message == "cancelled after its process was lost: 2 queued job(s) cancelled"
    states = {task: value["state"] for task, value in runs.task_states(redis, record.id).items()}
    assert states == {"1": "running", "2": "running", **dict.fromkeys("3456", "cancelled")}
    assert main(["cancel", record.id, "--redis-url", redis_server.url]) == 1  # ended now
