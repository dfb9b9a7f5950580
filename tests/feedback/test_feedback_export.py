"""Exports: formats, self-containment, DPO pair selection, the deterministic split by image
content, reading order of OCR targets, upright images, and the annotation filters."""

from __future__ import annotations

import hashlib
import io
import json
from copy import deepcopy
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import FIXTURES, labelstudio_fixture
from PIL import Image

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


class DistinctImages:
    """A different PNG for every task number in the reference (``.../<n>-a.png``)."""

    def read_bytes(self, ref: str) -> bytes:
        n = int(ref.rsplit("/", 1)[-1].split("-")[0])
        buffer = io.BytesIO()
        Image.new("RGB", (48, 40), (n % 256, n // 256, 7)).save(buffer, "PNG")
        return buffer.getvalue()


def content(reader: ImageReader, ref: str) -> str:
    return hashlib.sha256(reader.read_bytes(ref)).hexdigest()


def test_split_is_per_image_and_repeatable(tmp_path: Path) -> None:
    reader = DistinctImages()
    examples = [example(i, [HELLO], None) for i in range(400)]
    splits = [split_of(content(reader, e.image), 0.25, seed=3) for e in examples]
    assert 70 <= splits.count("validation") <= 130  # about a quarter
    summary = export(examples[:40], "llava", tmp_path / "x", 0.25, seed=3, images=reader)
    assert summary["written"]["validation"] == splits[:40].count("validation")
    assert len(load_llava(tmp_path / "x", "validation")) == summary["written"]["validation"]
    # A re-export, or one with other tasks around, puts each image in the same split.
    again = export(examples[:40:3], "llava", tmp_path / "y", 0.25, seed=3, images=reader)
    held = {r["image"] for r in load_llava(tmp_path / "x", "validation")}
    assert {r["image"] for r in load_llava(tmp_path / "y", "validation")} <= held
    assert again["written"]["validation"] == splits[:40:3].count("validation")


def test_one_image_never_sits_in_both_splits(tmp_path: Path, png_images: ImageReader) -> None:
    # 60 tasks share two pictures (red and blue): a split by task would put each picture on
    # both sides; by content, every task of a picture lands where the picture does.
    examples = [
        replace(example(i, [HELLO], None), image=f"/data/upload/1/{i}-{'ab'[i % 2]}.png")
        for i in range(60)
    ]
    for seed in range(5):
        out = tmp_path / f"seed-{seed}"
        export(examples, "llava", out, 0.5, seed=seed, images=png_images)
        splits = {
            split: {r["image"] for r in load_llava(out, split)}
            if (out / f"{split}.json").exists()
            else set()
            for split in ("train", "validation")
        }
        assert not splits["train"] & splits["validation"]
        assert len(splits["train"] | splits["validation"]) == 2


def test_ocr_targets_follow_reading_order(tmp_path: Path, png_images: ImageReader) -> None:
    title = Region(Box(0.1, 0.1, 0.5, 0.2), label="Text", text="TITLE")
    left = Region(Box(0.1, 0.5, 0.3, 0.6), label="Text", text="left")
    right = Region(Box(0.5, 0.51, 0.7, 0.6), label="Text", text="right")
    drawn = [right, left, title]  # the order the annotator drew them
    export([example(1, drawn, None)], "llava", tmp_path, 0.0, images=png_images)
    (record,) = load_llava(tmp_path)
    answer = record["conversations"][1]["value"]
    assert answer == regions_to_varco([title, left, right], Task.OCR)
    assert [line.split("</char>")[0] for line in answer.split("\n")] == [
        "<char>TITLE",
        "<char>left",
        "<char>right",
    ]


class RotatedJpeg:
    """A 60 x 40 JPEG stored sideways with EXIF orientation 6 (rotate 90 degrees clockwise to
    view): upright it is 40 x 60, red on top, blue below."""

    def read_bytes(self, ref: str) -> bytes:
        upright = Image.new("RGB", (40, 60), (220, 30, 30))
        upright.paste((30, 30, 220), (0, 30, 40, 60))
        stored = upright.rotate(90, expand=True)  # what the camera wrote: sideways
        exif = Image.Exif()
        exif[0x0112] = 6
        buffer = io.BytesIO()
        stored.save(buffer, "JPEG", exif=exif, quality=95)
        return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["llava", "trl-sft"])
def test_images_are_written_upright(tmp_path: Path, fmt: str) -> None:
    export([example(1, [HELLO], None)], fmt, tmp_path, 0.0, images=RotatedJpeg())
    if fmt == "llava":
        (record,) = load_llava(tmp_path)
        data = (tmp_path / record["image"]).read_bytes()
    else:
        import pyarrow.parquet as pq

        (row,) = pq.read_table(next((tmp_path / "data").glob("train-*"))).to_pylist()
        data = row["images"][0]["bytes"]
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (40, 60)  # upright, as Label Studio shows it
        assert image.getexif().get(0x0112, 1) == 1  # no tag left to rotate it again
        red, blue = image.convert("RGB").getpixel((20, 10)), image.convert("RGB").getpixel((20, 50))
    assert red[0] > 150 > red[2] and blue[2] > 150 > blue[0]


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
