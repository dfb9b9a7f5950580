"""No token, password or URL signature in any log line or response.

A backend and a worker run in queue mode with every secret set: basic auth, the Label Studio
key (the loopback image host checks it), a Redis that requires a password, a presigned URL's
signature in task images. Requests go right and wrong (no or bad credentials, images that cannot
be had, a wrong setting), then every byte the processes wrote and every response body is searched
for each secret's value.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import CATS_CONFIG
from processes import BIN, TOKEN, Processes, RedisProcess

REDIS_PASSWORD = "redis-pw-7d41c2"
AUTH = ("annotator", "basic-pw-93ab10")
SIGNATURE = "SECRETSIG-0f9e8d7c6b5a"
# The presigned URL the image host's /tasks/ redirects to carries this (backend/conftest.py).
REDIRECT_SIGNATURE = "X-Amz-Signature=SECRET"


@pytest.fixture
def expired_bucket() -> Iterator[str]:
    """A bucket host that refuses every presigned URL (403), as S3 does once one expires."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_error(403)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://localhost:{server.server_address[1]}"
    server.shutdown()


def test_no_secret_reaches_a_log_or_a_response(
    processes: Processes, image_host: Any, expired_bucket: str, tmp_path: Path
) -> None:
    redis = RedisProcess(tmp_path, password=REDIS_PASSWORD)
    redis.start()
    try:
        bodies = _drive(processes, redis.url, image_host, expired_bucket)
        bodies.append(_refused_setting(processes.env))
    finally:
        redis.stop()
    logs = "".join(processes.log(process) for process in processes.running)
    # The failures were logged, with the presigned URLs' queries cut.
    assert "/bucket/a.png?...: HTTP 403" in logs
    assert "/b.png?...: host 'example.com' is not allowed" in logs
    for secret in (REDIS_PASSWORD, AUTH[1], TOKEN, SIGNATURE, REDIRECT_SIGNATURE):
        assert secret not in logs, f"{secret} in the logs"
        for body in bodies:
            assert secret not in body, f"{secret} in a response: {body}"


def _drive(processes: Processes, redis_url: str, host: Any, bucket: str) -> list[str]:
    """Requests right and wrong against a backend and a worker; the response bodies."""
    secrets = {"BASIC_AUTH_USER": AUTH[0], "BASIC_AUTH_PASS": AUTH[1]}
    # localhost is the expired bucket's host: allowed, so the 403 is what fails. DEBUG: every
    # library's log lines too.
    images = {"VARCO_ALLOWED_IMAGE_HOSTS": "localhost", "LOG_LEVEL": "DEBUG"}
    processes.worker(redis_url, "secret-keeper", **images)
    url = processes.backend(redis_url, **secrets, **images)
    presigned = f"?X-Amz-Signature={SIGNATURE}&X-Amz-Credential=AKIA"
    tasks = [
        {"id": 1, "data": {"image": "/data/local-files/?d=images/red.png"}},  # with the key
        {"id": 2, "data": {"image": f"{bucket}/bucket/a.png{presigned}"}},  # refused: 403
        {"id": 3, "data": {"image": f"http://example.com/b.png{presigned}"}},  # not allowed
        {"id": 4, "data": {"image": f"s3://bucket/c.png{presigned}"}},  # no task to resolve it
        {"id": 5, "data": {"image": f"{host.url}/tasks/5/resolve/?fileuri=x"}},  # redirect
    ]
    predict = {"tasks": tasks, "label_config": CATS_CONFIG}
    setup = {"project": "7.1", "schema": CATS_CONFIG}
    with httpx.Client(base_url=url, timeout=120) as client:
        replies = [
            client.get("/health"),
            client.get("/health", auth=(AUTH[0], "wrong")),
            client.post("/setup", json=setup),
            client.post("/predict", json=predict, auth=(AUTH[0], "wrong")),
            client.post("/setup", json=setup, auth=AUTH),
            client.post("/predict", json=predict, auth=AUTH),
            client.post("/predict", json={"tasks": "not a list"}, auth=AUTH),
            client.get("/health", auth=AUTH),
        ]
    statuses = [reply.status_code for reply in replies]
    assert statuses == [200, 200, 401, 401, 200, 200, 422, 200], statuses
    results = replies[5].json()["results"]
    assert results[0]["result"] and results[4]["result"], "fetched with the key, redirected"
    assert results[1] == results[2] == [], "the expired and the unknown host fail their tasks"
    assert set(replies[0].json()) == {"status", "model_version"}
    assert replies[-1].json()["last_problem"], "a failed task is reported"
    return [reply.text for reply in replies]


def _refused_setting(env: dict[str, str]) -> str:
    """A worker refused at start for a wrong REDIS_URL, then for a Redis that does not answer:
    each message names the variable, without the password and without a traceback."""
    outputs = []
    for url, expected in (
        (f"http://:{REDIS_PASSWORD}@127.0.0.1:1/0", "REDIS_URL='http://:***@127.0.0.1:1/0' must"),
        (f"redis://:{REDIS_PASSWORD}@127.0.0.1:1/0", "Redis (REDIS_URL) does not answer"),
    ):
        done = subprocess.run(
            [str(BIN / "varco-worker")],
            env={**env, "REDIS_URL": url},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2
        assert expected in done.stderr and "Traceback" not in done.stderr
        outputs.append(done.stdout + done.stderr)
    return "".join(outputs)
