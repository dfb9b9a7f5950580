"""Interactive latency behind bulk work: is a box drawn in the editor answered promptly while the
worker is busy with a prelabel run? (issue 13: within 1.5x its idle latency plus one batch.)

A real Label Studio 1.23.2 (bench.labelstudio, as bench/pipeline.py starts it), Redis, one
simulated GPU worker (bench.simgpu: the product's worker code around a sleeping engine) and the
queue backend (``varco-labeler serve`` with REDIS_URL). An interactive request is what Label
Studio sends when a box is drawn with the smart tool: one task, a ``referring`` label config, the
drawn rectangle in ``params.context.result``; the backend puts its job on ``varco-high``.

- idle: interactive requests one after another, nothing else queued;
- busy: the same while ``varco-labeler prelabel --project P`` (the command, as a subprocess) runs
  over a project of the Label Studio above: its ``prelabel_batch`` jobs of
  VARCO_PRELABEL_JOB_SIZE tasks wait on ``varco-low``, fetch their images from Label Studio and
  push their predictions back. Each request is sent at a random point of the running bulk job (a
  user does not wait for a job boundary), while at least two bulk jobs are still queued. A
  running prelabel job gives way between its GPU batches when an interactive job waits (the rest
  of its tasks continue in a job at the front of ``varco-low``, which the command follows): the
  run must still end with every task pre-labelled in Label Studio, which is checked.

Every image is distinct (no output-cache hits: a hit costs no GPU batch). Order is checked from
RQ's records: bulk jobs queued when an interactive request was sent must start after its job.
"""

from __future__ import annotations

import itertools
import random
import re
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

from bench.bulk import _predicted, _project
from bench.common import (
    BIN,
    Context,
    Processes,
    Report,
    Service,
    Table,
    child_env,
    latency_summary,
    wait_until,
    write_images,
)
from bench.labelstudio import LabelStudio
from bench.labelstudio import start as start_label_studio
from bench.pipeline import write_jpegs
from bench.simgpu import LABEL_CONFIG, GpuTimes
from varco_labeler.jobs import PRELABEL_BATCH
from varco_labeler.labelstudio.templates import label_config
from varco_labeler.queue import Priority, RQDispatcher
from varco_labeler.settings import Settings

TARGET = 1.5  # issue 13: busy latency within 1.5x (idle latency + one batch)
CONFIG = label_config("referring")  # what `varco-labeler label-config referring` prints
IMAGE_SIZE = (48, 40)  # common.unique_png's size: the drawn rectangle's original_width/height
_DONE = re.compile(r"done (\d+), skipped (\d+) .*, failed (\d+)")  # prelabel's summary line


@dataclass(frozen=True)
class Plan:
    """How big one run is: interactive requests per phase, bulk tasks, the GPU's times."""

    idle_requests: int
    busy_requests: int  # at most: a phase ends when its bulk run has no job left to wait
    bulk_tasks: int
    times: GpuTimes
    batch_size: int = 8  # VARCO_BATCH_SIZE's default
    job_size: int = 64  # VARCO_PRELABEL_JOB_SIZE's default
    image_size: tuple[int, int] = (1024, 768)  # bulk images: photo-sized, as in bench/pipeline
    seed: int = 13

    def job_seconds(self) -> float:
        """GPU seconds of one bulk job: its full batches, then a partial one."""
        full, rest = divmod(self.job_size, self.batch_size)
        return full * self.times.batch(self.batch_size) + (self.times.batch(rest) if rest else 0)


def plan_for(ctx: Context) -> Plan:
    return ctx.pick(
        # Smoke: seconds, not meaningful numbers. Many short bulk jobs, so plenty are still
        # queued behind each interactive request even on a loaded machine.
        Plan(3, 3, 200, GpuTimes(0.05, 0.01), batch_size=4, job_size=8, image_size=(64, 48)),
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
        # The queue names the backend, the worker and prelabel use.
        dispatcher = RQDispatcher(Settings(redis_url=redis_url), self.redis)
        self.high = dispatcher.queues[Priority.HIGH]
        self.low = dispatcher.queues[Priority.LOW]
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

    def busy(self, images: list[Path], prelabel: Service) -> list[dict[str, Any]]:
        """Interactive requests while the prelabel command's jobs run and wait on the low
        queue; returns once the requests are sent, the command may still be running."""
        running = StartedJobRegistry(queue=self.low)

        def started() -> bool:
            return running.count > 0 or prelabel.process.poll() is not None

        # The command reads the project from Label Studio before it queues anything.
        wait_until(started, 300, "prelabel's first job to start")
        if prelabel.process.poll() is not None:
            raise RuntimeError(f"prelabel ended before the worker started: {prelabel.log_tail()}")
        samples: list[dict[str, Any]] = []
        for image in images:
            # Arrive at a random point of the running bulk job, as a user would: sending right
            # after the previous answer would always meet a bulk job just (re)started.
            time.sleep(self.rng.uniform(0, self.plan.job_seconds()))
            queued = self.low.get_job_ids()  # in the order the worker would take them
            if len(queued) < 2:
                # The bulk run is nearly over: the queue's head may legitimately start first,
                # so fewer than two queued jobs would check no order at all.
                break
            seconds, job_id = self.interactive(image)
            samples.append({"latency_s": seconds, **self._order(job_id, queued)})
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

    def prelabel_jobs(self) -> int:
        """Prelabel jobs this run made, continuations included (a fresh Redis: only ours)."""
        ids = [key.decode().removeprefix("rq:job:") for key in self.redis.scan_iter("rq:job:*")]
        jobs = Job.fetch_many(ids, self.redis, serializer=JSONSerializer)
        return sum(1 for job in jobs if job and job.func_name == PRELABEL_BATCH)


def _finish_prelabel(prelabel: Service, ls: LabelStudio, project: int, tasks: int) -> float:
    """Waits for the command to end; every task must be done, and pre-labelled in Label Studio
    (a job that gave way must lose nothing). Returns seconds waited."""
    started = time.perf_counter()
    code = prelabel.process.wait(timeout=3600)  # a stuck run fails instead of hanging
    waited = time.perf_counter() - started
    log = prelabel.log_path.read_text(errors="replace")
    done = _DONE.search(log)
    if code != 0 or not done or int(done.group(1)) != tasks or int(done.group(3)):
        raise RuntimeError(f"prelabel failed ({code}): {log[-1500:]}")
    stored = _predicted(ls, project)
    if stored != tasks:
        raise RuntimeError(f"prelabel: Label Studio holds {stored} of {tasks} predictions")
    return waited


def run(ctx: Context) -> Report:
    plan = plan_for(ctx)
    root = ctx.subdir("interactive")
    folder = root / "images"
    # Every image distinct across the run (unique_png's index; the bulk ones are JPEGs of their
    # own): the output cache, keyed by image bytes, must never answer for the GPU.
    offsets = itertools.count(step=100_000)  # more than any image set here

    def images(count: int, prefix: str) -> list[Path]:
        return write_images(folder, count, start=next(offsets), prefix=prefix)

    idle_images = images(plan.idle_requests + 1, "idle")
    busy_images = images(plan.busy_requests, "busy")
    shared = {
        "VARCO_LOCAL_IMAGE_ROOTS": str(folder),  # the interactive tasks' images: local paths
        "VARCO_BATCH_SIZE": str(plan.batch_size),
        "VARCO_PRELABEL_JOB_SIZE": str(plan.job_size),
        "VARCO_PREDICT_DEADLINE": "600",  # never cut: a late answer must be measured, not lost
        "MODEL_DIR": str(root / "data"),
    }
    times = plan.times
    gpu = ["--fixed", str(times.fixed), "--per-image", str(times.per_image)]
    with Processes(root / "logs") as processes, httpx.Client(timeout=600) as client:
        ls = start_label_studio(processes, root / "label-studio")
        ctx.log(f"  Label Studio up in {ls.start_seconds:.0f} s")
        bulk_folder = ls.document_root / "bulk"
        bulk_paths = write_jpegs(bulk_folder, plan.bulk_tasks, plan.image_size)
        project, _ = _project(ls, "bulk behind interactive", bulk_folder, bulk_paths, LABEL_CONFIG)
        redis_url = processes.redis()
        # The worker and prelabel reach Label Studio (bulk images, pushes); the backend answers
        # interactive requests from the request alone, as in production.
        labelstudio = {"LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": ls.token}
        env = child_env(REDIS_URL=redis_url, **shared, **labelstudio)
        argv = [sys.executable, "-m", "bench.simgpu", "worker", "--name", "sim-gpu-0", *gpu]
        processes.worker("sim-gpu-0", [*argv, "--redis-url", redis_url], env, redis_url)
        backend = processes.backend("queue-backend", child_env(REDIS_URL=redis_url, **shared))
        bench = Bench(plan, client, backend.url, redis_url)
        bench.interactive(idle_images[0])  # warm-up: the backend's first request imports more
        ctx.log(f"  idle worker: {plan.idle_requests} interactive requests")
        idle = bench.idle(idle_images[1:])
        ctx.log(
            f"  busy worker: prelabel --project over {plan.bulk_tasks} tasks (jobs of "
            f"{plan.job_size}), up to {plan.busy_requests} interactive requests"
        )
        command = [str(BIN / "varco-labeler"), "prelabel", "--project", str(project)]
        started = time.perf_counter()
        prelabel = processes.start("prelabel", command, env)
        busy = bench.busy(busy_images, prelabel)
        _finish_prelabel(prelabel, ls, project, plan.bulk_tasks)
        command_s = time.perf_counter() - started
        jobs = bench.prelabel_jobs()
    initial = -(-plan.bulk_tasks // plan.job_size)  # the jobs prelabel queued at its start
    bulk = {"project_tasks": plan.bulk_tasks, "jobs": initial, "continuations": jobs - initial}
    return _report(plan, idle, busy, bulk | {"command_s": command_s})


def _summary(seconds: list[float]) -> dict[str, float]:
    stats = latency_summary(seconds, len(seconds))
    return {key: stats[key] for key in ("calls", "p50_ms", "p95_ms", "p99_ms", "mean_ms")}


def _ratio(busy: dict[str, float], idle: dict[str, float], batch_ms: float) -> dict[str, float]:
    return {q: busy[f"{q}_ms"] / (idle[f"{q}_ms"] + batch_ms) for q in ("p50", "p95")}


def _report(
    plan: Plan, idle_s: list[float], samples: list[dict[str, Any]], run: dict[str, Any]
) -> Report:
    times = plan.times
    batch_ms = times.batch(plan.batch_size) * 1000
    idle = _summary(idle_s)
    busy = _summary([sample["latency_s"] for sample in samples])
    ratio = _ratio(busy, idle, batch_ms)  # busy / (idle + one GPU batch), p50 and p95
    data = {
        "idle": idle,
        "busy": busy,
        "ratio": ratio,
        "target": TARGET,
        "target_met": all(value <= TARGET for value in ratio.values()),
        "samples": samples,
        "bulk": {
            "tasks": plan.bulk_tasks,
            "job_size": plan.job_size,
            "job_s": plan.job_seconds(),
            "image_size": list(plan.image_size),
            "queue": "varco-low",
            "enqueued_by": "varco-labeler prelabel --project (prelabel_batch jobs, Label Studio)",
            # Jobs made by a running job giving way to interactive work: the rest of its tasks.
            "continuations": run["continuations"],
            "initial_jobs": run["jobs"],
            "command_s": run["command_s"],
        },
        "gpu": {
            "fixed_s": times.fixed,
            "per_image_s": times.per_image,
            "batch_size": plan.batch_size,
            "batch_s": round(batch_ms / 1000, 6),
            "interactive_batch_s": round(times.batch(1), 6),
        },
    }
    label = f"busy: prelabel --project, {plan.bulk_tasks:,} tasks, jobs of {plan.job_size}"
    rows: list[list[Any]] = [
        ["idle worker", idle["calls"], idle["p50_ms"], idle["p95_ms"], None, None],
        [label, busy["calls"], busy["p50_ms"], busy["p95_ms"], *ratio.values()],
    ]
    table = Table(
        f"interactive /predict, 1 simulated GPU worker ({times.fixed} s + {times.per_image} s "
        f"per image per batch; one batch of {plan.batch_size}: {batch_ms / 1000:.2f} s), "
        "real Label Studio 1.23.2",
        ["worker", "requests", "p50 ms", "p95 ms", "p50 ratio", "p95 ratio"],
        rows,
    )
    run_first = sum(sample["bulk_jobs_run_first"] for sample in samples)
    notes = [
        f"ratio = busy latency / (idle latency + one GPU batch of {plan.batch_size}), at the "
        f"same percentile; target <= {TARGET}. p50: {ratio['p50']:.2f}, p95: "
        f"{ratio['p95']:.2f} with prelabel jobs of {plan.job_size} "
        f"({plan.job_seconds():.1f} s of GPU each).",
        f"A running prelabel job gives way between its GPU batches: {run['continuations']} "
        f"continuation job(s) for {len(samples)} busy request(s); every one of the "
        f"{plan.bulk_tasks} tasks was pre-labelled in Label Studio "
        f"(the command took {run['command_s']:.0f} s).",
        f"bulk jobs queued when a request was sent that ran before it: {run_first} "
        "(the queue's head excepted).",
    ]
    return Report("interactive", [table], data, notes)
