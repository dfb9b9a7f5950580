"""Pipeline: does the project keep the GPU busy? A simulated GPU (bench.simgpu), a real Label
Studio 1.23.2, real Redis and RQ worker processes.

The simulated GPU sleeps ``fixed + per_image * batch`` seconds per batch (defaults mimic
VARCO-VISION-14B on one GPU, see bench/simgpu.py), so the CPU is left to everything else, and
the engine's own throughput at the batch size is the ceiling. Measured, one run, side by side:

- efficiency: ``varco-labeler prelabel --project`` tasks/s with one worker over the engine's own
  images/s at the same batch size (the share of the run the "GPU" is busy);
- scaling: the same with 1, 2 and 4 workers (4 simulated GPUs), as multiples of 1 worker;
- the same with workers that take jobs one at a time (``VARCO_LOOKAHEAD=0``), 1 and 4 workers:
  what the lookahead (varco_labeler.lookahead) is worth;
- a Label Studio slowed down by a proxy (bench.slowproxy) that adds 500 ms to every prediction
  import, 1 worker;
- one "Retrieve predictions" ``/predict`` of many tasks to the queue backend, 1, 2 and 4 workers;
- the synchronous path of Label Studio's example backends: the model in the request (the embedded
  backend), batch 1, every task in one ``/predict``, then one import of its predictions.

Each simulated GPU also writes when it was busy (bench.simgpu.TRACE_ENV): set against RQ's job
timestamps, that says where the GPUs idled (a job's start, between its batches, its last push,
between jobs).

Every task has its own 1024x768 JPEG (fetched from Label Studio and decoded by the workers, no
output-cache hits). Workers and backends are started and loaded before the clock starts; a
prelabel run is timed as the whole command, start-up included.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
from PIL import Image, ImageDraw

from bench.bulk import _predicted, _project
from bench.common import BIN, Context, Processes, Report, Table, child_env, free_port
from bench.labelstudio import LabelStudio
from bench.labelstudio import start as start_label_studio
from bench.simgpu import LABEL_CONFIG, TRACE_ENV, GpuTimes, SimulatedGpuEngine

WORKERS = (1, 2, 4)
IMPORT_DELAY_S = 0.5  # what the slow proxy adds to each prediction import


@dataclass(frozen=True)
class Plan:
    """How big one run is: tasks per path, the GPU's times, the product's batch sizes."""

    prelabel_tasks: int
    predict_tasks: int
    synchronous_tasks: int
    times: GpuTimes
    batch_size: int = 8  # VARCO_BATCH_SIZE's default
    job_size: int = 64  # VARCO_PRELABEL_JOB_SIZE's default
    image_size: tuple[int, int] = (1024, 768)


def plan_for(ctx: Context) -> Plan:
    return ctx.pick(
        # Smoke: seconds, not meaningful numbers; small jobs so every worker gets some.
        Plan(24, 16, 4, GpuTimes(0.02, 0.005), batch_size=4, job_size=8, image_size=(64, 48)),
        Plan(256, 96, 16, GpuTimes()),
        Plan(512, 192, 40, GpuTimes()),
    )


def write_jpegs(folder: Path, count: int, size: tuple[int, int]) -> list[Path]:
    """Distinct photos-sized JPEGs (so the fetch and decode cost something, as real ones do)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        image = Image.new("RGB", size, ((index * 37) % 256, (index * 11) % 256, 128))
        draw = ImageDraw.Draw(image)
        width, height = size
        for shape in range(6):
            x, y = (index * 13 + shape * 101) % width, (index * 7 + shape * 53) % height
            box = [x, y, x + width // 4, y + height // 5]
            draw.rectangle(box, fill=(shape * 40, 200, index % 256))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
        path = folder / f"photo-{index:06d}.jpg"
        path.write_bytes(buffer.getvalue())
        paths.append(path)
    return paths


def engine_rate(plan: Plan, batches: int) -> float:
    """The simulated GPU's own images/s at the batch size, measured in this process."""
    engine = SimulatedGpuEngine(plan.times, max_batch_size=plan.batch_size)
    from varco_labeler.engine.base import Request
    from varco_labeler.varco import Task, prompt_for

    image = Image.new("RGB", (8, 8))
    request = Request(image, prompt_for(Task.GROUNDING), Task.GROUNDING)
    requests = [request] * (plan.batch_size * batches)
    started = time.perf_counter()
    engine.generate(requests)
    return len(requests) / (time.perf_counter() - started)


class Bench:
    def __init__(self, ctx: Context, ls: LabelStudio, plan: Plan, paths: list[Path]) -> None:
        self.ctx, self.ls, self.plan, self.paths = ctx, ls, plan, paths
        self.folder = paths[0].parent

    def env(self, **extra: str) -> dict[str, str]:
        defaults = {
            "LABEL_STUDIO_URL": self.ls.url,
            "LABEL_STUDIO_API_KEY": self.ls.token,
            "VARCO_BATCH_SIZE": str(self.plan.batch_size),
            "VARCO_PRELABEL_JOB_SIZE": str(self.plan.job_size),
        }
        return child_env(**(defaults | extra))

    def gpu_args(self) -> list[str]:
        times = self.plan.times
        return ["--fixed", str(times.fixed), "--per-image", str(times.per_image)]

    def workers(
        self, processes: Processes, count: int, env: dict[str, str], redis: str, root: Path
    ) -> dict[str, Path]:
        """Start ``count`` simulated-GPU workers; returns each one's GPU trace file."""
        traces = {}
        for index in range(count):
            name = f"sim-gpu-{index}"
            traces[name] = root / f"gpu-trace-{name}.txt"
            traces[name].unlink(missing_ok=True)
            argv = [sys.executable, "-m", "bench.simgpu", "worker", "--name", name]
            argv += ["--redis-url", redis, *self.gpu_args()]
            processes.worker(name, argv, env | {TRACE_ENV: str(traces[name])}, redis)
        return traces

    def prelabel(
        self, workers: int, import_delay: float = 0.0, lookahead: bool = True
    ) -> dict[str, Any]:
        tasks = self.paths[: self.plan.prelabel_tasks]
        label = f"prelabel {workers}w" + (f" slow {import_delay}" if import_delay else "")
        label += "" if lookahead else " no lookahead"
        project, _ = _project(self.ls, label, self.folder, tasks, LABEL_CONFIG)
        root = self.ctx.subdir(f"pipeline/{label.replace(' ', '-')}")
        with Processes(root / "logs") as processes:
            redis = processes.redis()
            url = self.ls.url
            if import_delay:
                url = self.slow_proxy(processes, import_delay)
            env = self.env(REDIS_URL=redis, MODEL_DIR=str(root), LABEL_STUDIO_URL=url)
            worker_env = env if lookahead else env | {"VARCO_LOOKAHEAD": "0"}
            traces = self.workers(processes, workers, worker_env, redis, root)
            argv = [str(BIN / "varco-labeler"), "prelabel", "--project", str(project)]
            started = time.perf_counter()
            limit = self.ctx.pick(300, 3600, 7200)  # a stuck run fails instead of hanging
            run = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=limit)
            command_seconds = time.perf_counter() - started
            timeline = _timeline(redis, traces)
        done = re.search(r"done (\d+), skipped (\d+) .*, failed (\d+)", run.stderr)
        if run.returncode != 0 or not done or int(done.group(1)) != len(tasks):
            raise RuntimeError(f"prelabel failed ({run.returncode}): {run.stderr[-1500:]}")
        stored = _predicted(self.ls, project)
        if stored != len(tasks):
            raise RuntimeError(f"prelabel: Label Studio holds {stored} of {len(tasks)}")
        return {
            "tasks": len(tasks),
            "workers": workers,
            "seconds": timeline.pop("seconds"),
            "command_seconds": command_seconds,
            "gpu_idle": timeline,
        }

    def image_serving_rate(self) -> float:
        """Images/s Label Studio serves here to one worker's download threads, fetched and
        decoded by the product's fetcher: the ceiling of every path once GPUs are fast enough."""
        from concurrent.futures import ThreadPoolExecutor

        from varco_labeler.labelstudio.images import ImageFetcher
        from varco_labeler.settings import Settings

        settings = Settings(label_studio_url=self.ls.url, label_studio_api_key=self.ls.token)
        fetcher = ImageFetcher.from_settings(settings)
        paths = self.paths[: self.plan.predict_tasks]
        _, tasks = _project(self.ls, "serving", self.folder, paths, LABEL_CONFIG)
        refs = [task["data"]["image"] for task in tasks]
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(fetcher.fetch, refs))
        return len(refs) / (time.perf_counter() - started)

    def slow_proxy(self, processes: Processes, delay: float) -> str:
        port = free_port()
        argv = [sys.executable, "-m", "bench.slowproxy", "--target", self.ls.url]
        argv += ["--port", str(port), "--delay", str(delay)]
        proxy = processes.start("slow-proxy", argv, child_env(), url=f"http://127.0.0.1:{port}")
        processes.wait_http(proxy, 30)
        return proxy.url

    def predict(self, workers: int) -> dict[str, Any]:
        """One "Retrieve predictions" /predict of many tasks to the queue backend."""
        tasks = self.paths[: self.plan.predict_tasks]
        title = f"predict {workers}w"
        project, task_list = _project(self.ls, title, self.folder, tasks, LABEL_CONFIG)
        root = self.ctx.subdir(f"pipeline/predict-{workers}")
        with Processes(root / "logs") as processes:
            redis = processes.redis()
            env = self.env(REDIS_URL=redis, MODEL_DIR=str(root), **_NO_DEADLINE)
            self.workers(processes, workers, env, redis, root)
            backend = processes.backend("queue-backend", env)
            seconds = _one_predict(backend.url, project, task_list)
        return {"tasks": len(tasks), "workers": workers, "seconds": seconds}

    def synchronous(self) -> dict[str, Any]:
        """The example backends' way: the model in the request, batch 1, then one import."""
        tasks = self.paths[: self.plan.synchronous_tasks]
        project, task_list = _project(self.ls, "synchronous", self.folder, tasks, LABEL_CONFIG)
        root = self.ctx.subdir("pipeline/synchronous")
        with Processes(root / "logs") as processes:
            port = free_port()
            env = self.env(MODEL_DIR=str(root), VARCO_BATCH_SIZE="1", **_NO_DEADLINE)
            argv = [sys.executable, "-m", "bench.simgpu", "serve", "--port", str(port)]
            url = f"http://127.0.0.1:{port}"
            server = processes.start("sync-backend", [*argv, *self.gpu_args()], env, url=url)
            processes.wait_http(server, 60)
            started = time.perf_counter()
            results = _predict_results(server.url, project, task_list)
            predictions = [{"task": t["id"], **r} for t, r in zip(task_list, results, strict=True)]
            self.ls.sdk().projects.import_predictions(id=project, request=predictions)
            seconds = time.perf_counter() - started
        if _predicted(self.ls, project) != len(tasks):
            raise RuntimeError("synchronous: not every prediction reached Label Studio")
        return {"tasks": len(tasks), "workers": 1, "seconds": seconds}


def _timeline(redis_url: str, traces: dict[str, Path]) -> dict[str, Any]:
    """The run's window and where its GPUs idled, from RQ's job timestamps and the GPU traces.

    The window runs from the first job queued to the last one finished: a prelabel run's steady
    state (the command's start-up before it queues anything, imports and reading the project from
    Label Studio, is a fixed cost, reported apart). Idle time per job, averaged: before its first
    GPU batch (its first images downloaded), between its batches, after its last batch (the last
    conversion and push), and from a job's end to the same worker's next job (the queue).
    """
    from redis import Redis
    from rq.job import Job
    from rq.serializers import JSONSerializer

    connection = Redis.from_url(redis_url)
    ids = [key.decode().removeprefix("rq:job:") for key in connection.scan_iter("rq:job:*")]
    jobs = [j for j in Job.fetch_many(ids, connection, serializer=JSONSerializer) if j]
    if not jobs or any(job.ended_at is None or job.started_at is None for job in jobs):
        raise RuntimeError("prelabel left jobs unfinished")
    first = min(job.enqueued_at for job in jobs if job.enqueued_at).timestamp()
    last = max(job.ended_at for job in jobs if job.ended_at).timestamp()
    busy, before, between, after, queue = 0.0, [], [], [], []
    for name, path in traces.items():
        lines = path.read_text().splitlines() if path.exists() else []  # a worker left idle
        batches = [tuple(map(float, line.split()[:2])) for line in lines]
        busy += sum(end - start for start, end in batches)
        mine = sorted((j for j in jobs if j.worker_name == name), key=lambda j: j.started_at)
        for job in mine:
            began, ended = job.started_at.timestamp(), job.ended_at.timestamp()
            inside = [b for b in batches if began <= b[0] <= ended]
            if inside:
                before.append(inside[0][0] - began)
                after.append(ended - inside[-1][1])
                between.append(sum(b[0] - a[1] for a, b in pairwise(inside)))
        queue += [b.started_at.timestamp() - a.ended_at.timestamp() for a, b in pairwise(mine)]

    def mean(values: list[float]) -> float | None:
        return sum(values) / len(values) if values else None

    return {
        "seconds": last - first,
        "busy_share": busy / ((last - first) * len(traces)),
        "jobs": len(jobs),
        "before_first_batch_s": mean(before),
        "between_batches_s": mean(between),
        "after_last_batch_s": mean(after),
        "between_jobs_s": mean(queue),
    }


_NO_DEADLINE = {"VARCO_PREDICT_DEADLINE": "86400", "VARCO_MAX_PENDING_TASKS": "1000000"}


def _predict_results(url: str, project: int, tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    body = {"tasks": tasks, "label_config": LABEL_CONFIG, "project": f"{project}.0"}
    response = httpx.post(f"{url}/predict", json=body, timeout=86400)
    response.raise_for_status()
    results = response.json()["results"]
    missing = sum(1 for result in results if not (result and result.get("result")))
    if len(results) != len(tasks) or missing:
        raise RuntimeError(f"/predict: {missing} of {len(tasks)} task(s) without a prediction")
    return results


def _one_predict(url: str, project: int, tasks: list[dict[str, Any]]) -> float:
    started = time.perf_counter()
    _predict_results(url, project, tasks)
    return time.perf_counter() - started


def run(ctx: Context) -> Report:
    plan = plan_for(ctx)
    root = ctx.subdir("pipeline")
    count = max(plan.prelabel_tasks, plan.predict_tasks, plan.synchronous_tasks)
    gpu_rate = engine_rate(plan, batches=ctx.pick(2, 3, 4))
    ctx.log(
        f"  simulated GPU: {plan.times.fixed} s + {plan.times.per_image} s/image per batch; "
        f"{gpu_rate:.2f} images/s at batch {plan.batch_size}"
    )
    runs: dict[str, dict[str, Any]] = {}
    with Processes(root / "logs") as processes:
        ls = start_label_studio(processes, root / "label-studio")
        ctx.log(f"  Label Studio up in {ls.start_seconds:.0f} s")
        paths = write_jpegs(ls.document_root / "pipeline", count, plan.image_size)
        bench = Bench(ctx, ls, plan, paths)
        serving = bench.image_serving_rate()
        ctx.log(f"  Label Studio serves {serving:.1f} images/s here (8 at a time, fetched+decoded)")
        steps: list[tuple[str, Any]] = [
            *[(f"prelabel, {w} worker(s)", lambda w=w: bench.prelabel(w)) for w in WORKERS],
            *[
                (f"prelabel, {w} worker(s), no lookahead", lambda w=w: bench.prelabel(w, 0, False))
                for w in (1, 4)
            ],
            (
                f"prelabel, 1 worker, Label Studio +{IMPORT_DELAY_S * 1000:.0f} ms per import",
                lambda: bench.prelabel(1, IMPORT_DELAY_S),
            ),
            *[(f"/predict, queue, {w} worker(s)", lambda w=w: bench.predict(w)) for w in WORKERS],
            ("synchronous /predict, batch 1", bench.synchronous),
        ]
        for name, measure in steps:
            ctx.log(f"  {name} ...")
            result = measure()
            result["tasks_per_s"] = result["tasks"] / result["seconds"]
            # The synchronous path runs at batch 1: its ceiling is the GPU's batch-1 rate.
            ceiling = 1 / plan.times.batch(1) if name.startswith("synchronous") else gpu_rate
            result["efficiency"] = result["tasks_per_s"] / (ceiling * result["workers"])
            runs[name] = result
            ctx.log(
                f"    {result['tasks']} tasks in {result['seconds']:.1f} s: "
                f"{result['tasks_per_s']:.2f} tasks/s, GPU busy {result['efficiency']:.2f}"
            )
    report = _report(plan, gpu_rate, runs)
    report.data["label_studio_images_per_s"] = serving
    report.notes.append(
        f"Label Studio served {serving:.1f} images/s here (one client, 8 downloads at a time); "
        "it shares the 2 cores with Redis, the workers and the prelabel command."
    )
    return report


def _report(plan: Plan, gpu_rate: float, runs: dict[str, dict[str, Any]]) -> Report:
    sync = runs["synchronous /predict, batch 1"]["tasks_per_s"]
    prelabel = {w: runs[f"prelabel, {w} worker(s)"] for w in WORKERS}
    predict = {w: runs[f"/predict, queue, {w} worker(s)"] for w in WORKERS}
    slow = runs[f"prelabel, 1 worker, Label Studio +{IMPORT_DELAY_S * 1000:.0f} ms per import"]
    alone = {w: runs[f"prelabel, {w} worker(s), no lookahead"] for w in (1, 4)}
    one, one_predict = prelabel[1]["tasks_per_s"], predict[1]["tasks_per_s"]
    data = {
        "efficiency": prelabel[1]["efficiency"],
        "scaling": {str(w): r["tasks_per_s"] / one for w, r in prelabel.items()},
        # One GPU against one GPU: prelabel with 1 worker over the synchronous path.
        "vs_synchronous": one / sync,
        "vs_synchronous_by_workers": {str(w): r["tasks_per_s"] / sync for w, r in prelabel.items()},
        "slow_label_studio": {"import_delay_s": IMPORT_DELAY_S, "efficiency": slow["efficiency"]},
        # The same runs with workers that take jobs strictly one at a time (VARCO_LOOKAHEAD=0).
        "without_lookahead": {
            "efficiency": alone[1]["efficiency"],
            "scaling_4": alone[4]["tasks_per_s"] / alone[1]["tasks_per_s"],
            "vs_synchronous": alone[1]["tasks_per_s"] / sync,
        },
        "predict": {
            "efficiency": predict[1]["efficiency"],
            "scaling": {str(w): r["tasks_per_s"] / one_predict for w, r in predict.items()},
        },
        "gpu": {
            "fixed_s": plan.times.fixed,
            "per_image_s": plan.times.per_image,
            "batch_size": plan.batch_size,
            "prelabel_job_size": plan.job_size,
            "engine_images_per_s": gpu_rate,
            "engine_images_per_s_at_batch_1": 1 / plan.times.batch(1),
        },
        "runs": runs,
    }
    rows = []
    for name, result in runs.items():
        base = one_predict if name.startswith("/predict") else one
        if "no lookahead" in name:
            base = alone[1]["tasks_per_s"]
        rows.append(
            [
                name,
                result["tasks"],
                result["seconds"],
                result.get("command_seconds"),
                result["tasks_per_s"],
                result["efficiency"],
                result["tasks_per_s"] / base if "worker(s)" in name else None,
                result["tasks_per_s"] / sync,
            ]
        )
    times = plan.times
    table = Table(
        f"pipeline: simulated GPU ({times.fixed} s + {times.per_image} s per image per batch, "
        f"batch {plan.batch_size}: {gpu_rate:.2f} images/s per GPU), real Label Studio 1.23.2",
        ["path", "tasks", "s", "command s", "tasks/s", "GPU busy", "x 1 worker", "x sync"],
        rows,
    )
    idle = Table(
        "pipeline: where the simulated GPUs idled (prelabel runs; seconds per job, averaged)",
        [
            "path",
            "jobs",
            "GPU busy (traced)",
            "before 1st batch",
            "between batches",
            "after last",
            "between jobs",
        ],
        [
            [
                name,
                result["gpu_idle"]["jobs"],
                result["gpu_idle"]["busy_share"],
                result["gpu_idle"]["before_first_batch_s"],
                result["gpu_idle"]["between_batches_s"],
                result["gpu_idle"]["after_last_batch_s"],
                result["gpu_idle"]["between_jobs_s"],
            ]
            for name, result in runs.items()
            if "gpu_idle" in result
        ],
    )
    notes = [
        "GPU busy = tasks/s over (workers x the engine's own images/s at this batch size; "
        "at batch 1 for the synchronous path). GPU busy (traced) = the time the simulated GPUs "
        "slept in batches over workers x the window, from their own trace: the two agree when "
        "every batch is full.",
        "prelabel s = first job queued to last job finished (RQ's timestamps); command s = the "
        "whole command, its start-up included (imports, reading the project).",
        "synchronous = the model in the request at batch 1 (the example backends), "
        f"{1 / times.batch(1):.2f} images/s at best, plus one import of its predictions.",
    ]
    return Report("pipeline", [table, idle], data, notes)
