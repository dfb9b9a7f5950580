"""A project's policy: how its tasks are pre-labelled, decided once and carried as data.

Resolved from the label config, the project's ``extra_params`` (Label Studio's model settings)
and the environment, in one place; every path that makes a prediction uses it: ``/predict``
(batch and interactive), ``prelabel --project`` and ``--images``, ``convert`` and ``predict``.
A policy travels with a prelabel job as JSON, so a worker never decides policy: it runs the
model, post-processes with the checkpoint's profile, and converts regions as the policy says.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from varco_labeler.labelstudio.config import LabelConfig, LabelConfigError, labels_from_task
from varco_labeler.labelstudio.images import cloud_reference
from varco_labeler.labelstudio.labels import LabelMapper
from varco_labeler.labelstudio.predictions import Conversion, conversion_from_regions
from varco_labeler.regions import ParserNotes, Region
from varco_labeler.varco import Box, Task, prompt_for, referring_prompt
from varco_labeler.varco.prompts import grounding_prompt

if TYPE_CHECKING:
    from varco_labeler.settings import Settings

# The keys users may type into the model's "Extra params" in Label Studio.
EXTRA_PARAMS = ("task", "prompt", "question", "fallback_label", "ocr_label", "min_score")
# What a rectangle drawn in the editor is asked, by the project's task.
DEFAULT_QUESTIONS = {
    Task.GROUNDING: "Describe {region} in detail.",
    Task.OCR: "What text is written in {region}? Answer with the text only.",
}
PHRASE_PROMPT = "<gro>\nFind {phrase} in the image."
# Tasks a project can be pre-labelled with (the others need a region or a question).
BULK_TASKS = (Task.GROUNDING, Task.OCR)


class PolicyError(ValueError):
    """The settings cannot make a policy; the message says which and why."""


def agreed_version(own: str, explicit: bool, workers: Mapping[str, str]) -> str:
    """The model version a run on the queue will get: the workers' own.

    Workers that run different versions, or a version other than the one this process was
    explicitly told (``explicit``: VARCO_MODEL, --model or VARCO_MODEL_VERSION given), are refused
    with a message naming both: skipping by one version while workers push another duplicates.
    """
    versions = sorted(set(workers.values()))
    if not versions:
        return own
    if len(versions) > 1:
        running = ", ".join(f"{name}: {version}" for name, version in sorted(workers.items()))
        raise PolicyError(
            f"the workers run different model versions ({running}); stop the odd ones"
        )
    if explicit and versions[0] != own:
        raise PolicyError(
            f"this command would pre-label as {own!r} but the workers run {versions[0]!r}; "
            "give the workers' model (or VARCO_MODEL_VERSION), or unset VARCO_MODEL here"
        )
    return versions[0]


def parse_extra_params(extra: Any) -> dict[str, Any]:
    """Label Studio's ``extra_params`` (a JSON object, or its text) checked key by key."""
    if extra in (None, "", {}):
        return {}
    if isinstance(extra, str):
        try:
            extra = json.loads(extra)
        except json.JSONDecodeError as error:
            raise PolicyError(f"extra_params is not valid JSON: {error}") from error
    if not isinstance(extra, dict):
        raise PolicyError("extra_params must be a JSON object")
    unknown = set(extra) - set(EXTRA_PARAMS)
    if unknown:
        raise PolicyError(f"extra_params has unknown keys {sorted(unknown)}; known: {EXTRA_PARAMS}")
    task = extra.get("task") or None
    if task is not None and task not in BULK_TASKS:
        raise PolicyError(f'extra_params "task" must be "grounding" or "ocr", got {task!r}')
    for key in ("prompt", "question", "fallback_label", "ocr_label"):
        if extra.get(key) is not None and not isinstance(extra[key], str):
            raise PolicyError(f'extra_params "{key}" must be a string')
    try:
        min_score = float(extra.get("min_score") or 0.0)
    except (TypeError, ValueError):
        raise PolicyError('extra_params "min_score" must be a number') from None
    if not 0.0 <= min_score <= 1.0:
        raise PolicyError(f'extra_params "min_score" must be between 0 and 1, got {min_score}')
    return {**extra, "task": task, "min_score": min_score}


@dataclass(frozen=True)
class Policy:
    """How a project's tasks are pre-labelled.

    ``task`` and ``prompt``: what the model is asked when nobody drew anything. ``config``: where
    regions go in Label Studio (None for ``predict``, which writes no Label Studio JSON).
    ``fallback_label``, ``ocr_label``, ``min_score``: how regions are labelled and filtered.
    ``question``: what a drawn rectangle is asked. ``model_version``: what predictions carry.
    """

    task: Task
    prompt: str
    model_version: str
    config: LabelConfig | None = None
    fallback_label: str | None = None
    ocr_label: str | None = None
    min_score: float = 0.0
    question: str | None = None

    @classmethod
    def resolve(
        cls,
        settings: Settings,
        config: LabelConfig | None = None,
        extra_params: Any = None,
        *,
        version: str | None = None,
        task: Task | str | None = None,
        prompt: str | None = None,
    ) -> Policy:
        """Decide once. The task: ``task`` (a command's flag), else ``extra_params``' task, else
        VARCO_TASK, else what the label config implies (OCR with a per-region TextArea).
        ``version`` replaces the settings' model version (the workers' agreed one)."""
        options = parse_extra_params(extra_params)
        kind = Task(
            task
            or options.get("task")
            or settings.default_task
            or (config.default_task if config else Task.GROUNDING)
        )
        instruction = (options.get("prompt") or "").strip()
        if instruction and kind is not Task.GROUNDING:
            raise PolicyError(
                f'extra_params "prompt" words the grounding request; this project runs {kind} '
                "(its prompt is fixed by the model)"
            )
        policy = cls(
            task=kind,
            prompt=prompt or (grounding_prompt(instruction) if instruction else prompt_for(kind)),
            model_version=version or settings.version,
            config=config,
            fallback_label=options.get("fallback_label"),
            ocr_label=options.get("ocr_label"),
            min_score=options.get("min_score", 0.0),
            question=options.get("question"),
        )
        if config is not None and config.labels_data_key is None:
            policy.mapper(config.labels)  # a fallback or OCR label the config lacks: say so now
        return policy

    # -- as data ---------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        if self.config is not None:
            data["config"] = {**data["config"], "aliases": dict(self.config.aliases)}
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Policy:
        config = data.get("config")
        if config is not None:
            config = LabelConfig(**{**config, "labels": tuple(config["labels"])})
        return cls(**{**data, "task": Task(data["task"]), "config": config})

    # -- per task --------------------------------------------------------------------------
    def labels_for(self, data: Mapping[str, Any]) -> tuple[str, ...]:
        """The labels a task offers (the task's own list for dynamic labels)."""
        if self.config is None:
            return ()
        try:
            return labels_from_task(self.config, data)
        except LabelConfigError as error:
            raise PolicyError(str(error)) from error

    def mapper(self, labels: Sequence[str]) -> LabelMapper:
        aliases = self.config.aliases if self.config else {}
        try:
            return LabelMapper(labels, aliases, self.fallback_label, self.ocr_label)
        except ValueError as error:
            raise PolicyError(f"extra_params: {error}") from error

    def image_of(self, data: Mapping[str, Any]) -> str:
        """The task's image reference, from the field the label config names."""
        key = self.config.data_key if self.config else "image"
        image = data.get(key)
        if not isinstance(image, str) or not image:
            raise PolicyError(f"no image in data[{key!r}]")
        return image

    def item(self, key: str, data: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
        """A job item for one task: what to ask about which image, and its labels when the task
        brings its own. Raises :class:`PolicyError` for a task that cannot be pre-labelled."""
        # A cloud URI is fetched through Label Studio's resolver for its task.
        image = cloud_reference(self.image_of(data), extra.get("task_id"))
        item = {"key": key, "image": image, "task": self.task.value}
        item |= {"prompt": self.prompt, **extra}
        if self.config is not None and self.config.labels_data_key is not None:
            item["labels"] = list(self.labels_for(data))
        return item

    def referring_prompt(self, box: Box) -> str:
        """What a rectangle drawn in the editor is asked."""
        question = self.question or DEFAULT_QUESTIONS.get(self.task, DEFAULT_QUESTIONS[Task.OCR])
        return referring_prompt(box, question)

    def convert(
        self,
        output: Mapping[str, Any],
        *,
        labels: Sequence[str] | None = None,
        task: Task | None = None,
        seed: str = "",
    ) -> Conversion:
        """A job output (regions after the checkpoint's post-processing) as a Label Studio
        prediction: labelled, filtered by ``min_score``, stamped with the version that ran."""
        if self.config is None:
            raise PolicyError("converting to Label Studio needs a label config")
        return conversion_from_regions(
            [Region.from_json(region) for region in output["regions"]],
            task or self.task,
            self.config,
            self.mapper(self.config.labels if labels is None else labels),
            output["width"],
            output["height"],
            output["model_version"],
            min_score=self.min_score,
            seed=seed,
            notes=ParserNotes(**output.get("notes") or {}),
        )
