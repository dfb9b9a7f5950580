"""Interactive latency behind bulk work: is a box drawn in the editor answered promptly while the
worker is busy with a prelabel run? (issue 13: within 1.5x its idle latency plus one batch.)

One simulated GPU worker (bench.simgpu, the product's worker code around a sleeping engine), Redis
and the queue backend (``varco-labeler serve`` with REDIS_URL). An interactive request is what
Label Studio sends when a box is drawn with the smart tool: one task, a ``referring`` label config,
the drawn rectangle in ``params.context.result``; the backend puts its job on ``varco-high``.

- idle: interactive requests one after another, nothing else queued;
- busy: the same while a prelabel-sized bulk run waits on ``varco-low``, each request sent at a
  random point of the running bulk job (a user does not wait for a job boundary), while bulk jobs
  are still queued;
- the same again with bulk jobs of one GPU batch each, for comparison.

The bulk run is enqueued here with the project's own queue API (``RQDispatcher.submit`` of
``predict_batch`` jobs of VARCO_PRELABEL_JOB_SIZE tasks on the low queue), not by ``prelabel``
against a real Label Studio: the GPU work and the queue are the same, what is left out is each
prelabel job's push to Label Studio (which runs while its next batch does, the last push excepted).
Every image is distinct (no output-cache hits). Order is checked from RQ's records: bulk jobs
queued when an interactive request was sent must start after its job.
"""

from __future__ import annotations

import itertools
import random
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from redis import Redis
from rq.job import Job
from rq.registry import FinishedJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer

from bench.common import (
    Context,
    Processes,
    Report,
    Table,
    child_env,
    latency_summary,
    wait_until,
    write_images,
)
from bench.simgpu import GpuTimes
from varco_labeler.jobs import PREDICT_BATCH
from varco_labeler.labelstudio.templates import label_config
from varco_labeler.queue import Priority, RQDispatcher, batches
from varco_labeler.settings import Settings
from varco_labeler.varco import prompt_for

TARGET = 1.5  # issue 13: busy latency within 1.5x (idle latency + one batch)
CONFIG = label_config("referring")  # what `varco-labeler label-config referring` prints
IMAGE_SIZE = (48, 40)  # common.unique_png's size: the drawn rectangle's original_width/height


@dataclass(frozen=True)
class Plan:
    """How big one run is: interactive requests per phase, bulk tasks, the GPU's times."""

    idle_requests: int
    busy_requests: int  # at most: a phase ends when its bulk run has no job left to wait
    bulk_tasks: int
    times: GpuTimes
    batch_size: int = 8  # VARCO_BATCH_SIZE's default
    job_size: int = 64  # VARCO_PRELABEL_JOB_SIZE's default
    seed: int = 13

    def job_seconds(self, job_size: int) -> float:
        """GPU seconds of one bulk job: its full batches, then a partial one."""
        full, rest = divmod(job_size, self.batch_size)
        return full * self.times.batch(self.batch_size) + (self.times.batch(rest) if rest else 0)


def plan_for(ctx: Context) -> Plan:
    return ctx.pick(
        # Smoke: seconds, not meaningful numbers. Many short bulk jobs, so plenty are still
        # queued behind each interactive request even on a loaded machine (the rest is cancelled).
        Plan(3, 3, 400, GpuTimes(0.05, 0.01), batch_size=4, job_size=8),
        Plan(10, 10, 500, GpuTimes()),
        Plan(20, 20, 1000, GpuTimes()),
    )


def drawn_rectangle(region_id: str) -> dict[str, Any]:
    """A box drawn with the smart tool, as Label Studio sends it in ``params.context.result``
    (percent of the image; tests/backend/test_backend_interactive.py has the same shape)."""
    width, height = IMAGE_SIZE
    value = {"x": 25.0, "y": 25.0, "width": 50.0, "height": 50.0, "rotation": 0}
    return {
        "id": region_id,
        "type": "rectanglelabels",
        "from_name": "label",
        "to_name": "image",
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": {**value, "rectanglelabels": ["Region"]},
    }


def _stamp(moment: datetime | None) -> float | None:
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


class Bench:
    def __init__(self, plan: Plan, client: httpx.Client, backend: str, redis_url: str) -> None:
        self.plan, self.client, self.backend = plan, client, backend
        self.redis = Redis.from_url(redis_url)
        # The project's own queue API, with the queue names the backend and worker use.
        self.dispatcher = RQDispatcher(Settings(redis_url=redis_url), self.redis)
        self.high = self.dispatcher.queues[Priority.HIGH]
        self.low = self.dispatcher.queues[Priority.LOW]
        self.rng = random.Random(plan.seed)
        self.serial = 0

    def interactive(self, image: Path) -> tuple[float, str]:
        """One box drawn on a task: (seconds until answered, the id of its job)."""
        self.serial += 1
        task = {"id": self.serial, "data": {"image": str(image)}}
        body = {
            "tasks": [task],
            "label_config": CONFIG,
            "project": "1.1700000000",
            "params": {"context": {"result": [drawn_rectangle(f"drawn-{self.serial}")]}},
        }
        finished = FinishedJobRegistry(queue=self.high)
        before = set(finished.get_job_ids())
        started = time.perf_counter()
        response = self.client.post(f"{self.backend}/predict", json=body)
        seconds = time.perf_counter() - started
        response.raise_for_status()
        (prediction,) = response.json()["results"]
        regions = {item["id"] for item in (prediction or {}).get("result", [])}
        if regions != {f"drawn-{self.serial}"}:  # empty: the deadline passed, nothing answered
            raise RuntimeError(f"interactive request not answered for its region: {prediction}")
        new: set[str] = set()

        def recorded() -> bool:
            new.update(set(finished.get_job_ids()) - before)
            return bool(new)

        wait_until(recorded, 10, "the interactive job in the finished registry")
        if len(new) != 1:
            raise RuntimeError(f"one interactive request made {len(new)} high-priority jobs")
        return seconds, new.pop()

    def idle(self, images: list[Path]) -> list[float]:
        if self.low.count or StartedJobRegistry(queue=self.low).count:
            raise RuntimeError("the worker is not idle")
        return [self.interactive(image)[0] for image in images]

    def busy(self, images: list[Path], bulk: list[Path], job_size: int) -> list[dict[str, Any]]:
        """Interactive requests while bulk jobs of ``job_size`` tasks wait on the low queue."""
        prompt = prompt_for("grounding")
        items = [
            {"key": f"bulk-{i}", "image": str(path), "task": "grounding", "prompt": prompt}
            for i, path in enumerate(bulk)
        ]
        calls = [(chunk,) for chunk in batches(items, job_size)]
        jobs = self.dispatcher.submit(PREDICT_BATCH, calls, Priority.LOW)
        running = StartedJobRegistry(queue=self.low)
        wait_until(lambda: running.count > 0, 60, "the worker to start the bulk run")
        job_seconds = self.plan.job_seconds(job_size)
        samples: list[dict[str, Any]] = []
        try:
            for image in images:
                # Arrive at a random point of the running bulk job, as a user would: sending
                # right after the previous answer would always meet a bulk job just started.
                time.sleep(self.rng.uniform(0, job_seconds))
                queued = self.low.get_job_ids()  # in the order the worker would take them
                if not queued:
                    break  # the bulk run is nearly over: the worker is no longer busy with it
                seconds, job_id = self.interactive(image)
                samples.append({"latency_s": seconds, **self._order(job_id, queued)})
        finally:
            self.dispatcher.cancel_queued(jobs)
            wait_until(lambda: running.count == 0, 120, "the last bulk job to finish")
        if not samples:
            raise RuntimeError("the bulk run ended before any interactive request")
        return samples

    def _order(self, job_id: str, queued: list[str]) -> dict[str, Any]:
        """Where the interactive job ran among the bulk jobs queued when it was sent, from the
        worker's own start times (one worker: one sequence, one clock).

        The head of ``queued`` may legitimately start first: the worker can take it between our
        look at the queue and the backend's enqueue. Any other bulk job started before the
        interactive one means it waited behind bulk work.
        """
        fetched = Job.fetch_many([job_id, *queued], self.redis, serializer=JSONSerializer)
        interactive, bulk = fetched[0], fetched[1:]
        assert interactive is not None
        began = _stamp(interactive.started_at)
        ended = _stamp(interactive.ended_at)
        queued_at = _stamp(interactive.enqueued_at)
        assert began is not None and ended is not None and queued_at is not None
        starts = [_stamp(job.started_at) if job else None for job in bulk]
        ran_first = [start is not None and start < began for start in starts]
        return {
            "bulk_jobs_queued": len(queued),
            "bulk_jobs_run_first": sum(ran_first[1:]),
            "head_run_first": bool(ran_first and ran_first[0]),
            "queue_wait_s": began - queued_at,
            "run_s": ended - began,
        }


def run(ctx: Context) -> Report:
    plan = plan_for(ctx)
    root = ctx.subdir("interactive")
    folder = root / "images"
    job_sizes = [plan.job_size, plan.batch_size]  # the product's default, then one GPU batch
    # Every image distinct across the run (unique_png's index): the output cache, keyed by image
    # bytes, must never answer for the GPU.
    offsets = itertools.count(step=100_000)  # more than any image set here

    def images(count: int, prefix: str) -> list[Path]:
        return write_images(folder, count, start=next(offsets), prefix=prefix)

    idle_images = images(plan.idle_requests + 1, "idle")
    busy_images = [images(plan.busy_requests, f"busy{size}") for size in job_sizes]
    bulk_images = [images(plan.bulk_tasks, f"bulk{size}") for size in job_sizes]
    env = {
        "VARCO_LOCAL_IMAGE_ROOTS": str(folder),
        "VARCO_BATCH_SIZE": str(plan.batch_size),
        "VARCO_PREDICT_DEADLINE": "600",  # never cut: a late answer must be measured, not lost
    }
    times = plan.times
    gpu = ["--fixed", str(times.fixed), "--per-image", str(times.per_image)]
    with Processes(root / "logs") as processes, httpx.Client(timeout=600) as client:
        redis_url = processes.redis()
        argv = [sys.executable, "-m", "bench.simgpu", "worker", "--name", "sim-gpu-0", *gpu]
        argv += ["--redis-url", redis_url]
        processes.worker("sim-gpu-0", argv, child_env(**env), redis_url)
        backend = processes.backend(
            "queue-backend", child_env(REDIS_URL=redis_url, MODEL_DIR=str(root / "data"), **env)
        )
        bench = Bench(plan, client, backend.url, redis_url)
        bench.interactive(idle_images[0])  # warm-up: the backend's first request imports more
        ctx.log(f"  idle worker: {plan.idle_requests} interactive requests")
        idle = bench.idle(idle_images[1:])
        busy: dict[int, list[dict[str, Any]]] = {}
        for size, images, bulk in zip(job_sizes, busy_images, bulk_images, strict=True):
            ctx.log(
                f"  busy worker: {plan.bulk_tasks} bulk tasks in jobs of {size} on varco-low, "
                f"up to {plan.busy_requests} interactive requests"
            )
            busy[size] = bench.busy(images, bulk, size)
    return _report(plan, idle, busy)


def _summary(seconds: list[float]) -> dict[str, float]:
    stats = latency_summary(seconds, len(seconds))
    return {key: stats[key] for key in ("calls", "p50_ms", "p95_ms", "p99_ms", "mean_ms")}


def _ratio(busy: dict[str, float], idle: dict[str, float], batch_ms: float) -> dict[str, float]:
    return {q: busy[f"{q}_ms"] / (idle[f"{q}_ms"] + batch_ms) for q in ("p50", "p95")}


def _report(plan: Plan, idle_s: list[float], busy: dict[int, list[dict[str, Any]]]) -> Report:
    times = plan.times
    batch_ms = times.batch(plan.batch_size) * 1000
    idle = _summary(idle_s)
    runs = {}
    for size, samples in busy.items():
        stats = _summary([sample["latency_s"] for sample in samples])
        runs[size] = {
            "bulk_job_size": size,
            "bulk_job_s": plan.job_seconds(size),
            "busy": stats,
            "ratio": _ratio(stats, idle, batch_ms),
            "samples": samples,
        }
    default, small = runs[plan.job_size], runs[plan.batch_size]
    data = {
        "idle": idle,
        "busy": default["busy"],
        "ratio": default["ratio"],  # busy / (idle + one GPU batch), p50 and p95
        "target": TARGET,
        "target_met": all(value <= TARGET for value in default["ratio"].values()),
        "samples": default["samples"],
        "bulk": {
            "tasks": plan.bulk_tasks,
            "job_size": plan.job_size,
            "job_s": default["bulk_job_s"],
            "queue": "varco-low",
            "enqueued_by": "RQDispatcher.submit (predict_batch jobs; no Label Studio push)",
        },
        "one_batch_jobs": {key: small[key] for key in ("bulk_job_size", "busy", "ratio")}
        | {"samples": small["samples"]},
        "gpu": {
            "fixed_s": times.fixed,
            "per_image_s": times.per_image,
            "batch_size": plan.batch_size,
            "batch_s": round(batch_ms / 1000, 6),
            "interactive_batch_s": round(times.batch(1), 6),
        },
    }
    rows: list[list[Any]] = [
        ["idle worker", idle["calls"], idle["p50_ms"], idle["p95_ms"], None, None]
    ]
    for size, result in runs.items():
        stats, ratio = result["busy"], result["ratio"]
        label = f"busy: {plan.bulk_tasks:,} bulk tasks queued, jobs of {size}"
        rows.append([label, stats["calls"], stats["p50_ms"], stats["p95_ms"], *ratio.values()])
    table = Table(
        f"interactive /predict, 1 simulated GPU worker ({times.fixed} s + {times.per_image} s "
        f"per image per batch; one batch of {plan.batch_size}: {batch_ms / 1000:.2f} s)",
        ["worker", "requests", "p50 ms", "p95 ms", "p50 ratio", "p95 ratio"],
        rows,
    )
    run_first = sum(s["bulk_jobs_run_first"] for r in runs.values() for s in r["samples"])
    notes = [
        f"ratio = busy latency / (idle latency + one GPU batch of {plan.batch_size}), at the "
        f"same percentile; target "
        f"<= {TARGET}. p50: {default['ratio']['p50']:.2f}, p95: {default['ratio']['p95']:.2f} "
        f"with bulk jobs of {plan.job_size} ({default['bulk_job_s']:.1f} s each).",
        "A worker finishes the bulk job it is running before it takes the interactive one: the "
        "wait is up to one bulk job, not one batch.",
        f"bulk jobs queued when a request was sent that ran before it: {run_first} "
        "(the queue's head excepted).",
    ]
    return Report("interactive", [table], data, notes)
