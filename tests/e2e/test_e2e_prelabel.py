"""``varco-labeler prelabel`` against a real Label Studio, through Redis and two real workers.

A whole project is pre-labelled without Label Studio's one blocking /predict request; a second
run does nothing; an interrupted run resumes; Label Studio going down while predictions are pushed
loses and duplicates nothing.
"""

from __future__ import annotations

import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from processes import Processes, RedisProcess, wait_until
from projects import make_project

BIN = Path(sys.executable).parent
# The colours engine.tiny taught the model: red -> one cat, blue -> two dogs.
EXPECTED = {"red": ["Cat"], "blue": ["Dog", "Dog"]}


@pytest.fixture(scope="module")
def queue(our_env, tmp_path_factory) -> Iterator[tuple[str, dict[str, str]]]:
    """Redis and two workers ("GPUs"); yields the Redis URL and the environment to run with."""
    root = tmp_path_factory.mktemp("prelabel")
    redis = RedisProcess(root)
    redis.start()
    processes = Processes(our_env | {"MODEL_DIR": str(root / "model-dir")}, root)
    try:
        for name in ("gpu-a", "gpu-b"):
            processes.worker(redis.url, name)
        yield redis.url, our_env | {"REDIS_URL": redis.url}
    finally:
        processes.stop_all()
        redis.stop()


def predictions(ls_client, project: int) -> list[Any]:
    return list(ls_client.predictions.list(project=project))


def recorded_count(model_dir: Path) -> int:
    """Predictions a prelabel process has recorded in its feedback store so far."""
    database = model_dir / "feedback.sqlite3"
    if not database.exists():
        return 0
    with closing(sqlite3.connect(database, timeout=5)) as connection:
        return connection.execute("SELECT COUNT(*) FROM feedback_predictions").fetchone()[0]


def check_complete(ls_client, project: int, count: int, version: str) -> None:
    """Every task has exactly one prediction of ``version``, with the right labels."""
    found = predictions(ls_client, project)
    per_task = Counter(p.task for p in found)
    assert len(per_task) == count, f"{count - len(per_task)} task(s) without a prediction"
    assert set(per_task.values()) == {1}, "a task got more than one prediction"
    tasks = {t.id: t for t in ls_client.tasks.list(project=project, fields="all")}
    for prediction in found:
        assert prediction.model_version == version
        colour = "red" if "red.png" in tasks[prediction.task].data["image"] else "blue"
        labels = [item["value"]["rectanglelabels"][0] for item in prediction.result]
        assert labels == EXPECTED[colour]


def prelabel(env: dict[str, str], project: int, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(BIN / "varco-labeler"), "prelabel", "--project", str(project), *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str], timeout: float = 300) -> tuple[int, str]:
    _, stderr = process.communicate(timeout=timeout)
    return process.returncode, stderr


def test_a_project_of_200_tasks_is_prelabelled_then_a_second_run_does_nothing(
    label_studio, ls_client, queue, tiny_model
):
    _, env = queue
    project = make_project(label_studio, ls_client, "prelabel 200", 200)
    started = time.monotonic()
    code, stderr = finish(prelabel(env, project))
    elapsed = time.monotonic() - started
    assert code == 0, stderr
    assert "done 200, skipped 0 (already predicted), failed 0" in stderr
    check_complete(ls_client, project, 200, tiny_model.name)
    print(f"\n[e2e] prelabel of 200 tasks with 2 workers: {elapsed:.1f} s", file=sys.stderr)

    code, stderr = finish(prelabel(env, project))
    assert code == 0, stderr
    assert "done 0, skipped 200 (already predicted), failed 0" in stderr
    assert len(predictions(ls_client, project)) == 200


def test_an_interrupted_run_resumes_without_losing_or_duplicating(
    label_studio, ls_client, queue, tiny_model, tmp_path
):
    _, env = queue
    project = make_project(label_studio, ls_client, "prelabel interrupted", 200)
    # Jobs of 2 tasks: 100 pushes, so the run is still going when the interrupt comes; the
    # prelabel process records each job's predictions in its store as the job finishes, a cheaper
    # and more immediate sign of progress than asking Label Studio.
    model_dir = tmp_path / "interrupted"
    running = prelabel(env | {"VARCO_PRELABEL_JOB_SIZE": "2", "MODEL_DIR": str(model_dir)}, project)
    wait_until(lambda: recorded_count(model_dir) >= 2, 120, "the first job's predictions")
    running.send_signal(signal.SIGINT)
    code, stderr = finish(running, timeout=60)
    assert code == 130, stderr
    assert "interrupted: run the same command again to finish the rest" in stderr
    first = len(predictions(ls_client, project))
    assert 2 <= first < 200

    code, stderr = finish(prelabel(env, project))
    assert code == 0, stderr
    done, skipped = (int(n) for n in re.search(r"done (\d+), skipped (\d+)", stderr).groups())
    assert done + skipped == 200 and skipped >= first
    check_complete(ls_client, project, 200, tiny_model.name)


def test_label_studio_down_while_pushing_loses_and_duplicates_nothing(
    label_studio, ls_client, queue, tiny_model, tmp_path
):
    _, env = queue
    project = make_project(label_studio, ls_client, "prelabel outage", 60)
    model_dir = tmp_path / "outage"
    running = prelabel(env | {"VARCO_PRELABEL_JOB_SIZE": "2", "MODEL_DIR": str(model_dir)}, project)
    wait_until(lambda: recorded_count(model_dir) >= 6, 120, "the first predictions")
    label_studio.stop()
    time.sleep(3)
    restart_seconds = label_studio.start()
    code, stderr = finish(running)
    assert code == 0, stderr
    assert "failed 0" in stderr
    check_complete(ls_client, project, 60, tiny_model.name)
    print(f"\n[e2e] Label Studio was down ~{3 + restart_seconds:.0f} s mid-push", file=sys.stderr)


def test_prelabel_without_redis_runs_the_model_in_process(
    label_studio, ls_client, our_env, tiny_model
):
    project = make_project(label_studio, ls_client, "prelabel embedded", 10)
    code, stderr = finish(prelabel(our_env, project))
    assert code == 0, stderr
    assert "done 10, skipped 0 (already predicted), failed 0" in stderr
    check_complete(ls_client, project, 10, tiny_model.name)
