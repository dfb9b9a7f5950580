"""Floods and fuzz against a running backend: bounded, no crash, clear answers, nothing lost."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter

import httpx
from helpers import CATS_CONFIG, labelstudio_fixture
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from processes import Processes, RedisProcess

RED = "/data/local-files/?d=images/red.png"


def test_a_thousand_concurrent_predicts_get_back_pressure_not_a_crash(
    processes: Processes, redis_server: RedisProcess
):
    processes.worker(redis_server.url, "busy-bee")
    url = processes.backend(
        redis_server.url, VARCO_MAX_PENDING_TASKS="20", VARCO_PREDICT_DEADLINE="20"
    )
    body = {"tasks": [{"id": 1, "data": {"image": RED}}], "label_config": CATS_CONFIG}

    async def flood() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=1000)
        async with httpx.AsyncClient(limits=limits, timeout=120) as client:
            return await asyncio.gather(
                *(client.post(f"{url}/predict", json=body) for _ in range(1000))
            )

    started = time.monotonic()
    replies = asyncio.run(flood())
    elapsed = time.monotonic() - started
    statuses = Counter(reply.status_code for reply in replies)
    assert set(statuses) <= {200, 503}, statuses
    assert statuses[200] >= 20 and statuses[503] >= 1
    refused = next(reply for reply in replies if reply.status_code == 503)
    assert refused.headers["Retry-After"] == "5"
    assert "limit 20 (VARCO_MAX_PENDING_TASKS); retry later" in refused.json()["error"]
    for reply in replies:
        if reply.status_code == 200:
            (prediction,) = reply.json()["results"]
            assert prediction["result"][0]["value"]["rectanglelabels"] == ["Cat"]
    health = httpx.get(f"{url}/health", timeout=10).json()
    assert health["status"] == "UP" and health["pending_tasks"] == 0
    assert health["tasks"]["refused"] == statuses[503]
    assert health["tasks"]["predicted"] == statuses[200]
    print(f"1000 concurrent requests: {dict(statuses)} in {elapsed:.1f} s")


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
_images = st.sampled_from([RED, "/etc/passwd", "http://10.0.0.1/x", "s3://b/k"])
_task = st.fixed_dictionaries(
    {
        "id": st.integers() | st.text(max_size=5),
        "data": st.dictionaries(st.sampled_from(["image", "x"]), _json | _images),
    }
)
_predict_body = st.fixed_dictionaries(
    {"tasks": st.lists(_task | _json, max_size=3)},
    optional={
        "label_config": st.sampled_from([CATS_CONFIG, "<View/>", "", "<<"]) | st.text(max_size=30),
        "params": _json | st.fixed_dictionaries({"context": _json}),
        "project": _json,
    },
)


def test_fuzzed_requests_never_break_the_backend(processes: Processes):
    url = processes.backend(VARCO_PREDICT_DEADLINE="10")
    client = httpx.Client(base_url=url, timeout=30)
    tried: Counter[int] = Counter()

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(path=st.sampled_from(["/predict", "/setup", "/webhook"]), body=_predict_body | _json)
    def check(path: str, body: object) -> None:
        reply = client.post(
            path, content=json.dumps(body), headers={"content-type": "application/json"}
        )
        tried[reply.status_code] += 1
        assert reply.status_code in (200, 422), (path, body, reply.status_code, reply.text)
        answer = reply.json()
        if reply.status_code == 422:
            assert answer["error"]
        elif path == "/predict":
            assert len(answer["results"]) == len(body["tasks"])

    check()
    # The same server still serves a real request afterwards.
    assert client.post("/setup", json=labelstudio_fixture("setup")).status_code == 200
    print(f"fuzzed requests by status: {dict(tried)}")
