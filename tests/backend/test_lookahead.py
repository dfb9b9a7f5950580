"""A worker's claim on its next job (varco_labeler.lookahead), against a real Redis and RQ queues:
claims are distinct between workers, the claimed job is taken out of its queue by its claimer,
higher-priority work still comes first, and a claim never holds a job back from anyone."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from typing import Any

import pytest
from PIL import Image
from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

from bench.simgpu import LABEL_CONFIG, GpuTimes, SimulatedGpuEngine
from varco_labeler import jobs
from varco_labeler.engine.base import Request, Result
from varco_labeler.jobs import PREDICT_BATCH, PRELABEL_BATCH
from varco_labeler.labelstudio import read_label_config
from varco_labeler.lookahead import CLAIM, Lookahead
from varco_labeler.policy import Policy
from varco_labeler.queue import Priority, queue_name, queue_names
from varco_labeler.settings import Settings
from worker.heartbeat import HeartbeatWorker


@pytest.fixture
def redis(redis_server) -> Iterator[Redis]:
    client = Redis.from_url(redis_server.url)
    yield client
    client.close()


def queues(redis: Redis) -> dict[Priority, Queue]:
    return {
        priority: Queue(queue_name("varco", priority), connection=redis, serializer=JSONSerializer)
        for priority in Priority
    }


def prelabel_job(queue: Queue, name: str, count: int = 4) -> str:
    items = [{"image": f"{name}-{i}.png", "task_id": i} for i in range(count)]
    return queue.enqueue(PRELABEL_BATCH, 1, {}, items, job_id=name).id


class Fetches:
    """Stands for the download threads: records what is fetched ahead, answers nothing."""

    def __init__(self) -> None:
        self.refs: list[str] = []
        self.futures: list[Future[Any]] = []

    def __call__(self, ref: str) -> Future[Any]:
        self.refs.append(ref)
        self.futures.append(Future())
        return self.futures[-1]


def lookahead(redis: Redis, name: str, images: int = 2) -> Lookahead:
    ordered = list(queues(redis).values())
    return Lookahead(redis, name, ordered, ordered[1:], images=images)


def one_claimed_job(redis: Redis) -> tuple[Queue, Lookahead, Fetches]:
    """``job-1`` in the bulk queue, claimed by worker ``gpu-a``; its fetches."""
    low = queues(redis)[Priority.LOW]
    prelabel_job(low, "job-1")
    a = lookahead(redis, "gpu-a")
    fetched = Fetches()
    assert a.claim_next(fetched, 60) is not None
    return low, a, fetched


def test_two_workers_claim_different_jobs_and_fetch_their_first_images(redis) -> None:
    low = queues(redis)[Priority.LOW]
    for name in ("job-1", "job-2", "job-3"):
        prelabel_job(low, name)
    a, b = lookahead(redis, "gpu-a"), lookahead(redis, "gpu-b")
    fetch_a, fetch_b = Fetches(), Fetches()
    claim_a = a.claim_next(fetch_a, 60)
    claim_b = b.claim_next(fetch_b, 60)
    assert claim_a is not None and claim_b is not None
    assert (claim_a.job_id, claim_b.job_id) == ("job-1", "job-2")
    assert fetch_a.refs == ["job-1-0.png", "job-1-1.png"]  # two images ahead, not the job
    assert fetch_b.refs == ["job-2-0.png", "job-2-1.png"]
    assert redis.get(CLAIM + "job-1") == b"gpu-a"
    assert a.claim_next(fetch_a, 60) is claim_a  # one claim at a time
    assert low.job_ids == ["job-1", "job-2", "job-3"], "claiming takes nothing out of the queue"


def test_the_claimer_takes_its_job_out_of_the_queue_and_gets_its_images(redis) -> None:
    low = queues(redis)[Priority.LOW]
    for name in ("job-1", "job-2", "job-3"):
        prelabel_job(low, name)
    a, b = lookahead(redis, "gpu-a"), lookahead(redis, "gpu-b")
    a.claim_next(Fetches(), 60)
    fetched = Fetches()
    b.claim_next(fetched, 60)
    taken = b.take()
    assert taken is not None
    job, queue = taken
    assert (job.id, queue.name) == ("job-2", low.name)
    assert low.job_ids == ["job-1", "job-3"]
    downloads = b.handover("job-2")  # the job starts: its images, fetched ahead
    assert list(downloads) == ["job-2-0.png", "job-2-1.png"]
    assert downloads["job-2-0.png"] is fetched.futures[0]
    assert redis.get(CLAIM + "job-2") is None and b.claimed is None


def test_higher_priority_work_comes_before_the_claimed_job(redis) -> None:
    by_priority = queues(redis)
    prelabel_job(by_priority[Priority.LOW], "bulk")
    a = lookahead(redis, "gpu-a")
    assert a.claim_next(Fetches(), 60) is not None
    by_priority[Priority.NORMAL].enqueue(PREDICT_BATCH, [], job_id="retrieve")
    assert a.take() is None, "a /predict job waits: RQ's order takes it first"
    assert a.claimed is not None, "the claim is kept for after it"
    by_priority[Priority.NORMAL].empty()
    taken = a.take()
    assert taken is not None and taken[0].id == "bulk"


def test_a_claimed_job_is_not_held_back_from_an_idle_worker(redis) -> None:
    low, a, fetched = one_claimed_job(redis)
    # An idle worker takes the queue's front as RQ always does: the claim is only a hint.
    job, _ = Queue.dequeue_any([low], None, connection=redis, serializer=JSONSerializer)
    assert job.id == "job-1"
    assert a.still_claimed() is None, "no running ahead of a job another worker has"
    assert a.take() is None
    assert redis.get(CLAIM + "job-1") is None
    assert all(future.cancelled() for future in fetched.futures)


def test_a_cancelled_job_is_neither_run_ahead_nor_taken(redis) -> None:
    low, a, _ = one_claimed_job(redis)
    low.fetch_job("job-1").cancel()
    assert a.still_claimed() is None
    assert a.take() is None


def test_a_claim_outlives_higher_priority_work_run_in_between(redis) -> None:
    _, a, fetched = one_claimed_job(redis)
    claim = a.claimed
    by_priority = queues(redis)
    by_priority[Priority.HIGH].enqueue(PREDICT_BATCH, [{"image": "drawn.png"}], job_id="box")
    assert a.take() is None  # the drawn box first
    assert a.handover("box") == {}, "the box's job has nothing fetched ahead"
    assert a.claim_next(Fetches(), 60) is claim, "the claim is kept, its images too"
    assert not any(future.cancelled() for future in fetched.futures)
    by_priority[Priority.HIGH].empty()
    taken = a.take()
    assert taken is not None and taken[0].id == "job-1"
    assert list(a.handover("job-1")) == ["job-1-0.png", "job-1-1.png"]


def test_a_worker_that_stops_gives_its_claim_up(redis) -> None:
    low, a, fetched = one_claimed_job(redis)
    a.release()
    assert all(future.cancelled() for future in fetched.futures)
    assert redis.get(CLAIM + "job-1") is None
    assert low.job_ids == ["job-1"]
    b = lookahead(redis, "gpu-b")
    claim = b.claim_next(Fetches(), 60)
    assert claim is not None and claim.job_id == "job-1", "free to be claimed again"


def test_only_bulk_prediction_jobs_are_claimed(redis) -> None:
    by_priority = queues(redis)
    by_priority[Priority.HIGH].enqueue(PREDICT_BATCH, [{"image": "drawn.png"}], job_id="box")
    by_priority[Priority.LOW].enqueue("varco_labeler.jobs.engine_version", job_id="other")
    a = lookahead(redis, "gpu-a")
    assert a.claim_next(Fetches(), 60) is None
    assert redis.keys(CLAIM + "*") == []
    by_priority[Priority.NORMAL].enqueue(PREDICT_BATCH, [{"image": "x.png"}], job_id="retrieve")
    claim = a.claim_next(Fetches(), 60)
    assert claim is not None and claim.job_id == "retrieve"


def test_a_claim_expires_with_the_worker_that_made_it(redis) -> None:
    one_claimed_job(redis)
    assert 0 < redis.ttl(CLAIM + "job-1") <= 60


def test_workers_have_a_lookahead_unless_it_is_turned_off(redis) -> None:
    worker = HeartbeatWorker(
        queue_names("varco"), connection=redis, serializer=JSONSerializer, name="gpu-a"
    )
    made = Lookahead.for_worker(worker, Settings(batch_size=4))
    assert made is not None
    assert made.images == 8  # two GPU batches
    assert [q.name for q in made.claimable] == ["varco", "varco-low"]
    off = Settings.from_env({"VARCO_LOOKAHEAD": "0"})
    assert Lookahead.for_worker(worker, off) is None


class Sink:
    def push(self, project: int, predictions: Any, **_: Any) -> tuple[list[int], list[int]]:
        return [p["task"] for p in predictions], []


class Fetcher:
    def fetch(self, ref: str) -> tuple[Image.Image, bytes]:
        return Image.new("RGB", (2, 2) if ref.startswith("bad") else (8, 8)), ref.encode()


class FailsOnSmallImages(SimulatedGpuEngine):
    def generate(self, requests: Sequence[Request]) -> list[Result]:
        if any(request.image.width == 2 for request in requests):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return super().generate(requests)


def test_a_failure_running_ahead_does_not_fail_the_job_that_ran_it(redis, redis_server) -> None:
    settings = Settings(
        model="unused", label_studio_url="http://ls", label_studio_api_key="k", batch_size=2
    )
    policy = Policy.resolve(settings, read_label_config(LABEL_CONFIG), version="sim")

    def batch(prefix: str, first: int) -> list[dict[str, Any]]:
        data = [{"image": f"{prefix}-{i}"} for i in range(2)]
        return [policy.item(str(first + i), d, task_id=first + i) for i, d in enumerate(data)]

    low = queues(redis)[Priority.LOW]
    low.enqueue(PRELABEL_BATCH, 1, policy.to_json(), batch("bad", 10), job_id="next")
    engine = FailsOnSmallImages(GpuTimes(0.0, 0.0), max_batch_size=2)
    context = jobs.JobContext(engine, Fetcher(), jobs.OutputCache(redis), settings)  # type: ignore[arg-type]
    context._sink = Sink()  # type: ignore[assignment]
    context.lookahead = lookahead(redis, "gpu-a")
    jobs.install(context)
    try:
        outcome = jobs.prelabel_batch(1, policy.to_json(), batch("good", 0))
    finally:
        jobs._context = None
    assert sorted(outcome["pushed"]) == [0, 1] and outcome["failed"] == {}
    assert context.lookahead.claimed is None, "the claim is given up"
    assert redis.get(CLAIM + "next") is None and low.job_ids == ["next"]
