"""A worker begins its next job while the current one ends (varco_labeler.lookahead), against a
real Label Studio 1.23.2, a real Redis and a real ``varco-worker`` on the tiny model.

What shows that it happened, without any timing: the worker's own metrics. Every task has its
own image, so the output cache can only be hit by a batch run ahead: with the lookahead, each job
but the first finds its first GPU batch already computed (cache hits = the batch size times the
jobs after the first), and the model still runs once per image, no more. Without it (the
``VARCO_LOOKAHEAD=0`` a team may set), nothing is found in the cache. In both, every task ends
with exactly one prediction.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import httpx
import pytest
from processes import free_port
from projects import make_project, varco, workers_on_redis
from prometheus_client.parser import text_string_to_metric_families

TASKS, JOB_SIZE, BATCH = 12, 4, 2


def worker_counters(port: int) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.endswith("_total") and not sample.labels
    }


@pytest.mark.parametrize("lookahead", ["1", "0"], ids=["lookahead", "one-job-at-a-time"])
def test_the_next_jobs_first_batch_is_run_while_the_last_push_is_made(
    label_studio, ls_client, our_env, tmp_path: Path, lookahead: str
) -> None:
    # Shades of the tiny model's red: one image per task, all still answered with a cat.
    colours = {f"red-{i}": (220 - 5 * i, 30, 30) for i in range(TASKS)}
    project = make_project(
        label_studio, ls_client, f"lookahead {lookahead}", TASKS, colours=colours
    )
    port = free_port()
    worker_env = {
        "VARCO_BATCH_SIZE": str(BATCH),
        "VARCO_METRICS_PORT": str(port),
        "VARCO_LOOKAHEAD": lookahead,
    }
    with workers_on_redis(our_env, tmp_path, ("gpu-a",), **worker_env) as (_, _, env):
        run_env = env | {"VARCO_PRELABEL_JOB_SIZE": str(JOB_SIZE)}
        done = varco(run_env, "prelabel", "--project", str(project))
        counters = worker_counters(port)
        log = next(tmp_path.glob("worker-*.log")).read_text()
    assert done.returncode == 0, done.stderr
    assert f"done {TASKS}, skipped 0 (already predicted), failed 0" in done.stderr

    found = list(ls_client.predictions.list(project=project))
    per_task = Counter(p.task for p in found)
    assert len(per_task) == TASKS and set(per_task.values()) == {1}

    assert counters["varco_worker_images_total"] == TASKS, "an image ran twice, or not at all"
    jobs = TASKS // JOB_SIZE
    if lookahead == "1":
        assert counters["varco_worker_output_cache_hits_total"] == BATCH * (jobs - 1)
        assert log.count("(claimed ahead)") == jobs - 1
    else:
        assert counters["varco_worker_output_cache_hits_total"] == 0
        assert "(claimed ahead)" not in log
