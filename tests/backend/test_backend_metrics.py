"""/metrics of a real backend (queue mode: real Redis, a real varco-worker on the tiny model) and
of the worker's own port, parsed with prometheus-client's parser: the counters move by what was
done, the names follow Prometheus' conventions, and /metrics needs the credentials when basic
auth is on. The embedded mode's /metrics carries the counters of the jobs it runs itself."""

from __future__ import annotations

import threading
from collections.abc import Mapping

import httpx
from helpers import CATS_CONFIG, labelstudio_fixture
from processes import Processes, RedisProcess, free_port, wait_until
from prometheus_client.parser import text_string_to_metric_families

RED = "/data/local-files/?d=images/red.png"
BLUE = "/data/local-files/?d=images/blue.png"
NOT_AN_IMAGE = "/data/local-files/?d=images/not-an-image.png"
AUTH = ("ann", "s3cret")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
Family = tuple[str, set[str]]  # type, sample names


def scrape(url: str, auth: tuple[str, str] | None = None) -> tuple[Samples, dict[str, Family]]:
    """Every sample by (name, labels), and each family's type and sample names by its name."""
    reply = httpx.get(url, auth=auth, timeout=30)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    types: dict[str, Family] = {}
    for family in text_string_to_metric_families(reply.text):
        types[family.name] = (family.type, {sample.name for sample in family.samples})
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples, types


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def assert_conventions(families: Mapping[str, Family]) -> None:
    for name, (kind, sample_names) in families.items():
        assert name.startswith("varco_"), name
        assert not name.endswith("_total"), f"{name}: only counters' samples end in _total"
        if kind == "counter":
            assert sample_names <= {f"{name}_total"}, name
        if kind == "histogram":
            assert sample_names <= {f"{name}_{end}" for end in ("bucket", "count", "sum")}, name
        if "duration" in name or "latency" in name:
            assert name.endswith("_seconds") and kind == "histogram", name
        if "memory" in name:
            assert name.endswith("_bytes"), name


def _predict(url: str, tasks: list[dict], config: str = CATS_CONFIG) -> httpx.Response:
    body = {"tasks": tasks, "label_config": config}
    return httpx.post(f"{url}/predict", json=body, auth=AUTH, timeout=120)


def test_backend_and_worker_metrics_count_what_was_done(
    processes: Processes, redis_server: RedisProcess
) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"  # webhooks stay pending: nothing reads them back
    url = processes.backend(
        redis_server.url,
        BASIC_AUTH_USER=AUTH[0],
        BASIC_AUTH_PASS=AUTH[1],
        LABEL_STUDIO_URL=nobody,
        VARCO_BATCH_SIZE="2",
        VARCO_MAX_PENDING_TASKS="4",
    )
    assert httpx.get(f"{url}/metrics").status_code == 401
    assert httpx.get(f"{url}/metrics", auth=(AUTH[0], "wrong")).status_code == 401
    before, _ = scrape(f"{url}/metrics", AUTH)
    assert value(before, "varco_redis_up") == 1 and value(before, "varco_workers") == 0

    # No worker yet: the first request's two jobs (batches of 2) wait in the normal queue.
    tasks = [
        {"id": 1, "data": {"image": RED}},
        {"id": 2, "data": {"image": BLUE}},
        {"id": 3, "data": {"image": NOT_AN_IMAGE}},
        {"id": 4, "data": {}},  # no image: the policy refuses it
    ]
    replies: list[httpx.Response] = []
    first = threading.Thread(target=lambda: replies.append(_predict(url, tasks)))
    first.start()

    def queued() -> float:
        return value(scrape(f"{url}/metrics", AUTH)[0], "varco_queue_jobs", priority="normal")

    wait_until(lambda: queued() == 2, 30, "two queued jobs on /metrics")

    worker_url = f"http://127.0.0.1:{free_port()}"
    port = worker_url.rsplit(":", 1)[1]
    processes.worker(redis_server.url, "gpu-0", VARCO_BATCH_SIZE="2", VARCO_METRICS_PORT=port)
    first.join(120)
    assert [reply.status_code for reply in replies] == [200]
    worker_after_first, _ = scrape(f"{worker_url}/metrics")
    # The same tasks again: the worker's output cache answers.
    assert _predict(url, tasks[:3]).status_code == 200
    assert _predict(url, [{"id": i, "data": {"image": RED}} for i in range(5)]).status_code == 503
    assert _predict(url, tasks[:2], config="<View></View>").status_code == 422
    webhook = labelstudio_fixture("webhook_annotation_created")
    assert httpx.post(f"{url}/webhook", json=webhook, auth=AUTH, timeout=5).status_code == 200

    after, backend_families = scrape(f"{url}/metrics", AUTH)
    worker, worker_families = scrape(f"{worker_url}/metrics")
    assert_conventions(backend_families)
    assert_conventions(worker_families)

    assert moved(before, after, "varco_tasks_admitted_total") == 4 + 3 + 2
    assert moved(before, after, "varco_tasks_refused_total", reason="busy") == 5
    assert moved(before, after, "varco_tasks_refused_total", reason="invalid") == 2
    assert moved(before, after, "varco_tasks_refused_total", reason="policy") == 1
    requests = "varco_http_requests_total"
    assert moved(before, after, requests, endpoint="/predict", status="200") == 2
    assert moved(before, after, requests, endpoint="/predict", status="503") == 1
    assert moved(before, after, requests, endpoint="/predict", status="422") == 1
    assert moved(before, after, requests, endpoint="/webhook", status="200") == 1
    latency = "varco_http_request_duration_seconds_count"
    assert moved(before, after, latency, endpoint="/predict") == 4
    assert value(after, "varco_webhook_events_total", state="pending") == 1
    assert value(after, "varco_webhook_events_pending") == 1
    assert value(after, "varco_workers") == 1
    for priority in ("high", "normal", "low"):
        assert value(after, "varco_queue_jobs", priority=priority) == 0

    # Worker: 2 + 2 jobs; red and blue ran once (one GPU batch of 2), then came from the cache;
    # the page that is not an image failed twice. A job is a success even with failed images.
    assert value(worker, "varco_worker_jobs_total", queue="varco", outcome="succeeded") == 4
    assert value(worker, "varco_worker_images_total") == 2
    assert value(worker, "varco_worker_batch_size_count") == 1
    assert value(worker, "varco_worker_batch_size_sum") == 2
    assert value(worker, "varco_worker_batch_duration_seconds_count") == 1
    assert value(worker, "varco_worker_output_cache_misses_total") == 2
    assert moved(worker_after_first, worker, "varco_worker_output_cache_hits_total") == 2
    assert value(worker, "varco_worker_image_failures_total", reason="unusable") == 2


def test_embedded_metrics_include_the_jobs_run_in_the_backend(processes: Processes) -> None:
    url = processes.backend()  # no REDIS_URL: the model runs in the backend; no auth: open
    assert _predict(url, [{"id": 1, "data": {"image": RED}}]).status_code == 200
    samples, families = scrape(f"{url}/metrics")
    assert_conventions(families)
    assert value(samples, "varco_worker_jobs_total", queue="embedded", outcome="succeeded") == 1
    assert value(samples, "varco_worker_images_total") == 1
    assert value(samples, "varco_tasks_admitted_total") == 1
    assert ("varco_queue_jobs", frozenset({("priority", "normal")})) in samples
    assert "varco_redis_up" not in families
