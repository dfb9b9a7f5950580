"""The active-learning loop: rounds of retraining on a project's corrections.

A round, each step written down before the next begins (``loop_records``), so a crash resumes it
where it stopped:

1. **start**: once the store holds ``every`` corrections of the project newer than the last
   round's, the corrected tasks not yet assigned are split into train and held out
   (``loop_split``; a held-out task never trains);
2. **train**: the train part is exported (``trl-sft`` by default) and a candidate trained from the
   serving model (the current release, else the configured model) into
   ``MODEL_DIR/loop/<project>/<round>/``;
3. **evaluate**: the serving model and the candidate answer the held-out tasks and are scored
   against the human answers (:func:`score_of`); the candidate is promoted only when it is better
   by ``min_gain`` (never when worse or equal);
4. **publish**: the candidate becomes the current release (``releases``): the workers, or the
   embedded backend, load it between jobs;
5. **re-label** (``loop_relabel``): tasks nobody annotated get the new version's pre-labels,
   Label Studio shows that version, and the least certain come first.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from varco_labeler.feedback.export import export, in_reading_order
from varco_labeler.feedback.loop_records import Decision, LoopRecords, RoundRecord, State
from varco_labeler.feedback.loop_split import assign
from varco_labeler.feedback.pairing import Example
from varco_labeler.feedback.sources import examples_from_store
from varco_labeler.feedback.store import FeedbackStore
from varco_labeler.labelstudio.images import ImageFetcher, cloud_reference
from varco_labeler.releases import Release, ReleaseChannel, release_settings
from varco_labeler.settings import Settings

log = logging.getLogger(__name__)

LOOP_DIR = "loop"
_EXPORT_FORMAT = {"sft": "trl-sft", "dpo": "trl-dpo"}


class LoopError(RuntimeError):
    """A round cannot go on; the message says why (it is recorded with the round)."""


@dataclass(frozen=True)
class LoopOptions:
    """How rounds are run. ``train`` holds options of :func:`feedback.train.train` (LoRA by
    default: ``lora``, ``max_steps``, ``learning_rate``, ``batch_size``, ...)."""

    every: int = 50
    min_gain: float = 0.01
    held_out_share: float = 0.2
    method: str = "sft"
    train: dict[str, Any] = field(default_factory=dict)
    eval_batch_size: int = 8
    relabel: bool = True

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError("--every must be at least 1")
        if self.min_gain < 0:
            raise ValueError("--min-gain cannot be negative: the loop never promotes a worse model")
        if not 0.0 < self.held_out_share < 1.0:
            raise ValueError("--held-out-share must be between 0 and 1")
        if self.method not in _EXPORT_FORMAT:
            raise ValueError(f"unknown method {self.method!r}; choose sft or dpo")


def score_of(figures: dict[str, Any]) -> float:
    """One number to compare models on held-out tasks: box F1 at IoU 0.5 (micro over labels);
    with OCR pages, its mean with 1 - CER (a page's text counts as much as its boxes)."""
    f1 = float((figures.get("micro") or {}).get("f1") or 0.0)
    ocr = figures.get("ocr") or {}
    if ocr.get("pages") and ocr.get("cer") is not None:
        return (f1 + max(0.0, 1.0 - float(ocr["cer"]))) / 2
    return f1


def promotes(serving: float, candidate: float, min_gain: float) -> bool:
    """Better by at least the margin, and better at all (a zero margin never promotes a tie)."""
    gain = candidate - serving
    return gain > 0 and gain >= min_gain


class RoundRunner:
    """Runs a project's rounds on one feedback store and one release channel.

    ``label_studio``: sync the store from Label Studio before counting, and re-label after a
    promotion (needs LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY); without it the store is taken as
    it is and nothing is re-labelled. ``on_state`` is called with the round after every step.
    """

    def __init__(
        self,
        settings: Settings,
        store: FeedbackStore,
        project: int,
        options: LoopOptions,
        *,
        label_studio: bool = True,
        channel: ReleaseChannel | None = None,
        on_state: Callable[[RoundRecord], None] | None = None,
    ) -> None:
        if settings.openai_url:
            raise LoopError(
                "the loop trains and scores models in its own process with transformers: "
                "unset VARCO_OPENAI_URL for it"
            )
        self.settings, self.store, self.project, self.options = settings, store, project, options
        self.records = LoopRecords(store)
        self.channel = channel or ReleaseChannel.for_settings(settings)
        self.label_studio = label_studio
        self.on_state = on_state or (lambda _round: None)

    # -- the public steps ----------------------------------------------------------------------
    def serving(self) -> Release:
        """The release the workers run: the channel's current one, else the configured model."""
        return self.channel.current() or Release.new(
            self.settings.model, self.settings.version, "the configured model (VARCO_MODEL)"
        )

    def pending(self) -> int:
        """Corrections in the store newer than the last round's."""
        since = self.records.counted_until(self.project)
        return self.records.corrections(self.project, since)[0]

    def run_once(self, *, force: bool = False) -> RoundRecord | None:
        """Resume the round a crash left unfinished, or start one when enough corrections came
        (``force``: whatever their number, if there is any). None: nothing to do (paused, or too
        few corrections)."""
        if self.records.paused(self.project):
            log.info("project %d: the loop is paused", self.project)
            return None
        unfinished = self.records.unfinished(self.project)
        if unfinished is not None:
            trained = unfinished.state in (State.TRAINED, State.EVALUATED)
            if not trained or Path(unfinished.candidate_model or "").is_dir():
                log.warning("project %d: resuming round %d at %s", *self._where(unfinished))
                return self._carry_on(unfinished)
            log.warning(
                "project %d: round %d discarded: its candidate is gone",
                self.project,
                unfinished.number,
            )
            self.records.advance(unfinished.id, State.DISCARDED, error="its candidate is gone")
        if self.label_studio:
            self._sync()
        since = self.records.counted_until(self.project)
        new, newest = self.records.corrections(self.project, since)
        if new < (1 if force else self.options.every):
            log.info(
                "project %d: %d new correction(s), a round needs %d",
                self.project,
                new,
                self.options.every,
            )
            return None
        return self._carry_on(self._start(new, newest))

    # -- steps -----------------------------------------------------------------------------
    def _carry_on(self, round_: RoundRecord) -> RoundRecord:
        steps = {
            State.STARTED: self._train,
            State.TRAINED: self._evaluate,
            State.EVALUATED: self._publish,
            State.PUBLISHED: self._relabel,
        }
        try:
            while not round_.finished:
                round_ = steps[round_.state](round_)
                self.on_state(round_)
        except Exception as error:
            log.exception("project %d: round %d failed at %s", *self._where(round_))
            round_ = self.records.advance(round_.id, State.FAILED, error=_describe(error))
            self.on_state(round_)
        return round_

    def _start(self, new: int, newest: Any) -> RoundRecord:
        examples = self._examples()
        images = {e.task_id: e.image for e in examples if e.task_id is not None}
        assigned = self.records.split(self.project)
        split = assign(images, assigned, self.options.held_out_share)
        sides = {**assigned, **split}
        held_out = sum(1 for task in images if sides.get(task))
        serving = self.serving()
        details = {
            "data": {
                "new_corrections": new,
                "corrected_tasks": len(images),
                "train_tasks": len(images) - held_out,
                "held_out_tasks": held_out,
                "newly_assigned": len(split),
            },
            "base": {"version": serving.version, "model": serving.model},
            "options": asdict(self.options),
        }
        round_ = self.records.start_round(
            self.project,
            data_until=newest,
            serving_version=serving.version,
            details=details,
            split=split,
        )
        log.info(
            "project %d: round %d started on %d corrected task(s) (%d held out)",
            self.project,
            round_.number,
            len(images),
            held_out,
        )
        self.on_state(round_)
        return round_

    def _train(self, round_: RoundRecord) -> RoundRecord:
        from varco_labeler.feedback.train import train  # the train extra: torch, trl, peft

        started = time.monotonic()
        base = round_.details["base"]
        out = self.round_dir(round_)
        if out.exists():  # what a crash left of an earlier try: train again from nothing
            shutil.rmtree(out)
        examples = self._side(round_, held_out=False)
        if not examples:
            raise LoopError("no corrected task is on the training side yet")
        fmt = _EXPORT_FORMAT[self.options.method]
        with closing(ImageFetcher.from_settings(self.settings)) as images:
            exported = export(examples, fmt, out / "data", val_fraction=0.0, images=images)
        if not exported["written"]["train"]:
            raise LoopError(f"nothing to train on: {fmt} export skipped {exported['skipped']}")
        version = f"{self.settings.version}+loop{self.project}.{round_.number}"
        summary = train(
            out / "data",
            base["model"],
            out,
            method=self.options.method,
            model_version=version,
            evaluate=False,
            **self.options.train,
        )
        details = {
            "train": {
                "examples": summary.train_examples,
                "skipped": exported["skipped"],
                "steps": summary.steps,
                "train_loss": summary.train_loss,
                "lora": summary.lora,
                "seconds": summary.seconds,
            },
            "timings": {"train": round(time.monotonic() - started, 2)},
        }
        return self.records.advance(
            round_.id,
            State.TRAINED,
            details,
            candidate_version=summary.model_version,
            candidate_model=summary.model_dir,
        )

    def _evaluate(self, round_: RoundRecord) -> RoundRecord:
        from varco_labeler.engine.load import load_engine
        from varco_labeler.feedback.evaluate import Item, evaluate_engine

        started = time.monotonic()
        assert round_.candidate_model and round_.candidate_version
        if not Path(round_.candidate_model).is_dir():
            raise LoopError(f"the candidate model {round_.candidate_model} is gone")
        examples = self._side(round_, held_out=True)
        if not examples:
            raise LoopError("no held-out task to judge the candidate on")
        with closing(ImageFetcher.from_settings(self.settings)) as images:
            items = [
                Item(images.read_bytes(cloud_reference(e.image, e.task_id)), in_reading_order(e))
                for e in examples
            ]
        serving = self.serving()
        candidate = Release.new(round_.candidate_model, round_.candidate_version)
        figures = {}
        for name, release in (("serving", serving), ("candidate", candidate)):
            engine = load_engine(release_settings(self.settings, release))
            result = evaluate_engine(
                engine, items, batch_size=self.options.eval_batch_size, progress=False
            )
            del engine  # one model in memory at a time
            result.pop("worst_tasks")
            figures[name] = {"score": score_of(result), **result}
        old, new = figures["serving"]["score"], figures["candidate"]["score"]
        decision = Decision.PROMOTE if promotes(old, new, self.options.min_gain) else None
        log.info(
            "project %d: round %d: %s %.3f, candidate %s %.3f on %d held-out task(s): %s",
            self.project,
            round_.number,
            serving.version,
            old,
            candidate.version,
            new,
            len(items),
            "promote" if decision else "keep the serving model",
        )
        details = {
            "evaluation": {
                "held_out": len(items),
                "gain": new - old,
                "min_gain": self.options.min_gain,
                **figures,
            },
            "timings": {
                **round_.details.get("timings", {}),
                "evaluate": round(time.monotonic() - started, 2),
            },
        }
        if decision is None:
            return self.records.advance(
                round_.id,
                State.DONE,
                details,
                decision=Decision.REJECTED,
                serving_version=serving.version,
                serving_score=old,
                candidate_score=new,
            )
        return self.records.advance(
            round_.id,
            State.EVALUATED,
            details,
            decision=decision,
            serving_version=serving.version,
            serving_score=old,
            candidate_score=new,
        )

    def _publish(self, round_: RoundRecord) -> RoundRecord:
        assert round_.candidate_model and round_.candidate_version
        current = self.channel.current()
        if current is None:
            # The configured model goes on record first, so that it can be rolled back to.
            self.channel.publish(self.serving())
            current = self.channel.current()
        if current is None or current.version != round_.candidate_version:
            note = (
                f"loop round {round_.number} of project {self.project}: held-out score "
                f"{round_.serving_score:.3f} -> {round_.candidate_score:.3f}"
            )
            self.channel.publish(
                Release.new(round_.candidate_model, round_.candidate_version, note)
            )
        return self.records.advance(round_.id, State.PUBLISHED, decision=Decision.PROMOTED)

    def _relabel(self, round_: RoundRecord) -> RoundRecord:
        if not (self.label_studio and self.options.relabel):
            return self.records.advance(round_.id, State.DONE, {"relabel": {"skipped": True}})
        from varco_labeler.feedback.loop_relabel import relabel

        started = time.monotonic()
        release = self.channel.current()
        if release is None or release.version != round_.candidate_version:
            raise LoopError(
                f"the current release is {release.version if release else None}, not this "
                "round's candidate (a rollback came first): nothing re-labelled"
            )
        outcome = relabel(self.settings, self.project, release, self.store)
        details = {
            "relabel": outcome,
            "timings": {
                **round_.details.get("timings", {}),
                "relabel": round(time.monotonic() - started, 2),
            },
        }
        return self.records.advance(round_.id, State.DONE, details)

    # -- data --------------------------------------------------------------------------------
    def round_dir(self, round_: RoundRecord) -> Path:
        return Path(self.settings.model_dir) / LOOP_DIR / str(self.project) / str(round_.number)

    def _examples(self) -> list[Example]:
        """The project's corrected tasks, one example each (its latest human answer)."""
        return [e for e in examples_from_store(self.store, self.project) if e.task_id is not None]

    def _side(self, round_: RoundRecord, *, held_out: bool) -> list[Example]:
        """The examples of one side of the split as this round assigned it."""
        assert round_.number is not None
        sides = self.records.split(self.project, up_to_round=round_.number)
        return [e for e in self._examples() if sides.get(e.task_id) is held_out]

    def _sync(self) -> None:
        from varco_labeler.feedback.sync import sync_project
        from varco_labeler.labelstudio.client import LabelStudioClient
        from varco_labeler.settings import reveal

        url, key = self.settings.label_studio_url, reveal(self.settings.label_studio_api_key)
        if not (url and key):
            raise LoopError("set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY")
        with LabelStudioClient(url, key) as client:
            sync_project(self.store, client, self.project)

    def _where(self, round_: RoundRecord) -> tuple[int, int | None, str]:
        return self.project, round_.number, round_.state


def _describe(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"
