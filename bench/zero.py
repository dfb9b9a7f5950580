"""A zero-cost engine, and the worker and embedded server that run it, for measuring overhead.

    python -m bench.zero worker --redis-url URL [--queue NAME] [--name NAME]
    python -m bench.zero serve --port PORT          # the embedded backend, no REDIS_URL

Both are the product's own code paths (``worker/main.py``, ``varco-labeler serve``) with the model
replaced by an engine that answers instantly with a fixed VARCO output: what remains is the
backend, HTTP, queue, image fetching, parsing and conversion. Images may come from the directories
in VARCO_LOCAL_IMAGE_ROOTS. Not part of the product package on purpose.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from redis import Redis

from varco_labeler import jobs
from varco_labeler.engine.base import Engine, Request, Result
from varco_labeler.labelstudio.templates import label_config
from varco_labeler.settings import Settings
from varco_labeler.varco import parse

ANSWER = (
    "The image shows <obj>a cat</obj><bbox>0.1, 0.2, 0.5, 0.9</bbox> sitting on "
    "<obj>a sofa</obj><bbox>0.0, 0.45, 1.0, 1.0</bbox>."
)
# Labels for the answer's phrases, and for the tiny model's (red: a cat, blue: two dogs).
LABEL_CONFIG = label_config("grounding", ["Cat", "Dog", "Sofa"])


class ZeroCostEngine(Engine):
    """Answers every request at once with the same output (parsed once, at construction)."""

    def __init__(self, answer: str = ANSWER, model_version: str = "zero-cost") -> None:
        self.model_version = model_version
        self.answer = answer
        self.parsed = parse(answer)
        self.scores: list[float | None] = [0.9] * len(self.parsed.grounded)

    def generate(self, requests: Sequence[Request]) -> list[Result]:
        return [
            Result(self.answer, self.parsed, list(self.scores), 0, len(self.answer), 0.0)
            for _ in requests
        ]


# Builds the engine a process runs from its batch size (VARCO_BATCH_SIZE).
EngineFactory = Callable[[int], Engine]


def zero_cost(batch_size: int) -> Engine:
    return ZeroCostEngine()


def context(
    settings: Settings, redis: Redis | None = None, engine: EngineFactory = zero_cost
) -> jobs.JobContext:
    """What ``jobs.build_context`` gives a process, with ``engine`` as its model."""
    # jobs.build_context would load a real model: assemble the same pieces around ours.
    from varco_labeler.labelstudio.images import ImageFetcher

    fetcher = ImageFetcher.from_settings(settings)
    cache = jobs.OutputCache(redis, ttl=settings.cache_ttl)
    return jobs.JobContext(engine(settings.batch_size), fetcher, cache, settings)


def run_worker(args: argparse.Namespace, engine: EngineFactory = zero_cost) -> int:
    """As ``varco-worker`` (worker/main.py), with ``engine`` (the zero-cost one by default)."""
    from rq.serializers import JSONSerializer

    from varco_labeler.lookahead import Lookahead
    from varco_labeler.queue import WORKER_VERSIONS, connect, queue_names
    from worker.heartbeat import HeartbeatWorker

    settings = Settings.from_env(redis_url=args.redis_url, queue_name=args.queue)
    logging.basicConfig(level=settings.log_level)
    redis = connect(settings.redis_url or "")
    installed = context(settings, redis, engine)
    installed.warm_up()  # as varco-worker does before it takes a job
    jobs.install(installed)
    worker = HeartbeatWorker(
        queue_names(settings.queue_name),  # every priority, highest first, as varco-worker
        connection=redis,
        serializer=JSONSerializer,
        name=args.name,
        maintenance_interval=15,
        worker_ttl=20,
        log_job_description=False,
    )
    installed.lookahead = worker.lookahead = Lookahead.for_worker(worker, settings)
    # As varco-worker does: prelabel and the backend take the live workers' model version.
    redis.hset(WORKER_VERSIONS, worker.name, jobs.engine_version())
    try:
        worker.work(with_scheduler=False, logging_level=settings.log_level)
    finally:
        redis.hdel(WORKER_VERSIONS, worker.name)
        if installed.lookahead is not None:
            installed.lookahead.release()
    return 0


def run_server(args: argparse.Namespace, engine: EngineFactory = zero_cost) -> int:
    """As ``varco-labeler serve`` in embedded mode (cli._serve), with ``engine``."""
    import uvicorn

    from varco_labeler.backend import Backend
    from varco_labeler.feedback.store import FeedbackStore
    from varco_labeler.queue import InlineDispatcher
    from varco_labeler.server import create_app

    settings = Settings.from_env(port=args.port, host="127.0.0.1")
    assert settings.embedded, "bench.zero serve is the embedded mode: unset REDIS_URL"
    logging.basicConfig(level=settings.log_level)
    jobs.install(context(settings, engine=engine))
    dispatcher = InlineDispatcher(jobs.predict_batch, settings.batch_size)
    feedback = FeedbackStore(settings.database_url, model_dir=settings.model_dir)
    app = create_app(Backend(settings, dispatcher, feedback), feedback)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level.lower())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.zero", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    worker = commands.add_parser("worker", help="an RQ worker with the zero-cost engine")
    worker.add_argument("--redis-url", required=True)
    worker.add_argument("--queue", default=None, help="queue name (env VARCO_QUEUE)")
    worker.add_argument("--name", default=None)
    worker.set_defaults(handler=lambda args: run_worker(args))
    serve = commands.add_parser("serve", help="the embedded backend with the zero-cost engine")
    serve.add_argument("--port", type=int, required=True)
    serve.set_defaults(handler=lambda args: run_server(args))
    args = parser.parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
