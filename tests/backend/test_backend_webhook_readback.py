"""Webhooks while Label Studio cannot be reached: each is answered and kept, waits to be read
back, and /health says why; nothing the body claims is stored meanwhile."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from helpers import labelstudio_fixture
from processes import Processes, free_port

from varco_labeler.feedback.store import EventState, FeedbackStore


def test_webhooks_wait_while_label_studio_is_unreachable(processes: Processes) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    url = processes.backend(LABEL_STUDIO_URL=nobody)
    body = labelstudio_fixture("webhook_annotation_created")
    answer = httpx.post(f"{url}/webhook", json=body, timeout=1.0)
    assert answer.status_code == 200

    deadline = time.monotonic() + 20
    while "problem" not in (health := httpx.get(f"{url}/health").json())["webhooks"]:
        assert time.monotonic() < deadline, health
        time.sleep(0.2)
    assert health["webhooks"]["pending"] == 1
    assert "unreachable" in health["webhooks"]["problem"]
    assert processes.env["LABEL_STUDIO_API_KEY"] not in str(health)

    store = FeedbackStore(model_dir=Path(processes.env["MODEL_DIR"]))
    try:
        assert store.event_states() == {EventState.PENDING: 1}
        assert store.counts()["annotations"] == 0
    finally:
        store.close()
