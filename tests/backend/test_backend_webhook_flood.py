"""Webhooks during a prediction flood: Label Studio sends each webhook once, with a 1 s timeout,
never retried, so a webhook that waits behind /predict is an annotation lost."""

from __future__ import annotations

import asyncio
import copy
import time
from collections import Counter
from pathlib import Path

import httpx
from helpers import CATS_CONFIG, labelstudio_fixture
from processes import Processes

from varco_labeler.feedback.store import EventState, FeedbackStore

# Each image takes 0.5 s to serve and the model thread runs one batch at a time, so the flood keeps
# every /predict request waiting until its deadline.
SLOW_RED = "/data/local-files/?d=images/red.png&slow=0.5"
PREDICTS = 200
WEBHOOKS = 100
DEADLINE = 8.0
LABEL_STUDIO_TIMEOUT = 1.0


async def _until_flooded(url: str, client: httpx.AsyncClient) -> None:
    """Until nearly all predictions are admitted (the first ones finish one every 0.5 s)."""
    give_up_at = time.monotonic() + 10
    while (left := give_up_at - time.monotonic()) > 0:
        try:
            health = await asyncio.wait_for(client.get(f"{url}/health"), left)
        except TimeoutError:
            return  # a starved /health: the webhooks go anyway, flooded enough
        if health.json()["pending_tasks"] >= PREDICTS - 20:
            return
        await asyncio.sleep(0.05)


def test_webhooks_answer_within_a_second_while_predictions_flood(processes: Processes):
    url = processes.backend(VARCO_MAX_PENDING_TASKS="1000", VARCO_PREDICT_DEADLINE=str(DEADLINE))
    template = labelstudio_fixture("webhook_annotation_created")
    first_id = 50_000

    async def webhook(client: httpx.AsyncClient, index: int) -> tuple[int, float]:
        await asyncio.sleep(index * 0.03)  # annotators saving, ~33 a second
        body = copy.deepcopy(template)
        body["annotation"]["id"] = first_id + index
        started = time.monotonic()
        try:
            status = (await client.post(f"{url}/webhook", json=body)).status_code
        except httpx.TimeoutException:
            status = 0  # what Label Studio sees as a failed webhook, never sent again
        return status, time.monotonic() - started

    async def scenario() -> tuple[list[httpx.Response], list[tuple[int, float]], int, float]:
        predict_body = {
            "tasks": [{"id": 1, "data": {"image": SLOW_RED}}],
            "label_config": CATS_CONFIG,
        }
        limits = httpx.Limits(max_connections=PREDICTS + 10)
        async with (
            httpx.AsyncClient(limits=limits, timeout=120) as flood_client,
            httpx.AsyncClient(timeout=LABEL_STUDIO_TIMEOUT) as hook_client,
        ):
            predicts = [
                asyncio.ensure_future(flood_client.post(f"{url}/predict", json=predict_body))
                for _ in range(PREDICTS)
            ]
            await _until_flooded(url, flood_client)
            hooks = await asyncio.gather(*(webhook(hook_client, i) for i in range(WEBHOOKS)))
            # Still flooded after the last webhook: the webhooks really raced the predictions.
            health_started = time.monotonic()
            still_pending = (await flood_client.get(f"{url}/health")).json()["pending_tasks"]
            health_latency = time.monotonic() - health_started
            return await asyncio.gather(*predicts), hooks, still_pending, health_latency

    replies, hooks, still_pending, health_latency = asyncio.run(scenario())

    statuses = [status for status, _ in hooks]
    latencies = sorted(latency for _, latency in hooks)
    median, worst = latencies[WEBHOOKS // 2], latencies[-1]
    print(
        f"{WEBHOOKS} webhooks during {PREDICTS} slow predicts: median {median:.3f} s, max "
        f"{worst:.3f} s; /health {health_latency:.3f} s with {still_pending} tasks pending"
    )
    assert statuses == [200] * WEBHOOKS, Counter(statuses)
    assert worst < LABEL_STUDIO_TIMEOUT
    assert still_pending > 0
    assert health_latency < LABEL_STUDIO_TIMEOUT
    assert [reply.status_code for reply in replies] == [200] * PREDICTS
    assert all(len(reply.json()["results"]) == 1 for reply in replies)

    # Every acknowledged webhook is kept, then read back from "Label Studio": this stand-in
    # serves images only, so it has none of the annotations and the store keeps none of them.
    store = FeedbackStore(model_dir=Path(processes.env["MODEL_DIR"]))
    try:
        assert store.counts()["events"] == WEBHOOKS
        deadline = time.monotonic() + 30
        while store.event_states().get(EventState.PENDING):
            assert time.monotonic() < deadline, store.event_states()
            time.sleep(0.2)
        assert store.event_states() == {EventState.NOT_IN_LABEL_STUDIO: WEBHOOKS}
        assert store.counts()["annotations"] == 0
    finally:
        store.close()
