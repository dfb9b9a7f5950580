"""Memory: peak RSS of each kind of process, and proof that the queue-mode backend has no torch.

- queue backend: ``varco-labeler serve`` with REDIS_URL, after serving /predict requests (its
  /proc/PID/maps must not map libtorch; a separate interpreter also builds the queue-mode app and
  lists any heavy module it imported);
- embedded backend: ``varco-labeler serve`` without REDIS_URL, tiny model in-process;
- worker: ``varco-worker`` with the tiny model, after running jobs;
- zero-cost worker: the same RQ worker with bench.zero's engine (the worker's floor, no torch).
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import httpx

from bench.common import (
    Context,
    Processes,
    Report,
    Table,
    child_env,
    mapped_torch,
    peak_rss_mib,
    write_images,
)
from bench.zero import LABEL_CONFIG
from varco_labeler.queue import RQDispatcher
from varco_labeler.settings import Settings
from varco_labeler.varco import prompt_for

HEAVY = ("torch", "transformers", "torchvision", "accelerate", "numpy")
# What `varco-labeler serve` imports and builds in queue mode (cli._serve), in a fresh interpreter.
IMPORT_CHECK = """
import json, sys
from varco_labeler import cli
from varco_labeler.backend import Backend
from varco_labeler.feedback.store import FeedbackStore
from varco_labeler.queue import RQDispatcher
from varco_labeler.server import create_app
from varco_labeler.settings import Settings
import uvicorn
settings = Settings(redis_url="redis://127.0.0.1:1/0", model_dir=sys.argv[1])
feedback = FeedbackStore(None, model_dir=settings.model_dir)
create_app(Backend(settings, RQDispatcher(settings), feedback), feedback)
print(json.dumps({name: name in sys.modules for name in HEAVY}))
""".replace("HEAVY", repr(HEAVY))


def _tasks(paths: list[Any]) -> list[dict[str, Any]]:
    return [{"id": i, "data": {"image": str(p)}} for i, p in enumerate(paths)]


def _predict(url: str, tasks: list[dict[str, Any]], per_request: int) -> None:
    with httpx.Client(timeout=300) as client:
        for start in range(0, len(tasks), per_request):
            body = {"tasks": tasks[start : start + per_request], "label_config": LABEL_CONFIG}
            response = client.post(f"{url}/predict", json=body)
            response.raise_for_status()
            if not all(r.get("result") for r in response.json()["results"]):
                raise RuntimeError(f"{url}: empty predictions: {response.text[:300]}")


def run(ctx: Context) -> Report:
    tasks_each = ctx.pick(16, 64, 256)
    root = ctx.subdir("memory")
    images = root / "images"
    paths = write_images(images, 3 * tasks_each, prefix="m")
    groups = [paths[i * tasks_each : (i + 1) * tasks_each] for i in range(3)]
    tiny = str(ctx.tiny_model())
    roots = {"VARCO_LOCAL_IMAGE_ROOTS": str(images)}
    measured: dict[str, dict[str, Any]] = {}
    with Processes(root / "logs") as processes:
        redis_url = processes.redis()
        zero = processes.zero_worker(
            "zero-worker", child_env(VARCO_QUEUE="zero", **roots), redis_url
        )
        queue_backend = processes.backend(
            "queue-backend",
            child_env(REDIS_URL=redis_url, VARCO_QUEUE="zero", MODEL_DIR=str(root / "q")),
        )
        worker = processes.varco_worker(
            "tiny-worker", child_env(VARCO_MODEL=tiny, VARCO_QUEUE="tiny", **roots), redis_url
        )
        embedded = processes.backend(
            "embedded-backend", child_env(VARCO_MODEL=tiny, MODEL_DIR=str(root / "e"), **roots)
        )
        ctx.log(f"  driving each process with {tasks_each} tasks")
        _predict(queue_backend.url, _tasks(groups[0]), 8)
        _predict(embedded.url, _tasks(groups[1]), 8)
        dispatcher = RQDispatcher(Settings(redis_url=redis_url, queue_name="tiny"))
        prompt = prompt_for("grounding")
        items = [
            {"key": str(i), "image": str(p), "task": "grounding", "prompt": prompt}
            for i, p in enumerate(groups[2])
        ]
        outputs = dispatcher.run(items, 300)
        if not all(o and "raw" in o for o in outputs):
            raise RuntimeError(f"tiny worker: missing outputs: {outputs[:2]}")
        dispatcher.redis.close()
        for name, service in [
            ("backend, queue mode (varco-labeler serve + REDIS_URL)", queue_backend),
            ("backend, embedded, tiny model", embedded),
            ("worker, tiny model (varco-worker)", worker),
            ("worker, zero-cost engine (bench.zero)", zero),
        ]:
            service.alive()
            measured[name] = {
                **peak_rss_mib(service.pid),
                "torch_mapped": mapped_torch(service.pid),
            }
    check = subprocess.run(
        [sys.executable, "-c", IMPORT_CHECK, str(root / "import-check")],
        capture_output=True,
        text=True,
        env=child_env(),
        check=True,
    )
    imported = json.loads(check.stdout.strip().splitlines()[-1])
    queue_name = next(iter(measured))
    no_torch = not measured[queue_name]["torch_mapped"] and not imported["torch"]
    data = {
        "processes": measured,
        "queue_backend_modules": imported,
        "queue_backend_without_torch": no_torch,
        "tasks_per_process": tasks_each,
    }
    table = Table(
        f"memory: peak RSS after {tasks_each} tasks each",
        ["process", "peak RSS MiB", "RSS MiB", "torch loaded"],
        [
            [name, m["peak_rss_mib"], m["rss_mib"], m["torch_mapped"]]
            for name, m in measured.items()
        ],
    )
    modules = Table(
        "memory: modules a fresh queue-mode backend imports (sys.modules)",
        ["module", "imported"],
        [[name, value] for name, value in imported.items()],
    )
    notes = [
        "torch loaded = libtorch mapped in /proc/PID/maps of the live process.",
        f"queue-mode backend without torch: {'yes' if no_torch else 'NO'}",
    ]
    return Report("memory", [table, modules], data, notes)
