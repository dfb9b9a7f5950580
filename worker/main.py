"""``varco-worker``: one process per GPU; any number of machines pointing at the same Redis."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from contextlib import suppress

from redis.exceptions import RedisError
from rq.serializers import JSONSerializer

from varco_labeler import jobs
from varco_labeler.engine.availability import ModelUnavailable, report
from varco_labeler.engine.load import add_loading_arguments, loading_flags
from varco_labeler.lookahead import Lookahead
from varco_labeler.queue import WORKER_VERSIONS, connect, queue_names
from varco_labeler.releases import ReleaseError
from varco_labeler.settings import Settings, SettingsError
from worker import metrics
from worker.heartbeat import STALLED_EXIT_CODE, HeartbeatWorker
from worker.supervisor import supervise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="varco-worker",
        description="Run VARCO-VISION pre-labelling jobs from the Redis queue. Loads the model "
        "(the current release, else --model) at start and a newly published release between "
        "jobs. Pin it to a GPU with CUDA_VISIBLE_DEVICES=N; start one per GPU, on as many "
        "machines as you like, all with the same REDIS_URL. Other settings (LABEL_STUDIO_URL, "
        "LABEL_STUDIO_API_KEY, VARCO_ALLOWED_IMAGE_HOSTS, ...) come from the environment.",
    )
    parser.add_argument("--model", help="checkpoint id or local path (env VARCO_MODEL)")
    parser.add_argument("--redis-url", help="the queue's Redis (env REDIS_URL; required)")
    parser.add_argument("--queue", dest="queue_name", help="queue name (env VARCO_QUEUE)")
    parser.add_argument(
        "--batch-size", type=int, help="images per GPU batch (env VARCO_BATCH_SIZE)"
    )
    parser.add_argument(
        "--profile",
        help="checkpoint profile (env VARCO_PROFILE; default: the one saved with the model, "
        "else by its name)",
    )
    add_loading_arguments(parser)
    parser.add_argument("--name", help="worker name shown in /health (default: host and pid)")
    parser.add_argument(
        "--no-lookahead",
        dest="lookahead",
        action="store_false",
        default=None,
        help="take jobs strictly one at a time: do not claim the next job while one runs, fetch "
        "its first images and run its first batch while the current job's last predictions are "
        "pushed (env VARCO_LOOKAHEAD=0; default: on)",
    )
    parser.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    parser.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics on this port, on all interfaces (env VARCO_METRICS_PORT; "
        "default 0: off)",
    )
    parser.add_argument(
        "--heartbeat",
        type=int,
        default=5,
        metavar="S",
        help="seconds between heartbeats; a worker silent for 3 of them is presumed dead and its "
        "job requeued (default: %(default)s)",
    )
    parser.add_argument(
        "--stall-timeout",
        type=float,
        metavar="S",
        help="a job with no progress (an image fetched, a batch, a generation step) for S seconds "
        "is failed and requeued, and the worker restarts (env VARCO_JOB_STALL_TIMEOUT; "
        "default 0: never)",
    )
    parser.add_argument(
        "--no-supervisor",
        action="store_true",
        help=f"with a stall timeout, run the worker in this process and exit with code "
        f"{STALLED_EXIT_CODE} when a job stalls, for a process manager to restart it (default: "
        "this process supervises the worker and restarts it)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env(
            model=args.model,
            redis_url=args.redis_url,
            queue_name=args.queue_name,
            batch_size=args.batch_size,
            profile=args.profile,
            metrics_port=args.metrics_port,
            job_stall_timeout=args.stall_timeout,
            lookahead=args.lookahead,
            **loading_flags(args),
        )
    except SettingsError as error:
        print(f"varco-worker: {error}", file=sys.stderr)
        return 2
    if settings.embedded:
        print("varco-worker: set REDIS_URL (or --redis-url) to the queue's Redis", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    log = logging.getLogger("varco-worker")
    if settings.job_stall_timeout and not args.no_supervisor:
        # A stalled job ends its process (worker/heartbeat.py): run the worker as a child.
        given = sys.argv[1:] if argv is None else argv
        return supervise([sys.executable, "-m", "worker.main", *given, "--no-supervisor"])
    try:
        registry = metrics.serve(settings.metrics_port) if settings.metrics_port else None
    except OSError as error:
        print(f"varco-worker: metrics port {settings.metrics_port}: {error}", file=sys.stderr)
        return 2
    redis = connect(settings.redis_url)
    try:
        redis.ping()
    except RedisError as error:
        # The URL may carry a password: name the variable and the error, not the URL.
        cause = str(error).rstrip(".")
        print(
            f"varco-worker: the queue's Redis (REDIS_URL) does not answer ({cause}). Start Redis "
            "or point REDIS_URL (--redis-url) at the backend's; `varco-labeler doctor` checks it.",
            file=sys.stderr,
        )
        return 2
    log.info(
        "loading %s on CUDA_VISIBLE_DEVICES=%s",
        settings.model,
        os.environ.get("CUDA_VISIBLE_DEVICES", "(all)"),
    )
    # Interactive work first, then /predict batches, then prelabel runs (RQ takes them in order).
    queues = queue_names(settings.queue_name)
    worker = HeartbeatWorker(
        queues,
        connection=redis,
        serializer=JSONSerializer,
        name=args.name,
        # Look for dead workers' jobs often: requeueing them quickly is what loses nothing.
        maintenance_interval=max(5, 3 * args.heartbeat),
        # Idle workers wake this often, so maintenance and shutdown are prompt.
        worker_ttl=max(20, 4 * args.heartbeat),
        # Job arguments hold image URLs, and presigned URLs carry credentials: keep them out.
        log_job_description=False,
    )
    worker.heartbeat_interval = args.heartbeat
    worker.stall_timeout = settings.job_stall_timeout
    # The current model release (else --model), and each new one between jobs.
    try:
        context = jobs.build_context(settings, redis, follow_releases=worker.name)
    except ModelUnavailable as error:
        return report(error, "varco-worker", settings.log_level)
    # prelabel and the backend ask which version the live workers run (see queue.model_versions).
    context.on_swap = lambda version: redis.hset(WORKER_VERSIONS, worker.name, version)
    # Its next job claimed, and begun while the current one ends.
    context.lookahead = worker.lookahead = Lookahead.for_worker(worker, settings)
    context.warm_up()
    jobs.install(context)
    if registry is not None:
        registry.register(jobs.metrics())
    version = jobs.engine_version()
    redis.hset(WORKER_VERSIONS, worker.name, version)
    log.info("ready: queues %s, model version %s", ", ".join(queues), version)
    try:
        # SIGTERM: RQ finishes the running job, then exits (warm shutdown).
        worker.work(with_scheduler=False, logging_level=settings.log_level, burst=args.burst)
    finally:
        with suppress(RedisError, ReleaseError):
            redis.hdel(WORKER_VERSIONS, worker.name)
            if context.lookahead is not None:
                context.lookahead.release()
            if context.releases is not None:
                context.releases.channel.record_load(worker.name, None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
