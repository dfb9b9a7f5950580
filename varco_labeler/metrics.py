"""Prometheus metrics: the backend's (``BackendMetrics``, served on /metrics) and the job side's
(``JobMetrics``, counted where batches run: a ``varco-worker``, or ``serve`` in embedded mode).

Every process keeps its own registries, never prometheus_client's global one: two apps in one
process (tests) never clash. Torch-free: GPU memory is read in ``worker.metrics``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from rq.timeouts import JobTimeoutException

# The text format shows each counter's creation time as a gauge of its own (``*_created``):
# twice the series for nothing a dashboard uses. Off for the whole process.
disable_created_metrics()

# /predict waits for the model up to VARCO_PREDICT_DEADLINE (minutes for a bulk request).
HTTP_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
BATCH_SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class BackendMetrics:
    """The backend's metrics: HTTP requests, tasks admitted and refused, webhooks stored, and
    whatever collectors are added with :meth:`watch` (queue depths, pending webhooks, the jobs
    run in this process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "varco_http_requests",
            "HTTP requests answered, by route and status code.",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "varco_http_request_duration_seconds",
            "Seconds from a request's arrival to the end of its answer, by route.",
            ["endpoint"],
            buckets=HTTP_SECONDS,
            registry=self.registry,
        )
        self.tasks_admitted = Counter(
            "varco_tasks_admitted",
            "/predict tasks let in past back-pressure (VARCO_MAX_PENDING_TASKS).",
            registry=self.registry,
        )
        self.tasks_refused = Counter(
            "varco_tasks_refused",
            "/predict tasks refused: busy (back-pressure, 503), invalid (the request's label "
            "config or extra_params, 422), policy (a task the project's policy cannot ask).",
            ["reason"],
            registry=self.registry,
        )
        self.webhook_events = Counter(
            "varco_webhook_events",
            "Webhooks stored, by their state when stored (pending: to read back).",
            ["state"],
            registry=self.registry,
        )

    def watch(self, collector: Collector) -> None:
        """Add metrics computed at scrape time (or another part's metrics) to /metrics."""
        self.registry.register(collector)

    def exposition(self) -> tuple[bytes, str]:
        """The /metrics body and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class QueueCollector(Collector):
    """Queue depths and workers, read from the dispatcher's ``status()`` at scrape time."""

    def __init__(self, status: Callable[[], Mapping[str, Any]]) -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        status = self.status()
        if "redis" in status:  # queue mode: Redis may be down, then nothing else is known
            up = status["redis"] == "ok"
            yield _gauge("varco_redis_up", "1 when the queue's Redis answers, else 0.", up)
            if not up:
                return
            yield _gauge("varco_workers", "Workers listening to the queues.", status["workers"])
            yield _gauge(
                "varco_queue_running_jobs", "Jobs a worker runs now.", status["running_jobs"]
            )
            yield _gauge(
                "varco_queue_failed_jobs", "Jobs in the failed registries.", status["failed_jobs"]
            )
        depths = GaugeMetricFamily(
            "varco_queue_jobs",
            "Jobs (batches) waiting, by priority: high (interactive), normal (/predict), low "
            "(prelabel).",
            labels=["priority"],
        )
        for priority, count in status.get("queued_by_priority", {}).items():
            depths.add_metric([priority], count)
        yield depths


class PendingWebhooksCollector(Collector):
    """Webhooks stored and not read back from Label Studio yet, counted at scrape time."""

    def __init__(self, event_states: Callable[[], Mapping[str, int]]) -> None:
        self.event_states = event_states

    def collect(self) -> Iterator[Metric]:
        pending = self.event_states().get("pending", 0)
        yield _gauge(
            "varco_webhook_events_pending",
            "Annotation webhooks stored and not yet read back from Label Studio.",
            pending,
        )


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=float(value))


class HttpMetrics:
    """ASGI middleware counting each request by route (its path template, so a task id never
    becomes a label) and status code, and timing it to the end of its answer."""

    def __init__(self, app: Any, metrics: BackendMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception nothing answered becomes a 500 further out

        async def sending(message: Mapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")  # set by the router once a route matched
            endpoint = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)


class JobMetrics(Collector):
    """What the jobs of one process did: jobs by outcome, GPU batches (size, seconds, images),
    images that failed, output cache hits; and the GPU memory they hold. A collector, so the
    worker's metrics port and, in embedded mode, the backend's /metrics can both show it."""

    def __init__(self) -> None:
        # Not registered anywhere: whoever serves them adds this collector to its registry.
        self.jobs = Counter(
            "varco_worker_jobs",
            "Jobs run, by queue (embedded: run by serve itself) and outcome "
            "(succeeded, failed, timed_out).",
            ["queue", "outcome"],
            registry=None,
        )
        self.batch_size = Histogram(
            "varco_worker_batch_size",
            "Images per model call (GPU batch).",
            buckets=BATCH_SIZES,
            registry=None,
        )
        self.batch_duration = Histogram(
            "varco_worker_batch_duration_seconds",
            "Seconds per model call (GPU batch).",
            buckets=BATCH_SECONDS,
            registry=None,
        )
        self.images = Counter(
            "varco_worker_images",
            "Images the model ran on (cached outputs not included): rate() gives images/s.",
            registry=None,
        )
        self.image_failures = Counter(
            "varco_worker_image_failures",
            "Images that could not be used: unreachable (Label Studio down: the job is retried) "
            "or unusable (not an image, too large, refused, not found).",
            ["reason"],
            registry=None,
        )
        self.cache_hits = Counter(
            "varco_worker_output_cache_hits",
            "Outputs found in the output cache (same image bytes, prompt and model version).",
            registry=None,
        )
        self.cache_misses = Counter(
            "varco_worker_output_cache_misses",
            "Outputs not in the output cache: the model runs.",
            registry=None,
        )

    def collect(self) -> Iterable[Metric]:
        for metric in (
            self.jobs,
            self.batch_size,
            self.batch_duration,
            self.images,
            self.image_failures,
            self.cache_hits,
            self.cache_misses,
        ):
            yield from metric.collect()
        yield from gpu_memory()

    @contextmanager
    def counting(self, queue: str) -> Iterator[None]:
        """Count one job run by its outcome."""
        try:
            yield
        except JobTimeoutException:
            self.jobs.labels(queue, "timed_out").inc()
            raise
        except BaseException:
            self.jobs.labels(queue, "failed").inc()
            raise
        self.jobs.labels(queue, "succeeded").inc()

    def batch_done(self, images: int, seconds: float) -> None:
        """One model call (GPU batch) of ``images`` images finished in ``seconds``."""
        self.batch_size.observe(images)
        self.batch_duration.observe(seconds)
        self.images.inc(images)


def gpu_memory() -> Iterator[Metric]:
    """CUDA memory per device, when this process has put a model on a GPU; nothing otherwise.
    Reads torch only if the engine loaded it: never imports it."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return
    kinds = {
        "varco_worker_gpu_memory_bytes": "Bytes of GPU memory held by tensors.",
        "varco_worker_gpu_memory_reserved_bytes": "Bytes reserved by torch's allocator.",
        "varco_worker_gpu_memory_capacity_bytes": "Bytes of memory the GPU has.",
    }
    families = {
        name: GaugeMetricFamily(name, help_text, labels=["device"])
        for name, help_text in kinds.items()
    }
    for index in range(torch.cuda.device_count()):
        device = f"cuda:{index}"
        values = (
            torch.cuda.memory_allocated(index),
            torch.cuda.memory_reserved(index),
            # From the device's properties: mem_get_info would open a context on an idle GPU.
            torch.cuda.get_device_properties(index).total_memory,
        )
        for family, value in zip(families.values(), values, strict=True):
            family.add_metric([device], float(value))
    yield from families.values()
