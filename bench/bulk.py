"""Bulk pre-labelling of a project against a real Label Studio, tiny model, CPU.

- synchronous: every task in ONE /predict to the embedded backend (``varco-labeler serve``, no
  Redis) with batch size 1: the model in the request, one task at a time, as Label Studio's example
  backends do for "Retrieve predictions". Label Studio cuts that request at 100 s
  (ML_TIMEOUT_PREDICT); here the backend's deadline is lifted so the whole run is timed. Storing
  the returned predictions in Label Studio (one bulk import) is timed separately. The same with
  the product's default batch size 8 separates the gain of batching from that of the queue.
- queue: ``varco-labeler prelabel --project P`` with Redis and 1 or 2 ``varco-worker`` processes
  (batch size 8): jobs predict and push their predictions into the project themselves.

Every task has its own image (no output-cache hits). Processes that serve the model are started
and loaded before the clock starts.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.common import BIN, Context, Processes, Report, Table, child_env, write_images
from bench.labelstudio import LabelStudio
from bench.labelstudio import start as start_label_studio
from varco_labeler.labelstudio.templates import label_config

LIMIT_S = 100.0  # Label Studio's ML_TIMEOUT_PREDICT
CONFIG = label_config("grounding", ["Cat", "Dog"])


def _project(
    ls: LabelStudio, title: str, folder: Path, paths: list[Path], config: str = CONFIG
) -> tuple[int, list]:
    client = ls.sdk()
    project = client.projects.create(title=title, label_config=config)
    client.import_storage.local.create(
        project=project.id, path=str(folder), use_blob_urls=True, title="images"
    )
    rel = folder.relative_to(ls.document_root)
    request = [{"data": {"image": f"/data/local-files/?d={rel}/{p.name}"}} for p in paths]
    client.projects.import_tasks(id=project.id, request=request)
    with ls.api() as api:
        body = api.get(
            "/api/tasks", params={"project": project.id, "page_size": len(paths) + 10}
        ).json()
    tasks = body["tasks"] if isinstance(body, dict) else body
    if len(tasks) != len(paths):
        raise RuntimeError(f"project {project.id}: {len(tasks)} tasks, wanted {len(paths)}")
    return project.id, [{"id": t["id"], "data": t["data"]} for t in tasks]


def _predicted(ls: LabelStudio, project: int) -> int:
    return len({p.task for p in ls.sdk().predictions.list(project=project)})


def _synchronous(
    ctx: Context, ls: LabelStudio, env: dict[str, str], paths: list[Path], folder: Path, batch: int
) -> dict[str, Any]:
    project, tasks = _project(ls, f"sync batch {batch}", folder, paths)
    root = ctx.subdir(f"bulk/sync-{batch}")
    with Processes(root / "logs") as processes:
        backend = processes.backend(
            "embedded-backend",
            env
            | {
                "VARCO_BATCH_SIZE": str(batch),
                "VARCO_PREDICT_DEADLINE": "86400",
                "VARCO_MAX_PENDING_TASKS": "1000000",
                "MODEL_DIR": str(root / "model-dir"),
            },
        )
        import httpx

        body = {"tasks": tasks, "label_config": CONFIG, "project": f"{project}.0"}
        started = time.perf_counter()
        response = httpx.post(f"{backend.url}/predict", json=body, timeout=86400)
        predict_s = time.perf_counter() - started
        response.raise_for_status()
    results = response.json()["results"]
    predictions = [
        {"task": task["id"], **result}
        for task, result in zip(tasks, results, strict=True)
        if result and result.get("result")
    ]
    if len(predictions) != len(tasks):
        raise RuntimeError(f"synchronous: {len(tasks) - len(predictions)} task(s) unpredicted")
    started = time.perf_counter()
    ls.sdk().projects.import_predictions(id=project, request=predictions)
    store_s = time.perf_counter() - started
    stored = _predicted(ls, project)
    if stored != len(tasks):
        raise RuntimeError(f"synchronous: Label Studio holds {stored} of {len(tasks)} predictions")
    return {
        "tasks": len(tasks),
        "seconds": predict_s + store_s,
        "predict_seconds": predict_s,
        "store_seconds": store_s,
        "tasks_per_s": len(tasks) / (predict_s + store_s),
        "over_label_studio_limit": predict_s > LIMIT_S,
    }


def _queue(
    ctx: Context,
    ls: LabelStudio,
    env: dict[str, str],
    paths: list[Path],
    folder: Path,
    workers: int,
) -> dict[str, Any]:
    project, tasks = _project(ls, f"prelabel {workers} workers", folder, paths)
    root = ctx.subdir(f"bulk/queue-{workers}")
    with Processes(root / "logs") as processes:
        redis_url = processes.redis()
        queue_env = env | {"REDIS_URL": redis_url, "VARCO_BATCH_SIZE": "8", "MODEL_DIR": str(root)}
        for index in range(workers):
            processes.varco_worker(f"worker-{index}", queue_env, redis_url)
        argv = [str(BIN / "varco-labeler"), "prelabel", "--project", str(project)]
        started = time.perf_counter()
        run = subprocess.run(argv, env=queue_env, capture_output=True, text=True, timeout=7200)
        seconds = time.perf_counter() - started
    summary = run.stderr.strip().splitlines()[-1] if run.stderr.strip() else ""
    done = re.search(r"done (\d+), skipped (\d+) .*, failed (\d+)", run.stderr)
    if run.returncode != 0 or not done or int(done.group(1)) != len(tasks):
        raise RuntimeError(f"prelabel failed ({run.returncode}): {run.stderr[-1500:]}")
    stored = _predicted(ls, project)
    if stored != len(tasks):
        raise RuntimeError(f"prelabel: Label Studio holds {stored} of {len(tasks)} predictions")
    return {
        "tasks": len(tasks),
        "workers": workers,
        "seconds": seconds,
        "tasks_per_s": len(tasks) / seconds,
        "summary": summary,
    }


def run(ctx: Context) -> Report:
    count = ctx.pick(8, 200, 1000)
    root = ctx.subdir("bulk")
    tiny = str(ctx.tiny_model())
    with Processes(root / "logs") as processes:
        ls = start_label_studio(processes, root / "label-studio")
        ctx.log(f"  Label Studio up in {ls.start_seconds:.0f} s; {count} tasks per run")
        folder = ls.document_root / "bulk"
        paths = write_images(folder, count, prefix="bulk")
        env = child_env(VARCO_MODEL=tiny, LABEL_STUDIO_URL=ls.url, LABEL_STUDIO_API_KEY=ls.token)
        runs: dict[str, dict[str, Any]] = {}
        plan = [
            ("synchronous /predict, batch 1", lambda: _synchronous(ctx, ls, env, paths, folder, 1)),
            ("synchronous /predict, batch 8", lambda: _synchronous(ctx, ls, env, paths, folder, 8)),
            ("prelabel, queue, 1 worker", lambda: _queue(ctx, ls, env, paths, folder, 1)),
            ("prelabel, queue, 2 workers", lambda: _queue(ctx, ls, env, paths, folder, 2)),
        ]
        for name, measure in plan:
            ctx.log(f"  {name}")
            runs[name] = measure()
    base = runs["synchronous /predict, batch 1"]["tasks_per_s"]
    rows = []
    for name, result in runs.items():
        result["vs_synchronous_batch_1"] = result["tasks_per_s"] / base
        rows.append(
            [
                name,
                result["tasks"],
                result["seconds"],
                result.get("predict_seconds"),
                result["tasks_per_s"],
                result["vs_synchronous_batch_1"],
                result.get("over_label_studio_limit"),
            ]
        )
    table = Table(
        f"bulk: pre-label {count} tasks, real Label Studio 1.23.2, tiny model, CPU",
        ["path", "tasks", "total s", "/predict s", "tasks/s", "x sync b1", "/predict > 100 s"],
        rows,
    )
    sync = runs["synchronous /predict, batch 1"]
    notes = [
        "synchronous total = the one /predict + storing its predictions in Label Studio "
        "(one bulk import); prelabel total = the whole command, jobs pushing as they finish.",
        f"the synchronous /predict took {sync['predict_seconds']:.0f} s: "
        + (
            f"OVER Label Studio's {LIMIT_S:.0f} s limit: it would have been cut off"
            if sync["over_label_studio_limit"]
            else f"under Label Studio's {LIMIT_S:.0f} s limit on this tiny model"
        ),
    ]
    data = {"tasks": count, "label_studio_start_s": ls.start_seconds, "runs": runs}
    return Report("bulk", [table], data, notes)
