"""A new model release published in the middle of a ``prelabel`` run, against a real Label Studio
1.23.2, a real Redis and two real workers on the tiny model: every task ends with exactly one
prediction, the jobs no worker had started carry the new version, and the workers end on it.

The swap lands mid-run without any timing: once the first predictions are in, both workers are
paused (SIGSTOP to their process groups) while the release is published, then let go (SIGCONT).
Jobs still queued at that moment start after the publication, so they must run the new release.
The second model is the tiny directory published under another version: the workers load it
again, and the predictions show which one answered.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from collections.abc import Iterator

import pytest
from processes import wait_until
from projects import make_project, paused, prelabel_beside, varco, workers_on_redis
from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

from varco_labeler import runs
from varco_labeler.jobs import PRELABEL_BATCH
from varco_labeler.labelstudio import read_label_config
from varco_labeler.policy import Policy
from varco_labeler.queue import WORKER_VERSIONS, Priority, RQDispatcher, queue_name
from varco_labeler.releases import Release, ReleaseChannel
from varco_labeler.settings import Settings

TASKS = 24
WORKERS = ("gpu-a", "gpu-b")
NEW_VERSION = "tiny-v2"


@pytest.fixture(scope="module")
def queue(our_env, tmp_path_factory) -> Iterator[tuple[Redis, list[subprocess.Popen], dict]]:
    """Redis and two workers (GPU batches of 2); yields a client, the workers and the
    environment to run with."""
    root = tmp_path_factory.mktemp("prelabel-swap")
    with workers_on_redis(our_env, root, WORKERS, VARCO_BATCH_SIZE="2") as queue:
        yield queue


def queued_tasks(redis: Redis) -> set[int]:
    """Tasks of the prelabel jobs no worker has taken yet."""
    bulk = Queue(queue_name("varco", Priority.LOW), connection=redis, serializer=JSONSerializer)
    return {item["task_id"] for job in bulk.get_jobs() for item in job.args[2]}


def test_workers_swap_releases_mid_prelabel_losing_and_duplicating_no_task(
    label_studio, ls_client, queue, tiny_model, tmp_path
):
    redis, workers, env = queue
    project = make_project(label_studio, ls_client, "prelabel swapped", TASKS)
    log = tmp_path / "prelabel.log"
    with prelabel_beside(
        env, project, log, VARCO_PRELABEL_JOB_SIZE="2", MODEL_DIR=str(tmp_path / "store")
    ) as running:
        predicted = lambda: len(list(ls_client.predictions.list(project=project)))  # noqa: E731
        wait_until(lambda: predicted() >= 2, 120, "the first predictions")
        with paused(workers):
            after_swap = queued_tasks(redis)
            publish = varco(
                env, "release", "publish", str(tiny_model), "--version", NEW_VERSION, timeout=60
            )
            assert publish.returncode == 0, publish.stderr
        running.wait(timeout=180)
    output = log.read_text()
    assert running.returncode == 0, output
    assert f"done {TASKS}, skipped 0 (already predicted), failed 0" in output
    assert after_swap, "every job had started before the release was published"

    found = list(ls_client.predictions.list(project=project))
    versions = {p.task: p.model_version for p in found}
    per_task = Counter(p.task for p in found)
    assert set(per_task) == {t.id for t in ls_client.tasks.list(project=project)}, "a task lost"
    assert set(per_task.values()) == {1}, "a task got more than one prediction"
    assert {versions[task] for task in after_swap} == {NEW_VERSION}
    assert set(versions.values()) == {tiny_model.name, NEW_VERSION}

    run = runs.recent_runs(redis)[0]
    assert run.project == project and run.state is runs.RunState.DONE
    assert run.counts == {"done": TASKS}
    listed = varco(env, "release", "list", timeout=60)
    assert listed.returncode == 0 and listed.stderr == "", listed.stderr
    assert listed.stdout.startswith("* ") and NEW_VERSION in listed.stdout.splitlines()[0]
    workers_on = {k.decode(): v.decode() for k, v in redis.hgetall(WORKER_VERSIONS).items()}
    assert workers_on == dict.fromkeys(WORKERS, NEW_VERSION)


def test_a_job_run_again_after_a_swap_does_not_predict_twice_what_its_first_attempt_pushed(
    label_studio, ls_client, queue, tiny_model
):
    """A job's first attempt pushed one task under the run's version, then its worker died; the
    release changed before the job ran again. The second attempt pushes only the other task."""
    redis, workers, env = queue
    project = make_project(label_studio, ls_client, "prelabel job rerun", 2)
    first, second = list(ls_client.tasks.list(project=project, fields="all"))
    old = tiny_model.name
    ls_client.predictions.create(task=first.id, result=[], model_version=old)
    settings = Settings(redis_url=env["REDIS_URL"], model=str(tiny_model))
    ReleaseChannel.for_settings(settings).publish(Release.new(str(tiny_model), "tiny-v3"))
    config = read_label_config(ls_client.projects.get(id=project).label_config)
    policy = Policy.resolve(settings, config, version=old)
    items = [policy.item(str(t.id), t.data, task_id=t.id, project=project) for t in (first, second)]
    dispatcher = RQDispatcher(settings)
    with paused(workers):  # no worker takes the job before it is marked as run once already
        (job,) = dispatcher.submit(PRELABEL_BATCH, [(project, policy.to_json(), items)])
        redis.hset(job.key, "retries_left", settings.job_retries - 1)
    ((_, outcome, error),) = dispatcher.completions([job], 120)
    assert error is None, error
    assert (outcome["pushed"], outcome["present"]) == ([second.id], [first.id])
    found = {p.task: p.model_version for p in ls_client.predictions.list(project=project)}
    assert len(list(ls_client.predictions.list(project=project))) == 2
    assert found == {first.id: old, second.id: "tiny-v3"}
