"""Exports: formats, self-containment, DPO pair selection and the deterministic split."""

from __future__ import annotations

import json
from copy import deepcopy
from pathlib import Path

import pytest
from helpers import FIXTURES, labelstudio_fixture

from varco_labeler.feedback.export import FORMATS, ImageReader, export, load_llava, split_of
from varco_labeler.feedback.pairing import Example
from varco_labeler.feedback.sources import examples_from_export, examples_from_store
from varco_labeler.feedback.store import FeedbackStore
from varco_labeler.regions import Region, regions_to_varco
from varco_labeler.varco import Box, Task, prompt_for

HELLO = Region(Box(0.1, 0.2, 0.4, 0.25), label="Text", text="HELLO")


def example(task_id: int, human: list[Region], model: list[Region] | None) -> Example:
    kind = Task.OCR
    return Example(
        task_id=task_id,
        project=1,
        image=f"/data/upload/1/{task_id}-a.png",
        kind=kind,
        prompt=prompt_for(kind),
        answer=regions_to_varco(human, kind),
        regions=tuple(human),
        model_answer=regions_to_varco(model, kind) if model is not None else None,
        model_regions=tuple(model) if model is not None else None,
        model_version="tiny-v1" if model is not None else None,
        source="test",
    )


def corrected_examples() -> list[Example]:
    """One of each case: retyped text, a sub-pixel nudge, a moved box, a missed region, a
    deleted false positive, no prediction at all, and an empty answer."""
    nudged = HELLO.with_(box=Box(0.1, 0.2, 0.401, 0.25))
    moved = HELLO.with_(box=Box(0.1, 0.2, 0.3, 0.25))
    extra = Region(Box(0.6, 0.6, 0.9, 0.7), label="Text", text="EXIT")
    return [
        example(1, [HELLO], [HELLO.with_(text="HELL0")]),
        example(2, [HELLO], [nudged]),
        example(3, [HELLO], [moved]),
        example(4, [HELLO, extra], [HELLO]),
        example(5, [HELLO], [HELLO, extra]),
        example(6, [HELLO], None),
        example(7, [], [HELLO]),
    ]


def test_trl_sft_is_self_contained_and_loads(tmp_path: Path, png_images: ImageReader) -> None:
    datasets = pytest.importorskip("datasets")
    summary = export(corrected_examples(), "trl-sft", tmp_path / "sft", 0.0, images=png_images)
    assert summary["written"] == {"train": 6, "validation": 0}
    assert summary["skipped"] == {"empty_answer": 1}
    assert summary["images"] == 1  # six references to one picture: stored once
    loaded = datasets.load_dataset(str(tmp_path / "sft"), cache_dir=str(tmp_path / "cache"))
    train = loaded["train"]
    assert set(train.column_names) == {"images", "prompt", "completion"}
    row = train[0]
    assert row["images"][0].size == (48, 40)  # embedded bytes, decoded without the source
    assert row["prompt"][0]["role"] == "user"
    for turn in row["prompt"] + row["completion"]:
        for part in turn["content"]:
            assert set(part) == {"type", "text"}  # never an "image" key in a content part
    assert [p["type"] for p in row["prompt"][0]["content"]] == ["image", "text"]
    assert row["completion"][0]["content"][0]["text"] == HELLO_ANSWER
    assert not (tmp_path / "sft" / "images").exists()  # embedded, nothing to carry beside
    card = (tmp_path / "sft" / "README.md").read_text()
    assert "| train | 6 |" in card and "tiny-v1: 5" in card


HELLO_ANSWER = "<char>HELLO</char><bbox>0.1, 0.2, 0.4, 0.25</bbox>"


def test_dpo_pairs_only_material_corrections(tmp_path: Path, png_images: ImageReader) -> None:
    datasets = pytest.importorskip("datasets")
    summary = export(corrected_examples(), "trl-dpo", tmp_path / "dpo", 0.0, images=png_images)
    # retyped (1), moved (3), missed (4), false positive (5); the nudge (2) is not a correction.
    assert summary["written"]["train"] == 4
    assert summary["skipped"] == {"unchanged": 1, "no_prediction": 1, "empty_answer": 1}
    train = datasets.load_dataset(str(tmp_path / "dpo"), cache_dir=str(tmp_path / "c"))["train"]
    assert set(train.column_names) == {"images", "prompt", "chosen", "rejected"}
    first = train[0]
    assert first["chosen"][0]["content"][0]["text"] == HELLO_ANSWER
    assert first["rejected"][0]["content"][0]["text"] == HELLO_ANSWER.replace("HELLO", "HELL0")


def test_llava_files_match_the_documented_shapes(tmp_path: Path, png_images: ImageReader) -> None:
    export(corrected_examples(), "llava", tmp_path / "llava", 0.0, images=png_images)
    records = load_llava(tmp_path / "llava")
    assert len(records) == 6
    for record in records:
        assert set(record) == {"id", "image", "conversations"}
        human, gpt = record["conversations"]
        assert human == {"from": "human", "value": "<image>\n<ocr>"}
        assert gpt["from"] == "gpt" and gpt["value"].startswith("<char>")
        assert (tmp_path / "llava" / record["image"]).is_file()

    export(corrected_examples(), "llava-dpo", tmp_path / "dpo", 0.0, images=png_images)
    pairs = load_llava(tmp_path / "dpo")
    assert len(pairs) == 4
    for pair in pairs:
        assert set(pair) == {"id", "image", "prompt", "answer", "chosen", "rejected"}
        assert pair["prompt"] == "<image>\n<ocr>" and pair["answer"] == pair["chosen"]
        assert pair["chosen"] != pair["rejected"]
        assert (tmp_path / "dpo" / pair["image"]).is_file()


def test_hf_rows_carry_both_answers(tmp_path: Path, png_images: ImageReader) -> None:
    datasets = pytest.importorskip("datasets")
    export(corrected_examples(), "hf", tmp_path / "hf", 0.0, images=png_images)
    train = datasets.load_dataset(str(tmp_path / "hf"), cache_dir=str(tmp_path / "c"))["train"]
    rows = {row["task_id"]: row for row in train}
    assert rows[1]["changed"] is True and rows[2]["changed"] is False
    assert rows[6]["model_answer"] is None and rows[6]["changed"] is None
    assert rows[1]["image"].size == (48, 40)


def test_split_is_per_task_and_repeatable(tmp_path: Path, png_images: ImageReader) -> None:
    examples = [example(i, [HELLO], None) for i in range(400)]
    splits = [split_of(e, 0.25, seed=3) for e in examples]
    assert splits == [split_of(e, 0.25, seed=3) for e in examples]
    assert 70 <= splits.count("validation") <= 130  # about a quarter
    # A task keeps its split when other tasks come and go.
    assert [split_of(e, 0.25, seed=3) for e in examples[::7]] == splits[::7]
    summary = export(examples[:40], "llava", tmp_path / "x", 0.25, seed=3, images=png_images)
    assert summary["written"]["validation"] == splits[:40].count("validation")
    assert len(load_llava(tmp_path / "x", "validation")) == summary["written"]["validation"]


def test_unknown_format_and_unreadable_images(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown format"):
        export([], "coco", tmp_path)
    # Without a reader only local files are read: a Label Studio URL is skipped, with the reason.
    summary = export(corrected_examples()[:1], "llava", tmp_path / "y", 0.0)
    assert summary["skipped"] == {"image_error": 1}
    assert "LABEL_STUDIO_URL" in summary["image_errors"][0]
    assert set(FORMATS) == {"trl-sft", "trl-dpo", "llava", "llava-dpo", "hf"}


def test_export_file_source_fills_ids_only_predictions_from_the_store(
    store: FeedbackStore,
) -> None:
    path = FIXTURES / "labelstudio" / "export_simple.json"
    config = labelstudio_fixture("setup")["schema"]
    (plain,) = examples_from_export(path, config)  # tasks 2 and 3 have no annotation
    assert plain.task_id == 1 and plain.ground_truth and plain.model_answer is None
    assert json.loads(path.read_text())[0]["predictions"] == [2]  # ids only in this export

    result = deepcopy(json.loads(path.read_text())[0]["annotations"][0]["result"])
    result[0]["value"]["x"] = 20.0  # the model put the box elsewhere
    result[1]["value"]["x"] = 20.0
    store.record_prediction(
        task_id=1,
        project=1,
        image="a.png",
        prompt="<ocr>",
        task_kind="ocr",
        raw="",
        result=result,
        model_version="tiny-v1",
        created_at="2026-11-21T22:40:00Z",
    )  # fmt: skip  (made before the captured annotation)
    (filled,) = examples_from_export(path, config, store=store)
    assert filled.model_version == "tiny-v1"
    assert filled.model_answer == "<char>HELLO</char><bbox>0.2, 0.2, 0.5, 0.25</bbox>"
    assert examples_from_store(store) == []  # no webhook came: the store has no annotation
