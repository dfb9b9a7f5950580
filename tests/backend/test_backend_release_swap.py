"""Model releases swapped without a restart: real redis-server, two real varco-worker processes on
the tiny model, the real backend; and the embedded backend following its release file.

The second model is the same tiny directory published under another version: the workers load it
again (a version names what a process runs), and the outputs show which one answered.
"""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from helpers import CATS_CONFIG
from processes import BIN, Processes, RedisProcess, wait_until
from rq.job import Job
from rq.serializers import JSONSerializer

from varco_labeler.jobs import PREDICT_BATCH
from varco_labeler.labelstudio import read_label_config
from varco_labeler.policy import Policy
from varco_labeler.queue import RQDispatcher
from varco_labeler.releases import Release, ReleaseChannel
from varco_labeler.settings import Settings

WORKERS = ("gpu-0", "gpu-1")
# The image host sleeps this long before answering: a job takes a moment, the stream a while.
SLOW_RED = "/data/local-files/?d=images/red.png&slow=0.2&n={}"


def _health(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/health", timeout=30).json()


def _stream(
    dispatcher: RQDispatcher, policy: Policy, first: int, count: int, publish: Any = None
) -> tuple[dict[str, list[str]], dict[str, datetime]]:
    """``count`` one-task jobs; ``publish()`` runs once a quarter of them have finished. Returns
    the versions each task was answered with, and when each job started."""
    items = [policy.item(f"task-{i}", {"image": SLOW_RED.format(i)}) for i in range(first, count)]
    jobs = dispatcher.submit(PREDICT_BATCH, [([item],) for item in items])
    answers: dict[str, list[str]] = {}
    for done, (_, value, error) in enumerate(dispatcher.completions(jobs, 300), start=1):
        assert error is None, error
        for output in value:
            answers.setdefault(output["key"], []).append(output["model_version"])
        if publish is not None and done == len(jobs) // 4:
            publish()
    assert len(answers) == len(items), "a task was never answered"
    started = {}
    for job in Job.fetch_many([job.id for job in jobs], dispatcher.redis, JSONSerializer):
        assert job is not None and len(job.results()) == 1, "a job ran twice"
        started[job.args[0][0]["key"]] = job.started_at.replace(tzinfo=UTC)
    return answers, started


def test_workers_swap_releases_between_jobs_and_keep_the_old_model_on_a_bad_one(
    processes: Processes, redis_server: RedisProcess, tiny_model_dir: Path
):
    for name in WORKERS:
        processes.worker(redis_server.url, name)
    url = processes.backend(redis_server.url)
    settings = Settings(redis_url=redis_server.url, model=str(tiny_model_dir))
    dispatcher = RQDispatcher(settings)
    channel = ReleaseChannel.for_settings(settings)
    policy = Policy.resolve(settings, read_label_config(CATS_CONFIG), None)
    original = _health(url)["model_version"]
    assert _health(url)["release"] == {"current": None, "load_errors": {}}

    published: list[datetime] = []

    def publish() -> None:
        channel.publish(Release.new(str(tiny_model_dir), "tiny-v2", "retrained"))
        published.append(datetime.now(UTC))

    # A stream of jobs, with a new release published a quarter of the way in.
    answers, started = _stream(dispatcher, policy, 0, 12, publish)
    assert all(len(versions) == 1 for versions in answers.values()), "a task answered twice"
    after = [key for key, at in started.items() if at > published[0]]
    assert after, "no job started after the release was published"
    # A job that started after the publication ran the new release.
    assert {answers[key][0] for key in after} == {"tiny-v2"}
    assert {versions[0] for versions in answers.values()} == {original, "tiny-v2"}
    wait_until(
        lambda: _health(url)["worker_versions"] == dict.fromkeys(WORKERS, "tiny-v2"),
        60,
        "both workers to report the new version",
    )
    health = _health(url)
    assert health["model_version"] == "tiny-v2"
    assert health["release"]["current"]["version"] == "tiny-v2"

    # A release that cannot be loaded: the workers keep tiny-v2 and /health says why.
    channel.publish(Release.new("/nowhere/tiny-broken", "tiny-broken"))
    answers, _ = _stream(dispatcher, policy, 100, 104)
    assert {versions[0] for versions in answers.values()} == {"tiny-v2"}
    wait_until(
        lambda: set(_health(url)["release"]["load_errors"]) == set(WORKERS),
        60,
        "both workers to report the failed load",
    )
    health = _health(url)
    assert health["worker_versions"] == dict.fromkeys(WORKERS, "tiny-v2")
    for why in health["release"]["load_errors"].values():
        assert "cannot load release tiny-broken (/nowhere/tiny-broken)" in why

    # Rollback: the first model published again; its load clears the errors.
    channel.publish(Release.new(str(tiny_model_dir), original, "rollback"))
    answers, _ = _stream(dispatcher, policy, 200, 204)
    assert {versions[0] for versions in answers.values()} == {original}
    wait_until(
        lambda: (
            _health(url)["worker_versions"] == dict.fromkeys(WORKERS, original)
            and _health(url)["release"]["load_errors"] == {}
        ),
        60,
        "both workers to run the rolled-back version",
    )


def _predict_version(url: str, task_id: int) -> str:
    task = {"id": task_id, "data": {"image": "/data/local-files/?d=images/red.png"}}
    reply = httpx.post(
        f"{url}/predict", json={"tasks": [task], "label_config": CATS_CONFIG}, timeout=120
    )
    reply.raise_for_status()
    return reply.json()["results"][0]["model_version"]


def _release(processes: Processes, *args: str) -> None:
    done = subprocess.run(
        [str(BIN / "varco-labeler"), "release", "publish", *args],
        env=processes.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def test_the_embedded_backend_follows_its_release_file(processes: Processes, tiny_model_dir: Path):
    url = processes.backend()
    original = _predict_version(url, 1)
    assert _health(url)["worker_versions"] == {"embedded": original}

    _release(processes, str(tiny_model_dir), "--version", "tiny-v2")
    assert _predict_version(url, 2) == "tiny-v2"
    health = _health(url)
    assert health["model_version"] == "tiny-v2"
    assert health["worker_versions"] == {"embedded": "tiny-v2"}

    _release(processes, "/nowhere/tiny-broken", "--version", "tiny-broken")
    assert _predict_version(url, 3) == "tiny-v2"
    why = _health(url)["release"]["load_errors"]["embedded"]
    assert "cannot load release tiny-broken" in why
