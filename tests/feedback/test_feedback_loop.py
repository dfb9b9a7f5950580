"""The active-learning loop's rounds on the tiny model, without Label Studio: the store is fed as
the backend feeds it (predictions recorded, annotation webhooks), the rounds train, judge on the
held-out tasks, promote or not, survive a crash at any step, pause, and roll back.

The model is taught a systematic mistake on reds (a cat boxed at 0.6, 0.6, 0.9, 0.9 where it sits
at 0.1, 0.2, 0.5, 0.9); annotators move every cat. Every task is red, so whichever tasks the
split holds out, the serving model is wrong on them and a candidate can only win by learning.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from helpers import CATS_CONFIG, labelstudio_fixture

from varco_labeler.cli import main
from varco_labeler.feedback.commands import run_report
from varco_labeler.feedback.loop_records import Decision, LoopRecords, State
from varco_labeler.feedback.loop_split import assign
from varco_labeler.feedback.store import FeedbackStore
from varco_labeler.labelstudio import read_label_config
from varco_labeler.labelstudio.results import regions_to_results
from varco_labeler.regions import Region
from varco_labeler.settings import Settings
from varco_labeler.varco import Box, Task, prompt_for

CONFIG = read_label_config(CATS_CONFIG)
GROUNDING = prompt_for(Task.GROUNDING)
WRONG_CAT = "A <obj>red cat</obj><bbox>0.6, 0.6, 0.9, 0.9</bbox> sits."
CAT = Region(Box(0.1, 0.2, 0.5, 0.9), label="Cat")
REDS = [(220 - 3 * i, 20 + 2 * i, 30 + (i % 3) * 5) for i in range(10)]
PROJECT = 1
SERVING = "tiny-wrong"
# LoRA as the closed-loop test trains it (right on tiny-model seeds 0-5, with a margin).
TRAIN = {
    "lora": True,
    "max_steps": 160,
    "learning_rate": 5e-3,
    "batch_size": 2,
    "gradient_accumulation": 1,
}


# -- the split (no model) ------------------------------------------------------------------------
def test_the_split_grows_with_the_corrections_and_never_moves_a_task() -> None:
    first = assign({t: f"img-{t}" for t in range(10)}, {}, 0.2)
    assert sum(first.values()) == 2 and len(first) == 10
    assert assign({t: f"img-{t}" for t in range(10)}, {}, 0.2) == first  # deterministic
    images = {t: f"img-{t}" for t in range(30)}
    second = assign(images, first, 0.2)
    assert set(second) == set(range(10, 30))  # the first ten keep their sides
    assert sum(first.values()) + sum(second.values()) == 6  # 20% of 30: it grew
    # A task showing an image already held out is held out too, whatever the share.
    third = assign(
        {**images, 99: "img-" + str(next(t for t, h in first.items() if h))}, first | second, 0.01
    )
    assert third == {99: True}
    with pytest.raises(ValueError, match="between 0 and 1"):
        assign(images, {}, 0.0)


# -- rounds on the tiny model ----------------------------------------------------------------------
pytest.importorskip("trl", reason="the loop trains: it needs the train extra (trl, peft)")
pytest.importorskip("torch")

from varco_labeler.engine.base import Request  # noqa: E402  (torch: after the skips)
from varco_labeler.engine.tiny import RED, Lesson, build_tiny_model, solid_image  # noqa: E402
from varco_labeler.engine.transformers_engine import TransformersEngine  # noqa: E402
from varco_labeler.feedback.loop import LoopOptions, RoundRunner  # noqa: E402
from varco_labeler.jobs import convert_one  # noqa: E402
from varco_labeler.policy import Policy  # noqa: E402
from varco_labeler.releases import ReleaseChannel  # noqa: E402


@pytest.fixture(scope="module")
def wrong_model(single_thread_torch: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    lessons = [Lesson(RED, GROUNDING, WRONG_CAT), Lesson((200, 45, 35), GROUNDING, WRONG_CAT)]
    return build_tiny_model(tmp_path_factory.mktemp("wrong"), lessons=lessons, teaching_steps=60)


@pytest.fixture
def settings(wrong_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """A store holding the wrong model's pre-label and a moved cat for every red task."""
    images = tmp_path / "images"
    images.mkdir()
    settings = Settings(
        model=str(wrong_model),
        model_version=SERVING,
        model_dir=tmp_path / "model-dir",
        local_image_roots=(images,),
    )
    for name, value in (("VARCO_MODEL", str(wrong_model)), ("VARCO_MODEL_VERSION", SERVING)):
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MODEL_DIR", str(settings.model_dir))
    engine = TransformersEngine(wrong_model, device="cpu", model_version=SERVING)
    policy = Policy.resolve(settings, CONFIG, version=SERVING)
    store = FeedbackStore(model_dir=settings.model_dir)
    try:
        for task_id, colour in enumerate(REDS, 1):
            path = images / f"task-{task_id}.png"
            solid_image(colour).save(path)
            (result,) = engine.generate([Request(solid_image(colour), policy.prompt, policy.task)])
            item = policy.item(str(task_id), {"image": str(path)}, task_id=task_id, project=1)
            size = {"width": 48, "height": 40, "model_version": SERVING}
            store.record_predictions([convert_one(policy, item, size | result.to_json()).record])
            move_the_cat(store, task_id, path)
    finally:
        store.close()
    return settings


def move_the_cat(store: FeedbackStore, task_id: int, image: Path) -> None:
    """The annotation webhook of an annotator who moved the cat where it sits, now."""
    body = labelstudio_fixture("webhook_annotation_created")
    body["project"].update(id=PROJECT, label_config=CATS_CONFIG)
    body["task"].update(id=task_id, project=PROJECT, data={"image": str(image)})
    now = datetime.now(UTC).isoformat()
    moved = regions_to_results([CAT], CONFIG, 48, 40, seed=f"human-{task_id}")
    body["annotation"].update(
        id=task_id, task=task_id, project=PROJECT, result=moved, created_at=now, updated_at=now
    )
    store.append(body)


def runner(settings: Settings, store: FeedbackStore, **options: object) -> RoundRunner:
    loop = LoopOptions(**{"every": 10, "held_out_share": 0.3, "train": TRAIN, **options})
    return RoundRunner(settings, store, PROJECT, loop, label_studio=False)


def crash_at(state: str):
    """An ``on_state`` that kills the round as a SIGKILL would, right after ``state`` is saved."""

    def hook(round_) -> None:
        if round_.state == state:
            raise KeyboardInterrupt(f"killed at {state}")

    return hook


def content(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_round_trains_on_the_train_side_promotes_resumes_after_a_crash_and_rolls_back(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    store = FeedbackStore(model_dir=settings.model_dir)
    records = LoopRecords(store)
    first = runner(settings, store)
    assert first.pending() == 10
    assert runner(settings, store, every=11).run_once() is None  # too few corrections

    first.on_state = crash_at(State.TRAINED)
    with pytest.raises(KeyboardInterrupt):
        first.run_once()
    (crashed,) = records.rounds(PROJECT)
    assert crashed.state == State.TRAINED and crashed.number == 1
    trained_at = (Path(crashed.candidate_model) / "train_summary.json").stat().st_mtime_ns

    # Restarted: the round resumes at the evaluation, with the candidate it trained.
    done = runner(settings, store).run_once()
    assert done is not None and done.id == crashed.id
    assert (done.state, done.decision) == (State.DONE, Decision.PROMOTED)
    assert (Path(done.candidate_model) / "train_summary.json").stat().st_mtime_ns == trained_at
    assert done.serving_version == SERVING and done.candidate_version == f"{SERVING}+loop1.1"
    assert done.serving_score == 0.0 and done.candidate_score == 1.0
    data = done.details["data"]
    assert (data["train_tasks"], data["held_out_tasks"], data["new_corrections"]) == (7, 3, 10)
    assert done.details["evaluation"]["held_out"] == 3

    # It never trained on a held-out task: no held-out image is in its training data.
    split = records.split(PROJECT)
    assert sorted(split.values()).count(True) == 3 and len(split) == 10
    held_images = {
        content(Path(settings.local_image_roots[0]) / f"task-{t}.png")
        for t, held in split.items()
        if held
    }
    exported = json.loads(
        (Path(done.candidate_model).parent / "data" / "export_summary.json").read_text()
    )
    assert exported["written"] == {"train": 7, "validation": 0}
    import pyarrow.parquet as pq

    rows = pq.read_table(next((Path(done.candidate_model).parent / "data" / "data").glob("*")))
    trained_on = {
        hashlib.sha256(r[0]["bytes"]).hexdigest() for r in rows.column("images").to_pylist()
    }
    assert len(trained_on) == 7 and not trained_on & held_images

    # Published, the configured model on record before it; nothing new to train on now.
    channel = ReleaseChannel.for_settings(settings)
    assert [r.version for r in channel.history()] == [f"{SERVING}+loop1.1", SERVING]
    assert runner(settings, store).run_once() is None and first.pending() == 0

    assert main(["loop", "rollback", SERVING, "--project", str(PROJECT)]) == 0
    assert channel.current().version == SERVING
    assert channel.current().model == settings.model
    capsys.readouterr()
    assert main(["loop", "status", "--project", str(PROJECT), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert [(r["kind"], r["decision"]) for r in status["rounds"]] == [
        ("rollback", Decision.ROLLED_BACK),
        ("round", Decision.PROMOTED),
    ]
    assert status["releases"][0]["version"] == SERVING and status["new_corrections"] == 0
    assert main(["loop", "rollback", "no-such-version"]) == 2
    # ...and in the report.
    report, table = run_report("store", settings=settings, project=PROJECT)
    assert [r["kind"] for r in report["loop_rounds"]] == ["rollback", "round"]
    assert "round 1 " in table and f"{SERVING}+loop1.1 1.000" in table
    store.close()


def test_a_round_cut_short_in_training_trains_again_and_a_candidate_short_of_the_margin_stays_out(
    settings: Settings,
) -> None:
    store = FeedbackStore(model_dir=settings.model_dir)
    records = LoopRecords(store)
    records.set_paused(PROJECT, True, "checking the labels")
    assert runner(settings, store).run_once() is None  # paused: nothing starts
    records.set_paused(PROJECT, False)

    # An impossible margin: whatever the candidate learnt (a short training), it stays out.
    short = {**TRAIN, "max_steps": 20}
    strict = runner(settings, store, min_gain=1.5, train=short)
    strict.on_state = crash_at(State.STARTED)
    with pytest.raises(KeyboardInterrupt):
        strict.run_once()
    (started,) = records.rounds(PROJECT)
    leftover = strict.round_dir(started) / "checkpoints" / "half-written"
    leftover.parent.mkdir(parents=True)
    leftover.write_text("what a killed trainer left")

    done = runner(settings, store, min_gain=1.5, train=short).run_once()
    assert done is not None and done.id == started.id and not leftover.exists()
    assert (done.state, done.decision) == (State.DONE, Decision.REJECTED)
    assert done.details["train"]["steps"] == 20 and done.candidate_score is not None
    assert ReleaseChannel.for_settings(settings).history() == []  # nothing published
    # A rejected round still counts its corrections: the next needs new ones.
    assert runner(settings, store).run_once() is None

    # A round left trained whose candidate was deleted meanwhile is discarded, not resumed, and
    # its corrections go to a new round.
    move_the_cat(store, 1, Path(settings.local_image_roots[0]) / "task-1.png")  # edited again
    again = runner(settings, store, min_gain=1.5, train=short)
    again.on_state = crash_at(State.TRAINED)
    with pytest.raises(KeyboardInterrupt):
        again.run_once(force=True)
    assert again.pending() == 0  # a round in hand counts its corrections
    shutil.rmtree(records.rounds(PROJECT)[0].candidate_model)
    third = runner(settings, store, min_gain=1.5, train=short).run_once(force=True)
    discarded = records.rounds(PROJECT)[1]
    assert (discarded.number, discarded.state) == (2, State.DISCARDED)
    assert third is not None and third.number == 3 and third.decision == Decision.REJECTED
    store.close()
