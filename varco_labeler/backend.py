"""What the ML backend does for Label Studio, without HTTP: the server is a thin layer over this.

For each task: choose the work (grounding or OCR from the label config, unless the project's
``extra_params`` or VARCO_TASK say otherwise; a referring question for a rectangle the user just
drew; grounding of a phrase the user typed), send it through the dispatcher, and turn each output
into a Label Studio prediction. A task that did not finish in time gets ``[]``, which Label Studio
skips without storing anything, so a later request predicts it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from varco_labeler.feedback.store import FeedbackStore
from varco_labeler.jobs import convert_output
from varco_labeler.labelstudio import (
    LabelConfig,
    LabelConfigError,
    LabelMapper,
    box_from_rectangle,
    prediction_from_regions,
    read_label_config,
)
from varco_labeler.queue import Dispatcher
from varco_labeler.regions import Region
from varco_labeler.settings import Settings
from varco_labeler.varco import Task, clean_model_text, prompt_for, referring_prompt

log = logging.getLogger(__name__)

DEFAULT_QUESTIONS = {
    Task.GROUNDING: "Describe {region} in detail.",
    Task.OCR: "What text is written in {region}? Answer with the text only.",
}
PHRASE_PROMPT = "<gro>\nFind {phrase} in the image."


class BadRequest(ValueError):
    """The request cannot be served as sent; the message says why (HTTP 4xx)."""


class Busy(RuntimeError):
    """More tasks are pending than this backend accepts; the client should retry later (503)."""


@dataclass(frozen=True)
class ProjectOptions:
    """What users can set in Label Studio's model settings ("Extra params", JSON)."""

    task: Task | None = None
    question: str | None = None
    fallback_label: str | None = None
    ocr_label: str | None = None
    min_score: float = 0.0

    @classmethod
    def parse(cls, extra: Any) -> ProjectOptions:
        if extra in (None, "", {}):
            return cls()
        if isinstance(extra, str):
            try:
                extra = json.loads(extra)
            except json.JSONDecodeError as error:
                raise BadRequest(f"extra_params is not valid JSON: {error}") from error
        if not isinstance(extra, dict):
            raise BadRequest("extra_params must be a JSON object")
        unknown = set(extra) - {"task", "question", "fallback_label", "ocr_label", "min_score"}
        if unknown:
            raise BadRequest(f"extra_params has unknown keys {sorted(unknown)}")
        task = extra.get("task") or None
        if task not in (None, Task.GROUNDING, Task.OCR):
            raise BadRequest(f'extra_params "task" must be "grounding" or "ocr", got {task!r}')
        try:
            min_score = float(extra.get("min_score") or 0.0)
        except (TypeError, ValueError):
            raise BadRequest('extra_params "min_score" must be a number') from None
        return cls(
            task=Task(task) if task else None,
            question=extra.get("question"),
            fallback_label=extra.get("fallback_label"),
            ocr_label=extra.get("ocr_label"),
            min_score=min_score,
        )


@dataclass
class _Work:
    """One task's model call and how to turn its output into a prediction."""

    task_index: int
    item: dict[str, Any]
    kind: Task
    drawn: dict[str, Any] | None = None


class Backend:
    def __init__(
        self, settings: Settings, dispatcher: Dispatcher, feedback: FeedbackStore | None = None
    ) -> None:
        self.settings = settings
        self.dispatcher = dispatcher
        self.feedback = feedback
        self.model_version = settings.version
        self._options: dict[str, ProjectOptions] = {}
        self._lock = threading.Lock()
        self.counters: Counter[str] = Counter()
        self.last_problem: str | None = None
        self.started = time.time()
        self.pending_tasks = 0

    @contextmanager
    def admission(self, tasks: int) -> Iterator[None]:
        """Hold places for ``tasks`` during a request; refuse it when the backend is full."""
        with self._lock:
            if self.pending_tasks + tasks > self.settings.max_pending_tasks:
                self.counters["refused"] += tasks
                raise Busy(
                    f"busy: {self.pending_tasks} tasks pending, limit "
                    f"{self.settings.max_pending_tasks} (VARCO_MAX_PENDING_TASKS); retry later"
                )
            self.pending_tasks += tasks
        try:
            yield
        finally:
            with self._lock:
                self.pending_tasks -= tasks

    # -- Label Studio protocol -------------------------------------------------------------
    def setup(self, project: str | None, schema: str | None, extra_params: Any) -> dict[str, Any]:
        options = ProjectOptions.parse(extra_params)
        if schema:
            self._config(schema)  # refuse an unusable config now, where the user connects
        with self._lock:
            self._options[_project_id(project)] = options
        return {"model_version": self.model_version}

    def versions(self) -> dict[str, Any]:
        return {"versions": [self.model_version]}

    def predict(
        self,
        tasks: list[dict[str, Any]],
        label_config: str,
        project: str | None = None,
        context: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        config = self._config(label_config)
        options = self._options.get(_project_id(project), ProjectOptions())
        try:
            mapper = LabelMapper(
                config.labels, config.aliases, options.fallback_label, options.ocr_label
            )
        except ValueError as error:
            raise BadRequest(f"extra_params: {error}") from error
        works, results = self._plan(tasks, config, options, context)
        outputs = self.dispatcher.run([w.item for w in works], self.settings.predict_deadline)
        for work, output in zip(works, outputs, strict=True):
            prediction = self._prediction(work, output, config, mapper, options)
            results[work.task_index] = prediction
            if isinstance(prediction, dict) and work.drawn is None:
                self._record(tasks[work.task_index], project, work, output, prediction)
        return {"results": results}

    def health(self) -> dict[str, Any]:
        queue = self.dispatcher.status()
        healthy = queue.get("redis", "ok") == "ok"
        return {
            "status": "UP" if healthy else "DEGRADED",
            "model_class": "VarcoVision",
            "model_version": self.model_version,
            "mode": "embedded" if self.settings.embedded else "queue",
            "queue": queue,
            "tasks": dict(self.counters),
            "pending_tasks": self.pending_tasks,
            "last_problem": self.last_problem,
            "uptime_s": round(time.time() - self.started),
        }

    # -- planning and conversion -----------------------------------------------------------
    def _config(self, xml: str) -> LabelConfig:
        try:
            return read_label_config(xml)
        except LabelConfigError as error:
            raise BadRequest(f"label config: {error}") from error

    def _plan(
        self,
        tasks: list[dict[str, Any]],
        config: LabelConfig,
        options: ProjectOptions,
        context: dict[str, Any] | None,
    ) -> tuple[list[_Work], list[Any]]:
        kind = options.task or _task_setting(self.settings) or config.default_task
        drawn = _drawn_regions(context, config)
        results: list[Any] = [[] for _ in tasks]
        works: list[_Work] = []
        for index, task in enumerate(tasks):
            image = (task.get("data") or {}).get(config.data_key)
            if not isinstance(image, str) or not image:
                self._problem(f"task {task.get('id')}: no image in data[{config.data_key!r}]")
                continue
            key = f"{index}:{task.get('id')}"
            if drawn.rectangle is not None:
                question = options.question or DEFAULT_QUESTIONS[kind]
                box = box_from_rectangle(
                    drawn.rectangle["value"],
                    drawn.rectangle.get("original_width"),
                    drawn.rectangle.get("original_height"),
                )
                item = _item(key, image, Task.REFERRING, referring_prompt(box, question))
                works.append(_Work(index, item, Task.REFERRING, drawn.rectangle))
            elif drawn.phrase is not None:
                prompt = PHRASE_PROMPT.format(phrase=drawn.phrase)
                works.append(
                    _Work(index, _item(key, image, Task.GROUNDING, prompt), Task.GROUNDING)
                )
            else:
                works.append(_Work(index, _item(key, image, kind, prompt_for(kind)), kind))
        return works, results

    def _prediction(
        self,
        work: _Work,
        output: dict[str, Any] | None,
        config: LabelConfig,
        mapper: LabelMapper,
        options: ProjectOptions,
    ) -> dict[str, Any] | list[Any]:
        if output is None:
            self._count("unfinished")
            return []
        if "error" in output:
            self._problem(f"task {work.item['key']}: {output['error']}")
            return []
        self._count("predicted")
        width, height = output["width"], output["height"]
        version = output["model_version"]
        if work.drawn is not None:
            region = _answer_region(work.drawn, output["raw"], config, mapper)
            return prediction_from_regions([region], config, width, height, version)
        conversion = convert_output(output, work.kind, config, mapper, seed=work.item["image"])
        if options.min_score:
            kept = [
                r for r in conversion.regions if r.score is None or r.score >= options.min_score
            ]
            return prediction_from_regions(kept, config, width, height, version, work.item["image"])
        return conversion.prediction

    def _record(
        self,
        task: dict[str, Any],
        project: str | None,
        work: _Work,
        output: dict[str, Any],
        prediction: dict[str, Any],
    ) -> None:
        """Keep what the model said, for training data and quality reports later."""
        if self.feedback is None:
            return
        try:
            self.feedback.record_prediction(
                task_id=task.get("id"),
                project=project,
                image=work.item["image"],
                prompt=work.item["prompt"],
                task_kind=work.kind.value,
                raw=output["raw"],
                result=prediction["result"],
                model_version=prediction["model_version"],
                width=output["width"],
                height=output["height"],
                scores=output.get("scores"),
                score=prediction.get("score"),
            )
        except Exception:  # recording must never cost Label Studio its predictions
            log.exception("could not record the prediction of task %s", task.get("id"))

    def _count(self, what: str) -> None:
        with self._lock:
            self.counters[what] += 1

    def _problem(self, message: str) -> None:
        log.warning(message)
        self._count("failed")
        self.last_problem = message


@dataclass
class _Drawn:
    rectangle: dict[str, Any] | None = None
    phrase: str | None = None


def _drawn_regions(context: dict[str, Any] | None, config: LabelConfig) -> _Drawn:
    """What the user just drew or typed, from ``params.context.result`` of an interactive call."""
    drawn = _Drawn()
    for result in (context or {}).get("result") or []:
        if not isinstance(result, dict) or not isinstance(result.get("value"), dict):
            continue
        kind, value = result.get("type"), result["value"]
        if kind in ("rectanglelabels", "rectangle") and {"x", "y", "width", "height"} <= set(value):
            drawn.rectangle = result
        elif kind == "textarea" and result.get("from_name") == config.prompt_control:
            text = " ".join(str(t) for t in value.get("text") or []).strip()
            drawn.phrase = text or None
    return drawn


def _answer_region(
    drawn: dict[str, Any], answer: str, config: LabelConfig, mapper: LabelMapper
) -> Region:
    """The drawn region itself (same id) with the model's answer.

    With a per-region TextArea the answer becomes the region's text; without one, the answer
    ("a small grey cat") picks the region's label when it names one.
    """
    value = drawn["value"]
    labels = value.get("rectanglelabels") or value.get("labels") or []
    label = labels[0] if labels else None
    box = box_from_rectangle(value, drawn.get("original_width"), drawn.get("original_height"))
    text = clean_model_text(answer).strip()
    if config.text_control:
        return Region(box=box, label=label, text=text, id=drawn.get("id"))
    return Region(box=box, label=mapper.label_for(text) or label, id=drawn.get("id"))


def _item(key: str, image: str, task: Task, prompt: str) -> dict[str, Any]:
    return {"key": key, "image": image, "task": task.value, "prompt": prompt}


def _task_setting(settings: Settings) -> Task | None:
    return Task(settings.default_task) if settings.default_task else None


def _project_id(project: str | int | None) -> str:
    """Label Studio sends "ID.TIMESTAMP"; options belong to the project ID."""
    return str(project or "").split(".")[0]
