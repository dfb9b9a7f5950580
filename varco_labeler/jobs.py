"""The work a queue job does, referenced by dotted path (``varco_labeler.jobs.predict_batch``).

The backend enqueues by that name and never imports this module's heavy side: the engine is built
by the process that runs jobs (a worker, or the backend itself in embedded mode) and installed
here once with :func:`install`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from PIL import Image
from redis import Redis
from rq import get_current_job

from varco_labeler.engine.base import Engine, Request
from varco_labeler.labelstudio.config import LabelConfig, read_label_config
from varco_labeler.labelstudio.images import ImageError, ImageFetcher, ImageUnavailable
from varco_labeler.labelstudio.labels import LabelMapper
from varco_labeler.labelstudio.predictions import Conversion, prediction_from_varco
from varco_labeler.labelstudio.sink import PredictionSink
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
        return f"varco:output:{digest.hexdigest()}"

    def get(self, key: str) -> dict[str, Any] | None:
        if self.redis is not None:
            value = self.redis.get(key)
        else:
            with self._lock:
                value = self._memory.get(key)
                if value is not None:
                    self._memory.move_to_end(key)
        return json.loads(value) if value else None

    def put(self, key: str, output: dict[str, Any]) -> None:
        value = json.dumps(output, ensure_ascii=False)
        if self.redis is not None:
            self.redis.set(key, value, ex=self.ttl)
            return
        with self._lock:
            self._memory[key] = value
            while len(self._memory) > self.size:
                self._memory.popitem(last=False)


@dataclass
class JobContext:
    engine: Engine
    fetcher: ImageFetcher
    cache: OutputCache
    settings: Settings
    # Downloads of one batch overlap: a batch waits for its slowest image, not for their sum.
    downloads: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=8, thread_name_prefix="download")
    )
    _sink: PredictionSink | None = None

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


def build_context(settings: Settings, redis: Redis | None = None) -> JobContext:
    """Load the engine (once per process) with what a job needs around it."""
    engine: Engine
    if settings.openai_url:
        from varco_labeler.engine.openai_engine import OpenAIEngine

        engine = OpenAIEngine(
            settings.openai_url,
            settings.model,
            max_concurrency=settings.batch_size,
            model_version=settings.version,
        )
    else:
        from varco_labeler.engine.transformers_engine import TransformersEngine  # torch: only here

        engine = TransformersEngine(
            settings.model, max_batch_size=settings.batch_size, model_version=settings.version
        )
    fetcher = ImageFetcher.from_settings(settings)
    return JobContext(engine, fetcher, OutputCache(redis, ttl=settings.cache_ttl), settings)


def predict_batch(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run the model on a batch of ``{"key", "image", "task", "prompt"}`` items.

    Returns one ``{"key", "width", "height", "raw", "scores", "model_version", "cached"}`` per
    item, in order, or ``{"key", "error"}`` for an item whose image could not be used. Outputs
    already computed for the same image bytes, prompt and model version come from the cache.
    """
    if _context is None:
        raise RuntimeError("no engine installed in this process: start it with varco-worker")
    engine, cache = _context.engine, _context.cache
    outputs: list[dict[str, Any] | None] = [None] * len(items)
    pending: list[tuple[int, Request, str, dict[str, Any]]] = []
    downloads = _context.downloads.map(_download, [item["image"] for item in items])
    for index, (item, download) in enumerate(zip(items, downloads, strict=True)):
        head = {"key": item["key"]}
        if isinstance(download, ImageError):
            log.warning("task %s: %s", item["key"], download)
            retryable = isinstance(download, ImageUnavailable)
            outputs[index] = {**head, "error": str(download), "retryable": retryable}
            continue
        image, data = download
        head.update(width=image.width, height=image.height, model_version=engine.model_version)
        cache_key = OutputCache.key(data, item["prompt"], engine.model_version)
        cached = cache.get(cache_key)
        if cached is not None:
            outputs[index] = {**head, **cached, "cached": True}
            continue
        request = Request(image=image, prompt=item["prompt"], task=Task(item["task"]))
        pending.append((index, request, cache_key, head))
    if pending:
        results = engine.generate([request for _, request, _, _ in pending])
        for (index, _, cache_key, head), result in zip(pending, results, strict=True):
            output = {
                "raw": result.raw,
                "scores": result.region_scores,
                "prompt_tokens": result.prompt_tokens,
                "completion_tokens": result.completion_tokens,
                "seconds": result.seconds,
            }
            cache.put(cache_key, output)
            outputs[index] = {**head, **output, "cached": False}
    assert all(output is not None for output in outputs)
    return outputs  # type: ignore[return-value]


def _download(ref: str) -> tuple[Image.Image, bytes] | ImageError:
    """Fetch on a download thread; a failure comes back as a value, to be reported per task."""
    assert _context is not None
    try:
        return _context.fetcher.fetch(ref)
    except ImageError as error:
        return error


def convert_output(
    output: dict[str, Any], task: Task | str, config: LabelConfig, mapper: LabelMapper, seed: str
) -> Conversion:
    """A :func:`predict_batch` output as a Label Studio prediction for a project's config."""
    return prediction_from_varco(
        output["raw"],
        task,
        config,
        mapper,
        output["width"],
        output["height"],
        output["model_version"],
        scores=output.get("scores"),
        seed=seed,
    )


def prelabel_batch(project: int, label_config: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    """Predict a batch of a project's tasks and push the predictions to Label Studio in bulk.

    Items carry ``task_id``. Safe to run twice (a retry after a killed worker, or a restarted
    ``prelabel``): tasks that already have a prediction of this model version are not pushed
    again. Returns ``{"pushed": [task ids], "present": [...], "failed": {task id: reason}}``.
    """
    if _context is None:
        raise RuntimeError("no engine installed in this process: start it with varco-worker")
    config = read_label_config(label_config)
    mapper = LabelMapper(config.labels, config.aliases)
    outputs = predict_batch(items)
    unreachable = [output["error"] for output in outputs if output.get("retryable")]
    if unreachable:
        # The image server is down (a Label Studio restart?): fail the job so that RQ runs it
        # again later, rather than report these tasks as failed for good.
        raise RuntimeError(f"images unreachable, job to be retried: {unreachable[0]}")
    predictions, failed = [], {}
    for item, output in zip(items, outputs, strict=True):
        if "error" in output:
            failed[str(item["task_id"])] = output["error"]
            continue
        conversion = convert_output(output, item["task"], config, mapper, seed=item["image"])
        predictions.append({"task": item["task_id"], **conversion.prediction})
    job = get_current_job()
    # A queue job run again (its worker died, or it failed) may have pushed before: check for
    # that. Without a queue (embedded) a batch runs once.
    rerun = job is not None and (job.retries_left or 0) < _context.settings.job_retries
    pushed, present = _context.label_studio().push(project, predictions, may_have_landed=rerun)
    return {"pushed": pushed, "present": present, "failed": failed}
