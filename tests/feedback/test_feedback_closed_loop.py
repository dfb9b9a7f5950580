"""The loop closes, judged honestly: pre-labels -> corrections -> export -> training -> a model
that does better on images it never saw.

A tiny model is taught a systematic mistake on a family of red images (a cat boxed at 0.6, 0.6,
0.9, 0.9 where it sits at 0.1, 0.2, 0.5, 0.9) and a right answer on blue ones (a remote). It
pre-labels six shades of red and three of blue; its predictions are recorded in the feedback
store as the backend records them, and annotators' webhooks move every cat's box and keep the
remotes. The store is exported with a split by image content, the model trained on the training
images, and ``train`` scores the base and the trained model on the held-out images alone: F1
rises there. ``varco-labeler evaluate`` gives the trained model the same figures.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from helpers import CATS_CONFIG, labelstudio_fixture

from varco_labeler.cli import main
from varco_labeler.feedback.commands import run_export, run_report
from varco_labeler.feedback.export import split_of
from varco_labeler.feedback.store import FeedbackStore
from varco_labeler.labelstudio import read_label_config
from varco_labeler.labelstudio.results import regions_to_results
from varco_labeler.regions import Region
from varco_labeler.settings import Settings
from varco_labeler.varco import Box, Task, prompt_for

pytest.importorskip("trl", reason="the training tests need the train extra (trl, peft)")
pytest.importorskip("torch")

# These need torch: imported after the skips.
from varco_labeler.engine.base import Request
from varco_labeler.engine.tiny import BLUE, RED, Lesson, build_tiny_model, solid_image
from varco_labeler.engine.transformers_engine import TransformersEngine
from varco_labeler.feedback.train import train
from varco_labeler.jobs import convert_one
from varco_labeler.policy import Policy

GROUNDING = prompt_for(Task.GROUNDING)
CONFIG = read_label_config(CATS_CONFIG)
WRONG_CAT = "A <obj>red cat</obj><bbox>0.6, 0.6, 0.9, 0.9</bbox> sits."
REMOTE = "<obj>remote</obj><bbox>0.1, 0.1, 0.4, 0.3</bbox>"
# The mistake is taught on three reds (and the remote on one blue); the model repeats it on
# every red shade, seen in teaching or not.
WRONG_LESSONS = (
    Lesson(RED, GROUNDING, WRONG_CAT),
    Lesson((200, 45, 35), GROUNDING, WRONG_CAT),
    Lesson((235, 20, 50), GROUNDING, WRONG_CAT),
    Lesson(BLUE, GROUNDING, REMOTE),
)
REDS = [(220, 30, 30), (205, 35, 45), (230, 25, 35), (215, 40, 30), (225, 20, 40), (210, 30, 25)]
BLUES = [(30, 30, 220), (40, 35, 205), (25, 40, 230)]
CAT = Region(Box(0.1, 0.2, 0.5, 0.9), label="Cat")  # where the annotator moved the cat
KEPT_REMOTE = Region(Box(0.1, 0.1, 0.4, 0.3), label="Remote")
# Task id, image colour, and what the annotator submitted.
TASKS = tuple(
    (task_id, colour, CAT if colour in REDS else KEPT_REMOTE)
    for task_id, colour in enumerate(REDS + BLUES, 1)
)
VAL_FRACTION = 0.34


@pytest.fixture(scope="module")
def wrong_model(single_thread_torch: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 60 teaching steps are enough for these two answers (measured: exact on seeds 0-5).
    return build_tiny_model(
        tmp_path_factory.mktemp("wrong-tiny"), lessons=WRONG_LESSONS, teaching_steps=60
    )


def prelabel(model_dir: Path, version: str, images: dict[int, Path], settings: Settings) -> None:
    """Predict every task and record it as the backend does (``jobs.convert_one``)."""
    engine = TransformersEngine(model_dir, device="cpu", model_version=version)
    policy = Policy.resolve(settings, CONFIG, version=version)
    store = FeedbackStore(model_dir=settings.model_dir)
    try:
        for task_id, colour, _ in TASKS:
            image = solid_image(colour)
            (result,) = engine.generate([Request(image, policy.prompt, policy.task)])
            output = {"width": image.width, "height": image.height, "model_version": version}
            data = {CONFIG.data_key: str(images[task_id])}
            item = policy.item(str(task_id), data, task_id=task_id, project=1)
            converted = convert_one(policy, item, output | result.to_json())
            store.record_predictions([converted.record])
    finally:
        store.close()


def annotate(images: dict[int, Path], settings: Settings) -> None:
    """The annotation webhooks Label Studio sends, with the project's label config."""
    store = FeedbackStore(model_dir=settings.model_dir)
    try:
        for task_id, colour, region in TASKS:
            body = labelstudio_fixture("webhook_annotation_created")
            body["project"]["label_config"] = CATS_CONFIG
            body["task"].update(id=task_id, data={"image": str(images[task_id])})
            width, height = solid_image(colour).size
            result = regions_to_results([region], CONFIG, width, height, seed=f"human-{task_id}")
            now = datetime.now(UTC).isoformat()  # annotated after the pre-labels
            body["annotation"].update(
                id=task_id, task=task_id, result=result, created_at=now, updated_at=now
            )
            store.append(body)
    finally:
        store.close()


def image_files(tmp_path: Path) -> dict[int, Path]:
    images = {}
    for task_id, colour, _ in TASKS:
        images[task_id] = tmp_path / "images" / f"task-{task_id}.png"
        images[task_id].parent.mkdir(exist_ok=True)
        solid_image(colour).save(images[task_id])
    return images


def held_out_seed(images: dict[int, Path]) -> tuple[int, set[int]]:
    """A split seed that holds out reds and blues and trains on both (the split is by image
    content, so it is known before exporting); its validation task ids."""
    for seed in range(100):
        held = {
            task_id
            for task_id, path in images.items()
            if split_of(hashlib.sha256(path.read_bytes()).hexdigest(), VAL_FRACTION, seed)
            == "validation"
        }
        reds = {t for t, colour, _ in TASKS if colour in REDS}
        if 2 <= len(held & reds) <= 3 and len(held - reds) == 1:
            return seed, held
    raise AssertionError("no seed splits the family")


@pytest.mark.parametrize(
    ("lora", "steps", "learning_rate"),
    # Full fine-tuning and LoRA, with the step counts of the two-image loop this replaces
    # (40 full / 120 LoRA steps were right on tiny-model seeds 0-5), with a margin.
    [(False, 60, 3e-3), (True, 160, 5e-3)],
    ids=["full", "lora"],
)
def test_corrections_train_a_model_better_on_images_it_never_saw(
    wrong_model: Path, tmp_path: Path, lora: bool, steps: int, learning_rate: float
) -> None:
    images = image_files(tmp_path)
    settings = Settings(model_dir=tmp_path / "model-dir", local_image_roots=(tmp_path / "images",))
    prelabel(wrong_model, "tiny-wrong", images, settings)
    annotate(images, settings)
    before, table = run_report("store", settings=settings)
    wrong = before["versions"]["tiny-wrong"]
    # Every red mistaken (taught or not), every blue right.
    assert wrong["labels"]["Cat"]["f1"] == 0.0, table
    assert wrong["labels"]["Remote"]["f1"] == 1.0, table

    seed, held = held_out_seed(images)
    exported = run_export(
        "store",
        "trl-sft",
        tmp_path / "sft",
        val_fraction=VAL_FRACTION,
        seed=seed,
        settings=settings,
    )
    assert exported["written"] == {"train": len(TASKS) - len(held), "validation": len(held)}
    summary = train(
        tmp_path / "sft",
        wrong_model,
        tmp_path / "trained",
        lora=lora,
        max_steps=steps,
        learning_rate=learning_rate,
        batch_size=2,
        gradient_accumulation=1,
    )
    evaluation = summary.evaluation
    assert evaluation is not None and evaluation["split"] == "validation"
    assert evaluation["examples"] == len(held) == summary.validation_examples
    base, trained = evaluation["base"], evaluation["trained"]
    assert trained["model_version"] == summary.model_version != base["model_version"]
    # Held-out reds: the base is wrong on every one, the trained model right; the blue stays.
    assert base["labels"]["Cat"]["f1"] == 0.0 and trained["labels"]["Cat"]["f1"] == 1.0
    assert base["labels"]["Remote"]["f1"] == trained["labels"]["Remote"]["f1"] == 1.0
    assert trained["micro"]["f1"] == 1.0 > base["micro"]["f1"]
    assert trained["map"]["map"] > base["map"]["map"]
    written = json.loads((tmp_path / "trained" / "train_summary.json").read_text())
    assert written["evaluation"] == json.loads(json.dumps(evaluation))

    # The command gives the trained model the same figures on the same held-out images.
    out = tmp_path / "evaluation.json"
    argv = ["evaluate", "--model", summary.model_dir, str(tmp_path / "sft"), "--json", str(out)]
    assert main([*argv, "--device", "cpu"]) == 0
    command = json.loads(out.read_text())
    assert command["split"] == "validation" and command["examples"] == len(held)
    assert command["micro"] == trained["micro"] and command["map"] == trained["map"]
