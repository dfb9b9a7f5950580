"""The work a queue job does, referenced by dotted path (``varco_labeler.jobs.predict_batch``).

The backend enqueues by that name and never imports this module's heavy side: the engine is built
by the process that runs jobs (a worker, or the backend itself in embedded mode) and installed
here once with :func:`install`.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import json
import logging
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from PIL import Image
from redis import Redis
from rq import get_current_job

from varco_labeler.engine import progress
from varco_labeler.engine.base import Engine, Request
from varco_labeler.feedback.store import PredictionRecord
from varco_labeler.labelstudio import labels
from varco_labeler.labelstudio.images import ImageError, ImageFetcher, ImageUnavailable
from varco_labeler.labelstudio.sink import BackgroundPush, PredictionSink
from varco_labeler.lookahead import Claim, Lookahead
from varco_labeler.metrics import JobMetrics
from varco_labeler.policy import Policy, PolicyError
from varco_labeler.releases import ReleaseChannel, ReleaseFollower
from varco_labeler.settings import Settings
from varco_labeler.varco import Task

log = logging.getLogger(__name__)

PREDICT_BATCH = "varco_labeler.jobs.predict_batch"
PRELABEL_BATCH = "varco_labeler.jobs.prelabel_batch"


class OutputCache:
    """Raw model outputs by image content, prompt and model version.

    In Redis when there is one (shared by all workers), else in memory (the embedded mode).
    """

    def __init__(self, redis: Redis | None = None, ttl: int = 7 * 24 * 3600, size: int = 10_000):
        self.redis, self.ttl, self.size = redis, ttl, size
        self._memory: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(image_bytes: bytes, prompt: str, model_version: str) -> str:
        digest = hashlib.sha256(image_bytes)
        digest.update(b"\0" + prompt.encode() + b"\0" + model_version.encode())
        # v2: outputs hold regions (v1 held text to parse again): never mix the two.
        return f"varco:output:v2:{digest.hexdigest()}"

    def get(self, key: str) -> dict[str, Any] | None:
        if self.redis is not None:
            value = self.redis.get(key)
        else:
            with self._lock:
                value = self._memory.get(key)
                if value is not None:
                    self._memory.move_to_end(key)
        return json.loads(value) if value else None

    def put(self, outputs: Mapping[str, dict[str, Any]]) -> None:
        """Store a batch's outputs by key, in one round trip to Redis."""
        values = {key: json.dumps(output, ensure_ascii=False) for key, output in outputs.items()}
        if self.redis is not None:
            with self.redis.pipeline(transaction=False) as pipeline:
                for key, value in values.items():
                    pipeline.set(key, value, ex=self.ttl)
                pipeline.execute()
            return
        with self._lock:
            self._memory.update(values)
            while len(self._memory) > self.size:
                self._memory.popitem(last=False)


@dataclass
class JobContext:
    engine: Engine
    fetcher: ImageFetcher
    cache: OutputCache
    settings: Settings
    # Downloads of one batch overlap: a batch waits for its slowest image, not for their sum.
    downloads: ThreadPoolExecutor = field(init=False)
    metrics: JobMetrics = field(default_factory=JobMetrics)
    _sink: PredictionSink | None = None
    # Set when the process follows model releases: the engine is swapped between jobs.
    releases: ReleaseFollower | None = None
    # Told the new version after a swap (a worker updates what /health shows).
    on_swap: Callable[[str], None] | None = None
    # A queue worker's claim on its next job (varco_labeler.lookahead); None: jobs run alone.
    lookahead: Lookahead | None = None

    def __post_init__(self) -> None:
        threads = self.settings.download_threads
        self.downloads = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="download")

    def follow_release(self) -> None:
        """Between jobs: run the channel's current release if it is not the running one. The
        new model is loaded before the old one is dropped, so a failed load keeps the old."""
        engine = self.releases.newer_engine() if self.releases else None
        if engine is None:
            return
        previous, self.engine = self.engine, engine
        if hasattr(previous, "close"):  # an HTTP engine's connections
            previous.close()
        del previous  # the last reference: its weights can be freed now
        gc.collect()
        torch = sys.modules.get("torch")  # loaded by the engine, if it is a local model
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()
        log.info("now running model version %s", engine.model_version)
        if self.on_swap is not None:
            self.on_swap(engine.model_version)

    def warm_up(self) -> None:
        """Load now what a first job would load on its way, seconds of imports with the GPU idle:
        the label matcher's word lists and, when one is set, Label Studio's client."""
        labels.warm_up()
        if self.settings.label_studio_url and self.settings.label_studio_api_key:
            self.label_studio()

    def label_studio(self) -> PredictionSink:
        """One client for the process: every job reuses its connections to Label Studio."""
        if self.settings.label_studio_url is None or self.settings.label_studio_api_key is None:
            raise RuntimeError("set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY to push predictions")
        if self._sink is None:
            self._sink = PredictionSink(
                self.settings.label_studio_url, self.settings.label_studio_api_key
            )
        return self._sink


_context: JobContext | None = None


def install(context: JobContext) -> None:
    global _context
    _context = context


def build_context(
    settings: Settings,
    redis: Redis | None = None,
    *,
    follow_releases: str | None = None,
) -> JobContext:
    """Load the engine (once per process) with what a job needs around it.

    ``follow_releases``: this process's name in the release channel; it then runs the current
    release (see :mod:`varco_labeler.releases`) and swaps to a new one between jobs.
    """
    from varco_labeler.engine.load import load_engine  # torch: only here

    fetcher = ImageFetcher.from_settings(settings)
    cache = OutputCache(redis, ttl=settings.cache_ttl)
    if follow_releases is None:
        return JobContext(load_engine(settings), fetcher, cache, settings)
    channel = ReleaseChannel.for_settings(settings)
    follower = ReleaseFollower(channel, settings, follow_releases, load_engine)
    return JobContext(follower.first_engine(), fetcher, cache, settings, releases=follower)


F = TypeVar("F", bound=Callable[..., Any])


def _counted(function: F) -> F:
    """Count each run of a job function by queue (``embedded`` without one) and outcome."""

    @functools.wraps(function)
    def run(*args: Any, **kwargs: Any) -> Any:
        job = get_current_job()
        with _installed().metrics.counting(job.origin if job is not None else "embedded"):
            return function(*args, **kwargs)

    return run  # type: ignore[return-value]


@_counted
def predict_batch(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run the model on a batch of ``{"key", "image", "task", "prompt"}`` items.

    Returns one output per item, in order: ``{"key", "width", "height", "model_version",
    "regions", "notes", "raw", "cached", ...}``, where ``regions`` are the engine's regions after
    the checkpoint's post-processing (box, phrase or text, score) and ``raw`` the text they came
    from, for the record; or ``{"key", "error", "retryable"}`` for an item whose image could not
    be used. Outputs already computed for the same image bytes, prompt and model version come
    from the cache.
    """
    outputs: list[dict[str, Any] | None] = [None] * len(items)
    for chunk in predict_stream(items):
        for index, output in chunk:
            outputs[index] = output
    assert all(output is not None for output in outputs)
    return outputs  # type: ignore[return-value]


Chunk = list[tuple[int, dict[str, Any]]]  # (item index, output)


def predict_stream(items: Sequence[dict[str, Any]]) -> Iterator[Chunk]:
    """:func:`predict_batch`'s outputs, a chunk as each GPU batch finishes.

    Every image download starts at once (on the download threads) and the engine runs a batch as
    soon as its images are in: while batch k is on the GPU, batch k+1's images are fetched and
    decoded, and the caller converts and pushes batch k-1's outputs. A chunk also carries the
    cached and failed items met since the previous one.
    """
    context = _installed()
    with progress.paused():  # loading a release takes minutes with no steps: not a stall
        context.follow_release()  # a job starts: the place to change models without dropping one
    engine, cache = context.engine, context.cache
    # The engine's own GPU batch (the transformers engine's may shrink after an out-of-memory);
    # an engine that batches by itself (vLLM's continuous batching) gets everything at once.
    batch_size = getattr(engine, "max_batch_size", None) or max(1, len(items))
    job = get_current_job()
    ahead = context.lookahead.handover(job.id if job else None) if context.lookahead else {}
    downloads = [ahead.pop(item["image"], None) or _fetch(item["image"]) for item in items]
    if context.lookahead is not None:  # queued behind this job's own downloads
        context.lookahead.claim_next(_fetch, 2 * context.settings.job_timeout)
    ready: Chunk = []
    pending: list[tuple[int, Request, str, dict[str, Any]]] = []
    for index, (item, download) in enumerate(zip(items, downloads, strict=True)):
        fetched = download.result()
        progress.report()  # an image in (or failed): the worker's watchdog sees work move
        head = {"key": item["key"]}
        if isinstance(fetched, ImageError):
            log.warning("task %s: %s", item["key"], fetched)
            retryable = isinstance(fetched, ImageUnavailable)
            context.metrics.image_failures.labels("unreachable" if retryable else "unusable").inc()
            ready.append((index, {**head, "error": str(fetched), "retryable": retryable}))
            continue
        image, data = fetched
        head.update(width=image.width, height=image.height, model_version=engine.model_version)
        request, cache_key, cached = _request(item, image, data, engine, cache)
        (context.metrics.cache_misses if cached is None else context.metrics.cache_hits).inc()
        if cached is not None:
            ready.append((index, {**head, **cached, "cached": True}))
            continue
        pending.append((index, request, cache_key, head))
        if len(pending) >= batch_size:
            yield ready + _generate(engine, cache, pending)
            ready, pending = [], []
    if ready or pending:
        yield ready + _generate(engine, cache, pending)


def _request(
    item: Mapping[str, Any], image: Image.Image, data: bytes, engine: Engine, cache: OutputCache
) -> tuple[Request, str, dict[str, Any] | None]:
    """An item's request to the engine, its output cache key, and its cached output if any."""
    cache_key = OutputCache.key(data, item["prompt"], engine.model_version)
    request = Request(image=image, prompt=item["prompt"], task=Task(item["task"]))
    return request, cache_key, cache.get(cache_key)


def _work_ahead(context: JobContext) -> None:
    """Run the claimed next job's first GPU batch now (this job's last push is in flight): its
    outputs wait in the output cache, where that job finds them (see varco_labeler.lookahead)."""
    lookahead = context.lookahead
    claim = lookahead.claimed if lookahead else None
    if lookahead is None or claim is None:
        return
    try:
        if lookahead.still_claimed() is not None:
            _run_ahead(context, claim)
    except Exception:  # work done ahead is a bonus: this job, done and pushing, must not fail
        log.warning("could not run job %s's first batch ahead", claim.job_id, exc_info=True)
        lookahead.release()


def _run_ahead(context: JobContext, claim: Claim) -> None:
    engine, cache = context.engine, context.cache
    batch_size = getattr(engine, "max_batch_size", None) or len(claim.items)
    pending: list[tuple[int, Request, str, dict[str, Any]]] = []
    for index, item in enumerate(claim.items):
        fetched = claim.downloads[item["image"]].result()
        progress.report()
        if isinstance(fetched, ImageError):
            continue  # that job reports it
        request, cache_key, cached = _request(item, *fetched, engine, cache)
        if cached is None:
            pending.append((index, request, cache_key, {}))
        if len(pending) >= batch_size:
            break
    _generate(engine, cache, pending)


def _generate(
    engine: Engine, cache: OutputCache, pending: Sequence[tuple[int, Request, str, dict[str, Any]]]
) -> Chunk:
    if not pending:
        return []
    started = time.perf_counter()
    results = engine.generate([request for _, request, _, _ in pending])
    _installed().metrics.batch_done(len(pending), time.perf_counter() - started)
    progress.report()
    chunk: Chunk = []
    outputs = {}
    for (index, _, cache_key, head), result in zip(pending, results, strict=True):
        outputs[cache_key] = output = result.to_json()
        chunk.append((index, {**head, **output, "cached": False}))
    cache.put(outputs)
    return chunk


def _fetch(ref: str) -> Future[tuple[Image.Image, bytes] | ImageError]:
    """An image's download, started on the download threads."""
    return _installed().downloads.submit(_download, ref)


def _download(ref: str) -> tuple[Image.Image, bytes] | ImageError:
    """Fetch on a download thread; a failure comes back as a value, to be reported per task."""
    try:
        return _installed().fetcher.fetch(ref)
    except ImageError as error:
        return error


@_counted
def prelabel_batch(
    project: int, policy_json: dict[str, Any], items: list[dict[str, Any]]
) -> dict[str, Any]:
    """Predict a batch of a project's tasks and push the predictions to Label Studio in bulk.

    ``policy_json`` is the project's :class:`Policy`, resolved once by whoever started the run.
    Items carry ``task_id``. Each GPU batch's predictions are pushed on a background thread while
    the next batch runs (several batches in one import when Label Studio is slower than the GPU);
    the job returns once everything is pushed. Safe to run twice (a retry after a killed worker,
    or a restarted ``prelabel``): tasks that already have a prediction of this model version (or
    of the run's, pushed before a release swap) are not pushed again. Returns ``{"pushed": [task
    ids], "present": [...], "failed": {task id: reason}, "records": [PredictionRecord JSON]}``:
    the caller records them in the feedback store.
    """
    context = _installed()
    policy = Policy.from_json(policy_json)
    job = get_current_job()
    # A queue job run again (its worker died, or it failed) may have pushed before: check for
    # that. Without a queue (embedded) a batch runs once.
    rerun = job is not None and (job.retries_left or 0) < context.settings.job_retries
    # A run that gave way before it failed already handed its rest to a continuation job.
    continued: dict[str, Any] | None = job.meta.get("continued") if rerun else None
    if continued:
        handed = set(continued["tasks"])
        items = [item for item in items if item["task_id"] not in handed]
    # An earlier attempt that ran before a release swap pushed under the run's version.
    push = BackgroundPush(
        context.label_studio(),
        project,
        may_have_landed=rerun,
        landed_as=(policy.model_version,) if rerun else (),
    )
    records: list[dict[str, Any]] = []
    failed: dict[str, str] = {}
    done: set[int] = set()
    try:
        for chunk in predict_stream(items):
            predictions, chunk_failed = convert_batch(
                policy, [items[index] for index, _ in chunk], [output for _, output in chunk]
            )
            failed.update(chunk_failed)
            push.add([{"task": p.record.task_id, **p.prediction} for p in predictions])
            records += [p.record.to_json() for p in predictions]
            done.update(index for index, _ in chunk)
            if len(done) < len(items) and job is not None and _someone_waits(context, job):
                rest = [item for index, item in enumerate(items) if index not in done]
                continued = _continue_later(context.settings, project, policy_json, rest)
                job.meta["continued"] = continued  # a rerun of this job must not do them too
                job.save_meta()
                break
        else:
            if job is None or not _someone_waits(context, job):
                _work_ahead(context)  # the GPU runs the next job's first batch during the push
        pushed, present = push.finish()
    finally:
        push.close(drop_waiting=True)  # after an error: wait for a push in flight, no more
    outcome = {"pushed": pushed, "present": present, "failed": failed, "records": records}
    return outcome | ({"continued": continued} if continued else {})


def _someone_waits(context: JobContext, job: Any) -> bool:
    """An interactive job is queued: someone waits in the editor for a drawn box."""
    from rq import Queue

    from varco_labeler.queue import Priority, queue_name

    name = queue_name(context.settings.queue_name, Priority.HIGH)
    return Queue(name, connection=job.connection).count > 0


def _continue_later(
    settings: Settings, project: int, policy_json: dict[str, Any], rest: list[dict[str, Any]]
) -> dict[str, Any]:
    """The rest of a prelabel job as a new job at the front of the bulk queue: the worker takes
    the waiting interactive job first, then carries on here. A job gives way between its GPU
    batches, so a drawn box waits for one batch, not for a whole bulk job."""
    from varco_labeler.queue import RQDispatcher

    (later,) = RQDispatcher(settings).submit(
        PRELABEL_BATCH, [(project, policy_json, rest)], at_front=True
    )
    log.info("interactive work waits: %d task(s) left for job %s", len(rest), later.id)
    return {"job": later.id, "tasks": [item["task_id"] for item in rest]}


@dataclass(frozen=True)
class Converted:
    """One task's prediction for Label Studio, and the record of how it was made."""

    prediction: dict[str, Any]
    record: PredictionRecord


def convert_batch(
    policy: Policy, items: Sequence[dict[str, Any]], outputs: Sequence[dict[str, Any]]
) -> tuple[list[Converted], dict[str, str]]:
    """Outputs of :func:`predict_batch` as predictions under a policy; failures by task.

    Raises when Label Studio could not be reached for images (a restart?), so that a queue job
    is run again later rather than its tasks reported as failed for good; any other image that
    cannot be had fails its own task.
    """
    unreachable = [output["error"] for output in outputs if output.get("retryable")]
    if unreachable:
        raise RuntimeError(f"images unreachable, job to be retried: {unreachable[0]}")
    converted, failed = [], {}
    for item, output in zip(items, outputs, strict=True):
        task = str(item.get("task_id", item["key"]))
        if "error" in output:
            failed[task] = output["error"]
            continue
        try:
            converted.append(convert_one(policy, item, output))
        except PolicyError as error:  # this task's own labels cannot hold the regions
            failed[task] = str(error)
    return converted, failed


def convert_one(policy: Policy, item: Mapping[str, Any], output: Mapping[str, Any]) -> Converted:
    """One finished output as a Label Studio prediction and its record.

    ``item["reference"]``, when set, is how Label Studio will know the image (a folder run's
    URL prefix), else the image as fetched.
    """
    task_id = item.get("task_id")
    reference = item.get("reference", item["image"])
    conversion = policy.convert(
        output, labels=item.get("labels"), task=Task(item["task"]), seed=reference
    )
    prediction = conversion.prediction
    record = PredictionRecord(
        task_id=task_id,
        project=item.get("project"),
        image=reference,
        prompt=item["prompt"],
        task_kind=item["task"],
        raw=output["raw"],
        regions=output["regions"],
        result=prediction["result"],
        model_version=prediction["model_version"],
        width=output["width"],
        height=output["height"],
        score=prediction.get("score"),
    )
    return Converted(prediction, record)


def engine_version() -> str:
    """The model version the installed engine stamps on its predictions."""
    return _installed().engine.model_version


def metrics() -> JobMetrics:
    """What the jobs of this process did (see ``varco_labeler.metrics``)."""
    return _installed().metrics


def _installed() -> JobContext:
    if _context is None:
        raise RuntimeError("no engine installed in this process: start it with varco-worker")
    return _context
