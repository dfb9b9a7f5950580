"""Teaching the tiny model your own answers: ``tiny-model DIR --lessons FILE`` and ``read_lessons``.

The model is built on the CPU through the CLI, loaded like a real checkpoint by the transformers
engine, and must give the taught answers back exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from PIL import Image, ImageDraw  # noqa: E402

from varco_labeler import cli  # noqa: E402
from varco_labeler.engine import tiny  # noqa: E402
from varco_labeler.engine.base import Request  # noqa: E402
from varco_labeler.engine.tiny import (  # noqa: E402
    GROUNDING,
    MAX_POSITIONS,
    OCR,
    RED,
    TEACHING,
    Lesson,
    default_teaching_steps,
    read_lessons,
)
from varco_labeler.engine.transformers_engine import TransformersEngine  # noqa: E402
from varco_labeler.varco import OcrItem, Phrase, Task, parse  # noqa: E402

# Like VARCO-VISION-2.0-1.7B-OCR: one <char> item per character.
CHARACTER_OCR = (
    "<char>S</char><bbox>0.1, 0.3, 0.2, 0.6</bbox>"
    "<char>T</char><bbox>0.25, 0.3, 0.35, 0.6</bbox>"
    "<char>O</char><bbox>0.4, 0.3, 0.5, 0.6</bbox>"
    "<char>P</char><bbox>0.55, 0.3, 0.65, 0.6</bbox>"
)
GROUNDED = "A <obj>green box</obj><bbox>0.1, 0.2, 0.5, 0.9</bbox> on grey."


def _picture(background: tuple[int, int, int], box: tuple[int, int, int]) -> Image.Image:
    image = Image.new("RGB", (64, 48), background)
    ImageDraw.Draw(image).rectangle([8, 10, 30, 40], fill=box)
    return image


@pytest.fixture
def images(tmp_path: Path) -> dict[str, Path]:
    paths = {"sign": tmp_path / "sign.png", "scene": tmp_path / "pictures" / "scene.png"}
    paths["scene"].parent.mkdir()
    _picture((240, 240, 240), (200, 20, 20)).save(paths["sign"])
    _picture((128, 128, 128), (20, 180, 40)).save(paths["scene"])
    return paths


def _write_lessons(path: Path, *lines: object) -> Path:
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    path.write_text(text, encoding="utf-8")
    return path


def test_taught_lessons_come_back_exactly(
    single_thread_torch: None, tmp_path: Path, images: dict[str, Path]
):
    lessons = _write_lessons(
        tmp_path / "lessons.jsonl",
        {"image": "sign.png", "prompt": OCR, "answer": CHARACTER_OCR},  # relative to the file
        "",  # blank lines are skipped
        {"image": str(images["scene"]), "prompt": GROUNDING, "answer": GROUNDED},
    )
    out = tmp_path / "tiny"
    assert cli.main(["tiny-model", str(out), "--lessons", str(lessons)]) == 0

    engine = TransformersEngine(out, model_version="t", device="cpu")
    sign, scene = (Image.open(images[name]) for name in ("sign", "scene"))
    ocr, grounded, untaught = engine.generate(
        [
            Request(sign, OCR, Task.OCR),
            Request(scene, GROUNDING, Task.GROUNDING),
            Request(tiny.solid_image(RED), GROUNDING, Task.GROUNDING, max_new_tokens=64),
        ]
    )
    assert ocr.raw == CHARACTER_OCR
    assert [item.text for item in ocr.parsed.grounded] == list("STOP")
    assert all(isinstance(item, OcrItem) for item in ocr.parsed.grounded)
    assert grounded.raw == GROUNDED
    assert grounded.parsed.grounded == parse(GROUNDED).grounded
    assert isinstance(grounded.parsed.grounded[0], Phrase)
    assert untaught.raw != TEACHING[0].answer  # the lessons replaced the built-in ones


def test_keep_default_lessons_and_steps_reach_the_builder(
    tmp_path: Path, images: dict[str, Path], monkeypatch: pytest.MonkeyPatch
):
    calls: list[dict] = []
    monkeypatch.setattr(
        tiny, "build_tiny_model", lambda out_dir, **options: calls.append(options) or out_dir
    )
    lessons = _write_lessons(
        tmp_path / "lessons.jsonl", {"image": "sign.png", "prompt": OCR, "answer": CHARACTER_OCR}
    )
    out = str(tmp_path / "tiny")
    assert cli.main(["tiny-model", out]) == 0
    assert cli.main(["tiny-model", out, "--lessons", str(lessons), "--steps", "7"]) == 0
    assert cli.main(["tiny-model", out, "--lessons", str(lessons), "--keep-default-lessons"]) == 0
    default, replaced, kept = calls
    assert default["lessons"] == list(TEACHING) and default["teaching_steps"] is None
    assert [lesson.answer for lesson in replaced["lessons"]] == [CHARACTER_OCR]
    assert replaced["teaching_steps"] == 7
    assert [lesson.answer for lesson in kept["lessons"]] == [
        *(lesson.answer for lesson in TEACHING),
        CHARACTER_OCR,
    ]


@pytest.mark.parametrize(
    ("bad_line", "expected"),
    [
        ('{"image": "sign.png", "prompt": "<ocr>",', "not JSON"),
        ('["sign.png", "<ocr>", "STOP"]', "expected a JSON object"),
        ('{"image": "sign.png", "prompt": "<ocr>"}', "missing 'answer'"),
        ('{"image": "sign.png", "prompt": "<ocr>", "answer": 3}', "'answer' must be a string"),
        ('{"image": "sign.png", "prompt": "<ocr>", "answer": "", "x": 1}', "unknown 'x'"),
        ('{"image": "nowhere.png", "prompt": "<ocr>", "answer": "STOP"}', "image not found"),
        ('{"image": "notes.txt", "prompt": "<ocr>", "answer": "STOP"}', "expected an image file"),
    ],
)
def test_a_bad_lessons_file_is_one_error_line_with_its_line_number(
    tmp_path: Path,
    images: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    bad_line: str,
    expected: str,
):
    (tmp_path / "notes.txt").write_text("not a picture")
    good = {"image": "sign.png", "prompt": OCR, "answer": CHARACTER_OCR}
    lessons = _write_lessons(tmp_path / "lessons.jsonl", good, bad_line)
    out = tmp_path / "tiny"
    assert cli.main(["tiny-model", str(out), "--lessons", str(lessons)]) == 2
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1 and stderr.startswith("error: ")
    assert f"{lessons} line 2: " in stderr and expected in stderr
    assert not out.exists()


def test_missing_or_empty_lessons_files_and_a_too_long_lesson_exit_2(
    single_thread_torch: None,
    tmp_path: Path,
    images: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
):
    out = str(tmp_path / "tiny")
    assert cli.main(["tiny-model", out, "--lessons", str(tmp_path / "none.jsonl")]) == 2
    assert "none.jsonl" in capsys.readouterr().err
    empty = _write_lessons(tmp_path / "empty.jsonl", "")
    assert cli.main(["tiny-model", out, "--lessons", str(empty)]) == 2
    assert "no lessons" in capsys.readouterr().err

    long_answer = "<char>A</char><bbox>0.1, 0.2, 0.3, 0.4</bbox>" * (MAX_POSITIONS // 20)
    long = _write_lessons(
        tmp_path / "long.jsonl", {"image": "sign.png", "prompt": OCR, "answer": long_answer}
    )
    assert cli.main(["tiny-model", out, "--lessons", str(long), "--steps", "1"]) == 2
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1
    assert f"{long} line 1: too long for the tiny model" in stderr and str(MAX_POSITIONS) in stderr
    assert not Path(out).exists()


def test_read_lessons_resolves_paths_and_converts_to_rgb(tmp_path: Path):
    Image.new("L", (20, 10), 200).save(tmp_path / "grey.png")
    Image.new("RGBA", (10, 20), (1, 2, 3, 128)).save(tmp_path / "clear.png")
    path = _write_lessons(
        tmp_path / "lessons.jsonl",
        {"image": "grey.png", "prompt": "p", "answer": "a"},
        {"image": str(tmp_path / "clear.png"), "prompt": "q", "answer": "b"},
    )
    grey, clear = read_lessons(path)
    assert isinstance(grey.image, Image.Image) and grey.image.mode == "RGB"
    assert grey.image.size == (20, 10) and (grey.prompt, grey.answer) == ("p", "a")
    assert clear.image.mode == "RGB" and clear.picture().getpixel((0, 0)) == (1, 2, 3)
    assert grey.origin == f"{path} line 1"
    assert Lesson(RED, "p", "a").picture().size == tiny.solid_image(RED).size


def test_default_teaching_steps_grow_with_answer_length():
    assert default_teaching_steps(TEACHING) == 150  # the built-in lessons are taught as before
    assert default_teaching_steps([Lesson(RED, OCR, CHARACTER_OCR)]) == 150
    # A 40-character OCR answer with 3-decimal boxes: about 1,240 tokens.
    forty = "".join(f"<char>{c}</char><bbox>0.123, 0.345, 0.234, 0.678</bbox>" for c in "A" * 40)
    assert default_teaching_steps([Lesson(RED, OCR, forty)]) == 190
    assert default_teaching_steps([Lesson(RED, OCR, forty)] * 4) == 750
