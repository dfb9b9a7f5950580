"""A prelabel run seen and cancelled from other processes, against a real Label Studio 1.23.2, a
real Redis and a real worker on the tiny model: `status` shows it running with its progress,
`cancel` stops it with nothing lost or pushed twice, and a second run finishes the rest.

The run is made to wait without any timing: once the first task is done the worker is paused
(SIGSTOP to its process group, a GPU that is busy elsewhere) until the run has cancelled its
queued jobs, then let go (SIGCONT) so a job it had started finishes and pushes.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from processes import wait_until
from projects import make_project, paused, prelabel_beside, varco, workers_on_redis
from redis import Redis

from varco_labeler import runs

TASKS = 24


@pytest.fixture(scope="module")
def queue(our_env, tmp_path_factory) -> Iterator[tuple[Redis, list[subprocess.Popen], dict]]:
    """Redis and one worker; yields a client, the worker and the environment to run with."""
    with workers_on_redis(our_env, tmp_path_factory.mktemp("runs"), ("gpu",)) as queue:
        yield queue


def status(env: dict[str, str], *args: str) -> Any:
    done = varco(env, "status", *args, "--json", timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_status_shows_a_running_prelabel_and_cancel_stops_it_losing_and_duplicating_nothing(
    label_studio, ls_client, queue, tiny_model, tmp_path
):
    redis, workers, env = queue
    project = make_project(label_studio, ls_client, "prelabel cancelled", TASKS)
    log = tmp_path / "prelabel.log"
    with prelabel_beside(
        env, project, log, VARCO_PRELABEL_JOB_SIZE="1", MODEL_DIR=str(tmp_path / "store")
    ) as running:
        wait_until(lambda: re.search(r"^run (\S+):", log.read_text(), re.M), 120, "the run id")
        run_id = re.search(r"^run (\S+):", log.read_text(), re.M).group(1)
        done = lambda: runs.read_run(redis, run_id).counts.get("done", 0)  # noqa: E731
        wait_until(lambda: done() >= 1, 120, "the first task done")
        with paused(workers):
            table = status(env)
            shown = status(env, run_id)
            assert [r["id"] for r in table if r["project"] == project] == [run_id]
            assert shown["state"] == "running" and shown["total"] == TASKS
            assert shown["counts"]["done"] >= 1 and shown["counts"]["queued"] >= 1

            cancel = varco(env, "cancel", run_id, timeout=60)
            assert cancel.returncode == 0, cancel.stderr
            cancelled = lambda: runs.read_run(redis, run_id).counts.get("cancelled", 0)  # noqa: E731
            wait_until(lambda: cancelled() >= 1, 60, "the queued jobs cancelled")
        running.wait(timeout=120)
    output = log.read_text()
    assert running.returncode == 130, output
    assert "cancelled (varco-labeler cancel)" in output

    final, tasks = runs.read_run(redis, run_id), runs.task_states(redis, run_id)
    assert final.state is runs.RunState.CANCELLED and "failed" not in final.counts
    assert {t["state"] for t in tasks.values()} <= {"done", "cancelled"}
    per_task = Counter(str(p.task) for p in ls_client.predictions.list(project=project))
    assert set(per_task.values()) == {1}, "a task got more than one prediction"
    recorded_done = {task for task, value in tasks.items() if value["state"] == "done"}
    cancelled_tasks = {task for task, value in tasks.items() if value["state"] == "cancelled"}
    assert recorded_done <= set(per_task)
    assert set(per_task) | cancelled_tasks == {
        str(t.id) for t in ls_client.tasks.list(project=project)
    }
    assert cancelled_tasks, "the cancel came after every task was done"

    again = varco(env, "prelabel", "--project", str(project), timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"done {len(cancelled_tasks)}, skipped {len(per_task)}" in again.stderr
    per_task = Counter(p.task for p in ls_client.predictions.list(project=project))
    assert len(per_task) == TASKS and set(per_task.values()) == {1}
    latest = runs.recent_runs(redis)[0]
    assert latest.project == project and latest.state is runs.RunState.DONE
