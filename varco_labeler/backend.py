"""What the ML backend does for Label Studio, without HTTP: the server is a thin layer over this.

For each task: choose the work (grounding or OCR from the label config, unless the project's
``extra_params`` or VARCO_TASK say otherwise; a referring question for a rectangle the user just
drew; grounding of a phrase the user typed), send it through the dispatcher, and turn each output
into a Label Studio prediction. A task that did not finish in time gets ``[]``, which Label Studio
skips without storing anything, so a later request predicts it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from varco_labeler.feedback.store import FeedbackStore
from varco_labeler.jobs import Converted, convert_one
from varco_labeler.labelstudio import (
    LabelConfig,
    LabelConfigError,
    box_from_rectangle,
    prediction_from_regions,
    read_label_config,
)
from varco_labeler.policy import PHRASE_PROMPT, Policy, PolicyError, parse_extra_params
from varco_labeler.queue import Dispatcher
from varco_labeler.regions import Region
from varco_labeler.settings import Settings
from varco_labeler.varco import Task, clean_model_text

log = logging.getLogger(__name__)


class BadRequest(ValueError):
    """The request cannot be served as sent; the message says why (HTTP 4xx)."""


class Busy(RuntimeError):
    """More tasks are pending than this backend accepts; the client should retry later (503)."""


@dataclass
class _Work:
    """One task's model call; ``drawn``: the rectangle it asks about, in interactive use."""

    task_index: int
    item: dict[str, Any]
    drawn: dict[str, Any] | None = None


class Backend:
    def __init__(
        self, settings: Settings, dispatcher: Dispatcher, feedback: FeedbackStore | None = None
    ) -> None:
        self.settings = settings
        self.dispatcher = dispatcher
        self.feedback = feedback
        self._extra_params: dict[str, dict[str, Any]] = {}
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
    @property
    def model_version(self) -> str:
        """The version predictions will carry: the workers' when they all run one."""
        versions = set(self.dispatcher.model_versions().values())
        return versions.pop() if len(versions) == 1 else self.settings.version

    def setup(self, project: str | None, schema: str | None, extra_params: Any) -> dict[str, Any]:
        try:
            extra = parse_extra_params(extra_params)
            if schema:  # refuse an unusable config or extra_params now, where the user connects
                Policy.resolve(self.settings, self._config(schema), extra)
        except PolicyError as error:
            raise BadRequest(str(error)) from error
        with self._lock:
            self._extra_params[_project_id(project)] = extra
        return {"model_version": self.model_version}

    def versions(self) -> dict[str, Any]:
        return {"versions": [self.model_version]}

    def policy(self, project: str | None, label_config: str) -> Policy:
        """The project's policy, from its label config and the extra_params of its /setup."""
        extra = self._extra_params.get(_project_id(project))
        try:
            return Policy.resolve(self.settings, self._config(label_config), extra)
        except PolicyError as error:
            raise BadRequest(str(error)) from error

    def predict(
        self,
        tasks: list[dict[str, Any]],
        label_config: str,
        project: str | None = None,
        context: dict[str, Any] | None = None,
        deadline: float | None = None,
    ) -> dict[str, Any]:
        """``deadline``: seconds left to wait for the model (default VARCO_PREDICT_DEADLINE)."""
        policy = self.policy(project, label_config)
        works, results = self._plan(tasks, policy, _project_id(project), context)
        wait = self.settings.predict_deadline if deadline is None else deadline
        outputs = self.dispatcher.run([w.item for w in works], wait)
        converted: list[Converted] = []
        for work, output in zip(works, outputs, strict=True):
            results[work.task_index] = self._prediction(work, output, policy, converted)
        self._record(converted)
        return {"results": results}

    def health(self) -> dict[str, Any]:
        queue = self.dispatcher.status()
        healthy = queue.get("redis", "ok") == "ok"
        return {
            "status": "UP" if healthy else "DEGRADED",
            "model_class": "VarcoVision",
            "model_version": self.model_version,
            "worker_versions": self.dispatcher.model_versions(),
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
        policy: Policy,
        project: str,
        context: dict[str, Any] | None,
    ) -> tuple[list[_Work], list[Any]]:
        assert policy.config is not None
        drawn = _drawn_regions(context, policy.config)
        results: list[Any] = [[] for _ in tasks]
        works: list[_Work] = []
        for index, task in enumerate(tasks):
            key = f"{index}:{task.get('id')}"
            data = task.get("data") or {}
            record = {"task_id": task.get("id"), "project": int(project) if project else None}
            try:
                if drawn.rectangle is not None:
                    box = box_from_rectangle(
                        drawn.rectangle["value"],
                        drawn.rectangle.get("original_width"),
                        drawn.rectangle.get("original_height"),
                    )
                    prompt = policy.referring_prompt(box)
                    item = policy.item(key, data, task=Task.REFERRING.value, prompt=prompt)
                    works.append(_Work(index, item, drawn.rectangle))
                elif drawn.phrase is not None:
                    prompt = PHRASE_PROMPT.format(phrase=drawn.phrase)
                    item = policy.item(key, data, task=Task.GROUNDING.value, prompt=prompt)
                    works.append(_Work(index, item | record))
                else:
                    works.append(_Work(index, policy.item(key, data, **record)))
            except PolicyError as error:
                self._problem(f"task {task.get('id')}: {error}")
        return works, results

    def _prediction(
        self,
        work: _Work,
        output: dict[str, Any] | None,
        policy: Policy,
        converted: list[Converted],
    ) -> dict[str, Any] | list[Any]:
        if output is None:
            self._count("unfinished")
            return []
        if "error" in output:
            self._problem(f"task {work.item['key']}: {output['error']}")
            return []
        assert policy.config is not None
        try:
            if work.drawn is not None:
                width, height = output["width"], output["height"]
                labels = work.item.get("labels", policy.config.labels)
                region = _answer_region(work.drawn, output["raw"], policy, labels)
                prediction = prediction_from_regions(
                    [region], policy.config, width, height, output["model_version"]
                )
            else:
                done = convert_one(policy, work.item, output)
                converted.append(done)
                prediction = done.prediction
        except PolicyError as error:
            self._problem(f"task {work.item['key']}: {error}")
            return []
        self._count("predicted")
        return prediction

    def _record(self, converted: list[Converted]) -> None:
        """Keep what the model said, for training data and quality reports later."""
        if self.feedback is None or not converted:
            return
        try:
            self.feedback.record_predictions(done.record for done in converted)
        except Exception:  # recording must never cost Label Studio its predictions
            log.exception("could not record %d prediction(s)", len(converted))

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
    drawn: dict[str, Any], answer: str, policy: Policy, labels: tuple[str, ...]
) -> Region:
    """The drawn region itself (same id) with the model's answer.

    With a per-region TextArea the answer becomes the region's text; without one, the answer
    ("a small grey cat") picks the region's label when it names one.
    """
    assert policy.config is not None
    value = drawn["value"]
    chosen = value.get("rectanglelabels") or value.get("labels") or []
    label = chosen[0] if chosen else None
    box = box_from_rectangle(value, drawn.get("original_width"), drawn.get("original_height"))
    text = clean_model_text(answer).strip()
    if policy.config.text_control:
        return Region(box=box, label=label, text=text, id=drawn.get("id"))
    return Region(box=box, label=policy.mapper(labels).label_for(text) or label, id=drawn.get("id"))


def _project_id(project: str | int | None) -> str:
    """Label Studio sends "ID.TIMESTAMP"; options belong to the project ID."""
    return str(project or "").split(".")[0]
