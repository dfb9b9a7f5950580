"""The worker's Prometheus port (``VARCO_METRICS_PORT``, ``--metrics-port``): what its jobs did
and the GPU memory they hold (``varco_labeler.metrics.JobMetrics``), for Prometheus to scrape."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, start_http_server


def serve(port: int, host: str = "0.0.0.0") -> CollectorRegistry:
    """Serve a registry of this worker's own on ``port`` (on a daemon thread) and return it, to
    register the job metrics in once the engine is installed. Started before the model loads
    (minutes), so that a port already taken (OSError) is reported at once.

    Every interface by default: Prometheus scrapes from another container or machine. Nothing
    served is secret (counts, sizes, durations) and the port answers nothing else.
    """
    registry = CollectorRegistry()
    start_http_server(port, addr=host, registry=registry)
    return registry
