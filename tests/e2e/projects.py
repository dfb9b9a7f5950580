"""Label Studio projects for the end-to-end tests: local-file tasks of plain-coloured images;
``varco``, our command line as a user runs it; a queue with real workers, and ``prelabel``
running beside the test."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from helpers import CAT_DOG_CONFIG
from PIL import Image
from processes import Processes, RedisProcess, wait_until
from redis import Redis

from varco_labeler.queue import WORKER_VERSIONS

# The colours engine.tiny taught the model: red -> one cat, blue -> two dogs.
COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220)}


def make_project(
    label_studio: Any,
    ls_client: Any,
    title: str,
    count: int,
    config: str = CAT_DOG_CONFIG,
    colours: dict[str, tuple[int, int, int]] = COLOURS,
) -> int:
    """A project of ``count`` local-file tasks whose images cycle through ``colours``."""
    project = ls_client.projects.create(title=title, label_config=config)
    folder = label_studio.document_root / f"prelabel-{project.id}"
    folder.mkdir()
    for name, colour in colours.items():
        buffer = io.BytesIO()
        Image.new("RGB", (48, 40), colour).save(buffer, format="PNG")
        (folder / f"{name}.png").write_bytes(buffer.getvalue())
    # The storage lets Label Studio serve the folder; the tasks are imported, not synced.
    ls_client.import_storage.local.create(
        project=project.id, path=str(folder), use_blob_urls=True, title="images"
    )
    rel = folder.relative_to(label_studio.document_root)
    names = list(colours)
    tasks = [
        {"data": {"image": f"/data/local-files/?d={rel}/{names[i % len(names)]}.png"}}
        for i in range(count)
    ]
    ls_client.projects.import_tasks(id=project.id, request=tasks)
    return project.id


def varco(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``varco-labeler ARGS`` in a process of its own, output captured."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "varco-labeler"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def connect(ls_client: Any, project: int, url: str, **settings: Any) -> None:
    """Settings > Model > Connect model (``settings``: extra_params and the like); Label Studio
    calls the backend's /setup and adds its webhook. Label Studio gives /setup 3 s: on a loaded
    two-core machine a connection may time out, and is tried again, as a user would."""
    from label_studio_sdk.core.api_error import ApiError

    for attempt in range(4):
        try:
            ml = ls_client.ml.create(project=project, url=url, title="VARCO-VISION", **settings)
            break
        except ApiError as error:
            if "timed out" not in str(error.body) or attempt == 3:
                raise
    assert ls_client.ml.get(id=ml.id).state == "CO"


def export_llava(env: dict[str, str], out: Path, *source: str) -> list[dict[str, Any]]:
    """``varco-labeler export SOURCE --format llava`` (no validation split): its records."""
    done = varco(
        env, "export", *source, "--format", "llava", "--out", str(out), "--val-fraction", "0"
    )
    assert done.returncode == 0, done.stderr
    return json.loads((out / "train.json").read_text())


@contextmanager
def workers_on_redis(
    env: dict[str, str], root: Path, names: tuple[str, ...], **worker_env: str
) -> Iterator[tuple[Redis, list[subprocess.Popen], dict[str, str]]]:
    """A redis-server and a ``varco-worker`` per name, all ready; yields a client, the workers
    and the environment to run commands with. A long heartbeat: a worker paused for a few
    seconds (:func:`paused`) is still alive to the queue."""
    redis = RedisProcess(root)
    redis.start()
    processes = Processes(env | {"MODEL_DIR": str(root / "model-dir")}, root)
    try:
        workers = [
            processes.start(
                "worker",
                ["varco-worker", "--name", name, "--heartbeat", "30"],
                REDIS_URL=redis.url,
                **worker_env,
            )
            for name in names
        ]
        client = Redis.from_url(redis.url)
        wait_until(lambda: client.hlen(WORKER_VERSIONS) == len(names), 120, "the workers")
        yield client, workers, env | {"REDIS_URL": redis.url}
    finally:
        processes.stop_all()
        redis.stop()


@contextmanager
def paused(workers: list[subprocess.Popen]) -> Iterator[None]:
    """The workers frozen (SIGSTOP to their process groups) while the test arranges things."""
    for worker in workers:
        os.killpg(worker.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for worker in workers:
            os.killpg(worker.pid, signal.SIGCONT)


@contextmanager
def prelabel_beside(
    env: dict[str, str], project: int, log: Path, **extra_env: str
) -> Iterator[subprocess.Popen]:
    """``varco-labeler prelabel --project`` running while the test goes on, its stderr in
    ``log``; killed if the test leaves before it ends."""
    with log.open("w") as stderr:
        running = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "varco-labeler"),
                "prelabel",
                "--project",
                str(project),
            ],
            env=env | extra_env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        yield running
    finally:
        if running.poll() is None:
            running.kill()
