"""With basic auth on, /health answers probes without credentials with only up or degraded and
the model version; the details (problems, counts, queues, webhooks) need the credentials."""

from __future__ import annotations

import httpx
from processes import Processes


def test_health_details_need_the_credentials_when_auth_is_on(processes: Processes) -> None:
    url = processes.backend(BASIC_AUTH_USER="ann", BASIC_AUTH_PASS="s3cret")
    probe = httpx.get(f"{url}/health")
    assert probe.status_code == 200
    assert set(probe.json()) == {"status", "model_version"} and probe.json()["status"] == "UP"
    assert set(httpx.get(f"{url}/health", auth=("ann", "wrong")).json()) == set(probe.json())
    full = httpx.get(f"{url}/health", auth=("ann", "s3cret")).json()
    assert {"last_problem", "tasks", "queue", "webhooks"} <= set(full)
    assert "s3cret" not in "".join(processes.log(p) for p in processes.running)


def test_health_is_whole_without_auth(processes: Processes) -> None:
    url = processes.backend()
    assert {"last_problem", "webhooks"} <= set(httpx.get(f"{url}/health").json())
