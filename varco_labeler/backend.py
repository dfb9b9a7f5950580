"""What the ML backend does for Label Studio, without HTTP: the server is a thin layer over this.

For each task: choose the work (grounding or OCR from the label config, unless the project's
``extra_params`` or VARCO_TASK say otherwise; a referring question for a rectangle the user just
drew; grounding of a phrase the user typed), send it through the dispatcher, and turn each output
into a Label Studio prediction. A task that did not finish in time gets ``[]``, which Label Studio
skips without storing anything, so a later request predicts it.

Interactive work (a region drawn, a phrase typed in the editor) goes on the high-priority queue,
other /predict work (a task opened, "Retrieve predictions") on the normal one. A referring
project (its per-region TextArea is named "answer") is not pre-labelled when a task opens unless
the project's ``extra_params`` or VARCO_TASK ask for a task.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Iterator, Mapping
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
from varco_labeler.labelstudio.labels import LabelMapper
from varco_labeler.metrics import BackendMetrics, QueueCollector
from varco_labeler.policy import PHRASE_PROMPT, Policy, PolicyError, parse_extra_params
from varco_labeler.queue import Dispatcher, Priority, RQDispatcher
from varco_labeler.regions import Region
from varco_labeler.releases import Release, ReleaseChannel, ReleaseError
from varco_labeler.runs import active_runs
from varco_labeler.settings import Settings
from varco_labeler.varco import Task
from varco_labeler.varco.prompts import answer_text

log = logging.getLogger(__name__)

# Tasks whose drawn regions are remembered as answered, to tell a new region from them.
ANSWERED_MEMORY = 10_000


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
        self.releases = ReleaseChannel.for_settings(settings)
        self._extra_params: dict[str, dict[str, Any]] = {}
        self._served: dict[str, str | None] = {}  # project -> label config registered
        self._lock = threading.Lock()
        self.counters: Counter[str] = Counter()
        self.last_problem: str | None = None
        self.started = time.time()
        self.pending_tasks = 0
        self.metrics = BackendMetrics()
        self.metrics.watch(QueueCollector(dispatcher.status))
        # (project, task id) -> ids of the drawn regions answered, most recent task last.
        self._answered: OrderedDict[tuple[str, str], set[str]] = OrderedDict()

    @contextmanager
    def admission(self, tasks: int) -> Iterator[None]:
        """Hold places for ``tasks`` during a request; refuse it when the backend is full."""
        with self._lock:
            if self.pending_tasks + tasks > self.settings.max_pending_tasks:
                self.counters["refused"] += tasks
                self.metrics.tasks_refused.labels("busy").inc(tasks)
                raise Busy(
                    f"busy: {self.pending_tasks} tasks pending, limit "
                    f"{self.settings.max_pending_tasks} (VARCO_MAX_PENDING_TASKS); retry later"
                )
            self.pending_tasks += tasks
        self.metrics.tasks_admitted.inc(tasks)
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
        if len(versions) == 1:
            return versions.pop()
        # None running, or some still on the previous release: the one they are moving to.
        current = self._release()[0]
        return current.version if current else self.settings.version

    def _release(self) -> tuple[Release | None, dict[str, str]]:
        """The current model release (None: none published) and why workers could not load it."""
        try:
            return self.releases.current(), self.releases.load_errors()
        except ReleaseError as error:
            log.warning("%s", error)
            return None, {}

    def setup(self, project: str | None, schema: str | None, extra_params: Any) -> dict[str, Any]:
        try:
            extra = parse_extra_params(extra_params)
            if schema:  # refuse an unusable config or extra_params now, where the user connects
                Policy.resolve(self.settings, self._config(schema), extra)
        except PolicyError as error:
            raise BadRequest(str(error)) from error
        with self._lock:
            self._extra_params[_project_id(project)] = extra
        self._register(_project_id(project), schema)
        return {"model_version": self.model_version}

    def _register(self, project: str, schema: str | None) -> None:
        """Note in the feedback store that this backend serves the project: only such a
        project's annotations are read back from its webhooks. Label Studio calls /setup before
        every batch, so the store is written only when the project or its config is new."""
        if self.feedback is None or not project.isdigit() or self._served.get(project) == schema:
            return
        self.feedback.register_project(int(project), label_config=schema)
        self._served[project] = schema

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
        try:
            policy = self.policy(project, label_config)
        except BadRequest:
            self.metrics.tasks_refused.labels("invalid").inc(len(tasks))
            raise
        works, results = self._plan(tasks, policy, _project_id(project), context)
        wait = self.settings.predict_deadline if deadline is None else deadline
        # Someone waits in the editor for the answer about what they drew: it goes first.
        interactive = bool((context or {}).get("result"))
        priority = Priority.HIGH if interactive else Priority.NORMAL
        outputs = self.dispatcher.run([w.item for w in works], wait, priority) if works else []
        converted: list[Converted] = []
        for work, output in zip(works, outputs, strict=True):
            results[work.task_index] = self._prediction(work, output, policy, converted)
        self._record(converted)
        return {"results": results}

    def health(self) -> dict[str, Any]:
        queue = self.dispatcher.status()
        workers = self.dispatcher.model_versions()
        current, errors = self._release()
        healthy = queue.get("redis", "ok") == "ok"
        return {
            "status": "UP" if healthy else "DEGRADED",
            "model_class": "VarcoVision",
            "model_version": self.model_version,
            "worker_versions": workers,
            "release": {
                "current": current.to_json() if current else None,
                # A worker that could not load the current release runs its previous model.
                "load_errors": {name: why for name, why in errors.items() if name in workers},
            },
            "mode": "embedded" if self.settings.embedded else "queue",
            "queue": queue,
            "tasks": dict(self.counters),
            "pending_tasks": self.pending_tasks,
            # Prelabel runs under way (recorded in Redis: none in the embedded mode).
            "prelabel_runs": active_runs(self.dispatcher.redis)
            if isinstance(self.dispatcher, RQDispatcher)
            else [],
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
        results: list[Any] = [[] for _ in tasks]
        works: list[_Work] = []
        for index, task in enumerate(tasks):
            drawn = self._drawn(context, policy.config, project, task)
            key = f"{index}:{task.get('id')}"
            data = task.get("data") or {}
            number = int(project) if project.isdigit() else None  # Label Studio's are numbers
            record = {"task_id": task.get("id"), "project": number}
            try:
                if drawn.rectangle is not None:
                    box = box_from_rectangle(
                        drawn.rectangle["value"],
                        drawn.rectangle.get("original_width"),
                        drawn.rectangle.get("original_height"),
                    )
                    prompt = policy.referring_prompt(box)
                    item = policy.item(
                        key, data, task=Task.REFERRING.value, prompt=prompt, task_id=task.get("id")
                    )
                    works.append(_Work(index, item, drawn.rectangle))
                elif drawn.phrase is not None:
                    prompt = PHRASE_PROMPT.format(phrase=drawn.phrase)
                    grounding = Task.GROUNDING.value
                    item = policy.item(key, data, task=grounding, prompt=prompt, **record)
                    works.append(_Work(index, item))
                elif policy.config.referring and not self._bulk_asked(project):
                    # A referring project: opening a task asks nothing; drawn regions do.
                    self._count("not_prelabelled")
                else:
                    works.append(_Work(index, policy.item(key, data, **record)))
            except PolicyError as error:
                self.metrics.tasks_refused.labels("policy").inc()
                self._problem(f"task {task.get('id')}: {error}")
        return works, results

    def _bulk_asked(self, project: str) -> bool:
        """Whether the project (extra_params) or the backend (VARCO_TASK) names a task."""
        extra = self._extra_params.get(project) or {}
        return bool(extra.get("task") or self.settings.default_task)

    def _drawn(
        self,
        context: dict[str, Any] | None,
        config: LabelConfig,
        project: str,
        task: Mapping[str, Any],
    ) -> _Drawn:
        """What the user just drew or typed in ``task``; the region is remembered as answered,
        so that the next call, which may list it again, tells the next new region from it."""
        if not context:
            return _Drawn()
        key = (project, str(task.get("id")))
        with self._lock:
            answered = set(self._answered.get(key, ()))
        drawn = drawn_regions(context, config, task, answered)
        if drawn.rectangle is not None and drawn.rectangle.get("id") is not None:
            with self._lock:
                self._answered.setdefault(key, set()).add(str(drawn.rectangle["id"]))
                self._answered.move_to_end(key)
                while len(self._answered) > ANSWERED_MEMORY:
                    self._answered.popitem(last=False)
        return drawn

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
                # Not recorded in the feedback store: one region's answer would pass for the
                # task's pre-label when its annotation is paired; the annotation is recorded.
                width, height = output["width"], output["height"]
                labels = work.item.get("labels", policy.config.labels)
                region, note = answer_region(work.drawn, output["raw"], policy.config, labels)
                log.debug("asked %r about region %s: %r", work.item["prompt"], region.id, region)
                prediction = prediction_from_regions(
                    [region], policy.config, width, height, output["model_version"]
                )
                if note:  # the editor shows a region's meta text: say why nothing changed
                    for item in prediction["result"]:
                        item["meta"] = {"text": [note]}
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


_BOX_TYPES = ("rectanglelabels", "rectangle")
_GEOMETRY = {"x", "y", "width", "height"}


def drawn_regions(
    context: Mapping[str, Any] | None,
    config: LabelConfig,
    task: Mapping[str, Any] | None = None,
    answered: set[str] | frozenset[str] = frozenset(),
) -> _Drawn:
    """What the user just drew or typed, from ``params.context.result`` of an interactive call.

    Label Studio may list every region of the task there, in any order. The drawn one is the
    rectangle that is not saved in the task (its annotations, drafts or predictions) and was not
    answered before (``answered``: region ids); when several are left, the last listed.
    """
    drawn = _Drawn()
    rectangles: list[dict[str, Any]] = []
    for result in (context or {}).get("result") or []:
        if not isinstance(result, dict) or not isinstance(result.get("value"), dict):
            continue
        kind, value = result.get("type"), result["value"]
        if kind in _BOX_TYPES and set(value) >= _GEOMETRY:
            rectangles.append(result)
        elif kind == "textarea" and result.get("from_name") == config.prompt_control:
            text = " ".join(str(t) for t in value.get("text") or []).strip()
            drawn.phrase = text or None
    saved = _saved_region_ids(task or {})
    log.debug(
        "interactive call: rectangles %s, saved %s, answered %s, phrase %r",
        [r.get("id") for r in rectangles],
        sorted(saved),
        sorted(answered),
        drawn.phrase,
    )
    new = [r for r in rectangles if str(r.get("id")) not in saved]
    unanswered = [r for r in new if str(r.get("id")) not in answered]
    candidates = unanswered or new or rectangles
    if len(candidates) > 1:
        log.info("%d new regions in an interactive call: asking about the last", len(candidates))
    drawn.rectangle = candidates[-1] if candidates else None
    return drawn


def _saved_region_ids(task: Mapping[str, Any]) -> set[str]:
    """Ids of the regions the task already holds: in its annotations, drafts and predictions."""
    ids: set[str] = set()
    for key in ("annotations", "drafts", "predictions"):
        for saved in task.get(key) or []:
            if not isinstance(saved, Mapping):
                continue
            for result in saved.get("result") or []:
                if isinstance(result, Mapping) and result.get("id") is not None:
                    ids.add(str(result["id"]))
    return ids


def answer_region(
    drawn: Mapping[str, Any], raw: str, config: LabelConfig, labels: tuple[str, ...]
) -> tuple[Region, str | None]:
    """The drawn region itself (same id, the label the user chose) with the model's answer as
    clean text, and a note for the editor when the answer changed nothing visible.

    With a per-region TextArea the answer becomes the region's text. Without one, an answer that
    names a label ("a small grey cat") gives the region that label; one that names none leaves
    the user's label and comes back as the note. A fallback label never replaces a chosen one.
    """
    value = drawn["value"]
    chosen = value.get("rectanglelabels") or value.get("labels") or []
    label = str(chosen[0]) if chosen else None
    box = box_from_rectangle(value, drawn.get("original_width"), drawn.get("original_height"))
    text = answer_text(raw)
    region_id = drawn.get("id")
    if not text:
        return Region(box=box, label=label, id=region_id), "VARCO-VISION gave no answer"
    if config.text_control:
        return Region(box=box, label=label, text=text, id=region_id), None
    named = LabelMapper(labels, config.aliases).label_for(text)
    if named is not None:
        return Region(box=box, label=named, id=region_id), None
    return Region(box=box, label=label, id=region_id), f"VARCO-VISION: {text} (names no label)"


def _project_id(project: str | int | None) -> str:
    """Label Studio sends "ID.TIMESTAMP"; options belong to the project ID."""
    return str(project or "").split(".")[0]
