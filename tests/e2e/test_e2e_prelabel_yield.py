"""A prelabel job gives way to interactive work between its GPU batches, against a real Label
Studio 1.23.2 and a real Redis: while a drawn box waits on the high-priority queue, a running bulk
job stops after its batch and leaves the rest of its tasks to a job at the front of the bulk
queue; ``prelabel`` follows that job, and every task is predicted and pushed exactly once.

The worker here listens to the bulk queue only (an RQ SimpleWorker in this process, burst mode),
so the interactive job stays queued and every bulk job meets it: the chain of continuations is
as long as it can be.
"""

from __future__ import annotations

from collections import Counter

from processes import RedisProcess
from projects import make_project
from redis import Redis
from rq import SimpleWorker
from rq.serializers import JSONSerializer

from varco_labeler import jobs
from varco_labeler.labelstudio import read_label_config
from varco_labeler.policy import Policy
from varco_labeler.prelabel import _QueueRun
from varco_labeler.queue import Priority, RQDispatcher, queue_name
from varco_labeler.runs import RunRecorder
from varco_labeler.settings import Settings

TASKS = 6


def test_a_bulk_job_gives_way_between_batches_and_nothing_is_lost_or_pushed_twice(
    label_studio, ls_client, our_env, tmp_path
) -> None:
    # Distinct images: a cached output costs no GPU batch, so there would be nothing to give way.
    colours = {f"shade-{i}": (40 * i, 20, 200 - 20 * i) for i in range(TASKS)}
    project = make_project(label_studio, ls_client, "prelabel gives way", TASKS, colours=colours)
    redis = RedisProcess(tmp_path)
    redis.start()
    try:
        env = our_env | {"REDIS_URL": redis.url, "VARCO_BATCH_SIZE": "2"}
        settings = Settings.from_env(env)
        jobs.install(jobs.build_context(settings, Redis.from_url(redis.url)))
        config = ls_client.projects.get(id=project).label_config
        policy = Policy.resolve(settings, read_label_config(config))
        items = [
            policy.item(str(t.id), t.data, task_id=t.id, project=project)
            for t in ls_client.tasks.list(project=project)
        ]
        dispatcher = RQDispatcher(settings)
        # A box drawn in the editor waits on the high-priority queue.
        dispatcher.submit(jobs.PREDICT_BATCH, [([],)], priority=Priority.HIGH)
        ids = [item["task_id"] for item in items]
        record = RunRecorder.start(dispatcher.redis, project, policy.model_version, ids)
        run = _QueueRun(dispatcher, [(project, policy.to_json(), items)], record)  # one bulk job
        low = queue_name(settings.queue_name, Priority.LOW)
        worker = SimpleWorker(
            [low], connection=Redis.from_url(redis.url), serializer=JSONSerializer
        )
        worker.work(burst=True)
        outcomes = list(run.outcomes())
    finally:
        redis.stop()

    # Three batches of two: the job gave way twice, each time to a job that carried on.
    assert len(outcomes) == 3 and [o["count"] for o in outcomes] == [2, 2, 2]
    pushed = Counter(task for outcome in outcomes for task in outcome["pushed"])
    assert sorted(pushed) == sorted(item["task_id"] for item in items)
    assert set(pushed.values()) == {1}
    predictions = Counter(p.task for p in ls_client.predictions.list(project=project))
    assert len(predictions) == TASKS and set(predictions.values()) == {1}
