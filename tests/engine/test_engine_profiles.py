"""Model profiles: lookup, prompts, OCR upscaling and character merging. No torch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from varco_labeler.engine.profiles import (
    DEFAULT_MODEL,
    GENERIC,
    PROFILE_FILE,
    PROFILES,
    MergeLevel,
    Profile,
    merge_characters,
    profile_for,
    profile_named,
    upscale_to_long_side,
    write_profile,
)
from varco_labeler.varco import Box, OcrItem, Phrase, Task, parse

OCR = "NCSOFT/VARCO-VISION-2.0-1.7B-OCR"


def test_known_checkpoints_by_hub_id_and_by_local_directory_name():
    assert profile_for(DEFAULT_MODEL).name == DEFAULT_MODEL
    ocr = profile_for("/models/VARCO-VISION-2.0-1.7B-OCR/")
    assert ocr.name == "NCSOFT/VARCO-VISION-2.0-1.7B-OCR"
    # The 1.7B profile must not swallow the OCR checkpoint, nor the other way round.
    assert profile_for("NCSOFT/VARCO-VISION-2.0-1.7B").ocr_merge is MergeLevel.CHARACTER
    assert profile_for("/tmp/tiny-varco") is GENERIC
    assert profile_for("someone/VARCO-VISION-2.0-1.7B-OCR-finetuned") is GENERIC


def test_a_hub_cache_snapshot_gets_its_checkpoints_profile():
    snapshot = "/hf/hub/models--NCSOFT--VARCO-VISION-2.0-1.7B-OCR/snapshots/0123abcd/"
    assert profile_for(snapshot).name == OCR
    assert profile_for("/hf/hub/models--someone--other/snapshots/0123abcd") is GENERIC


def test_a_directory_saying_its_profile_gets_it_whatever_its_name(tmp_path: Path):
    model = tmp_path / "my-finetune"
    model.mkdir()
    assert profile_for(model) is GENERIC  # the name says nothing
    written = write_profile(model, PROFILES[OCR])
    assert written == model / PROFILE_FILE
    assert json.loads(written.read_text()) == {"profile": OCR}
    assert profile_for(model) is PROFILES[OCR]
    assert profile_for(str(model) + "/") is PROFILES[OCR]
    # The file wins over a misleading name.
    named = tmp_path / "VARCO-VISION-2.0-1.7B-OCR"
    named.mkdir()
    write_profile(named, "generic")
    assert json.loads((named / PROFILE_FILE).read_text()) == {"profile": "generic"}
    assert profile_for(named) is GENERIC


@pytest.mark.parametrize(
    "name", [OCR, OCR.lower(), "VARCO-VISION-2.0-1.7B-OCR", " varco-vision-2.0-1.7b-ocr "]
)
def test_an_override_by_full_or_short_name_wins(tmp_path: Path, name: str):
    model = tmp_path / "my-finetune"
    model.mkdir()
    write_profile(model, "generic")
    assert profile_for(model, name) is PROFILES[OCR]
    assert profile_for("NCSOFT/VARCO-VISION-14B-HF", name) is PROFILES[OCR]
    assert profile_for(f"/models/{OCR.split('/')[1]}", "GENERIC") is GENERIC
    assert profile_named(name) is PROFILES[OCR]


def test_every_known_profile_round_trips_through_the_file(tmp_path: Path):
    for profile in (*PROFILES.values(), GENERIC):
        write_profile(tmp_path, profile)
        assert profile_for(tmp_path) is profile


@pytest.mark.parametrize("override", ["VARCO-VISION-3", "NCSOFT/", "", "ocr"])
def test_an_unknown_override_lists_the_known_names(override: str):
    with pytest.raises(ValueError, match="unknown profile") as error:
        profile_for("/models/whatever", override)
    assert all(name in str(error.value) for name in (*PROFILES, "generic"))


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('{"profile": "VARCO-VISION-3"}', "unknown profile 'VARCO-VISION-3'"),
        ('{"name": "generic"}', "no profile name"),
        ('{"profile": 3}', "no profile name"),
        ('["generic"]', "no profile name"),
        ("{not json", "cannot read it"),
        ("", "cannot read it"),
    ],
)
def test_a_bad_profile_file_names_the_file_and_the_known_names(
    tmp_path: Path, content: str, problem: str
):
    (tmp_path / PROFILE_FILE).write_text(content)
    with pytest.raises(ValueError, match=problem) as error:
        profile_for(tmp_path)
    assert str(tmp_path / PROFILE_FILE) in str(error.value)
    assert all(name in str(error.value) for name in (*PROFILES, "generic"))
    assert profile_for(tmp_path, "generic") is GENERIC  # an override does not read it


def test_only_known_profiles_can_be_written(tmp_path: Path):
    with pytest.raises(ValueError, match="unknown profile 'custom'"):
        write_profile(tmp_path, Profile("custom"))
    with pytest.raises(ValueError, match="differs"):
        write_profile(tmp_path, Profile(OCR))  # a known name, other settings
    assert not (tmp_path / PROFILE_FILE).exists()


def test_token_limits_per_task():
    default = profile_for(DEFAULT_MODEL)
    assert default.max_new_tokens_for(Task.OCR) >= 4096
    assert default.max_new_tokens_for(Task.GROUNDING) < default.max_new_tokens_for(Task.OCR)
    assert profile_for("NCSOFT/VARCO-VISION-2.0-1.7B-OCR").max_new_tokens_for("ocr") > 4096


def test_conversation_puts_the_image_before_the_text_and_keeps_the_template_system_prompt():
    [user] = GENERIC.conversation("<ocr>")
    assert user == {
        "role": "user",
        "content": [{"type": "image"}, {"type": "text", "text": "<ocr>"}],
    }
    custom = GENERIC.__class__("custom", system_prompt="Be brief.")
    system, _ = custom.conversation("<ocr>")
    assert system == {"role": "system", "content": "Be brief."}


def test_ocr_upscaling_only_for_the_ocr_profile_and_task():
    ocr = profile_for("NCSOFT/VARCO-VISION-2.0-1.7B-OCR")
    image = Image.new("L", (640, 480))
    upscaled = ocr.prepare_image(image, Task.OCR)
    assert upscaled.size == (2304, 1728)
    assert upscaled.mode == "RGB"
    assert ocr.prepare_image(image, Task.GROUNDING).size == (640, 480)
    assert profile_for(DEFAULT_MODEL).prepare_image(image, Task.OCR).size == (640, 480)


def test_upscaling_never_shrinks():
    big = Image.new("RGB", (3000, 100))
    assert upscale_to_long_side(big, 2304) is big
    assert upscale_to_long_side(Image.new("RGB", (100, 1000)), 2304).size == (230, 2304)


def _characters(*chars: tuple[str, float, float, float, float]) -> str:
    return "\n".join(
        f"<char>{c}</char><bbox>{x1}, {y1}, {x2}, {y2}</bbox>" for c, x1, y1, x2, y2 in chars
    )


# Two words on one line ("백범 로드"), then a word on the next line ("Park").
SIGN = _characters(
    ("백", 0.10, 0.10, 0.14, 0.16),
    ("범", 0.15, 0.10, 0.19, 0.16),
    ("로", 0.30, 0.10, 0.34, 0.16),
    ("드", 0.35, 0.10, 0.39, 0.16),
    ("P", 0.10, 0.30, 0.12, 0.35),
    ("a", 0.12, 0.31, 0.14, 0.35),
    ("r", 0.14, 0.31, 0.16, 0.35),
    ("k", 0.16, 0.30, 0.18, 0.35),
)


def test_characters_merge_into_words_with_union_boxes_and_mean_scores():
    parsed = parse(SIGN)
    scores = [0.9, 0.4, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    merged, merged_scores = merge_characters(parsed, scores, MergeLevel.WORD)
    assert [(item.text, item.boxes) for item in merged.grounded] == [
        ("백범", (Box(0.10, 0.10, 0.19, 0.16),)),
        ("로드", (Box(0.30, 0.10, 0.39, 0.16),)),
        ("Park", (Box(0.10, 0.30, 0.18, 0.35),)),
    ]
    assert merged_scores == pytest.approx([0.6, 1.0, 1.0])
    assert merged.to_text().count("\n") == 2  # one item per line, as the model writes OCR


def test_characters_merge_into_lines():
    merged, scores = merge_characters(parse(SIGN), [None] * 8, "line")
    assert [item.text for item in merged.grounded] == ["백범 로드", "Park"]
    assert scores == [None, None]


def test_whitespace_characters_split_words_and_are_dropped():
    text = _characters(
        ("a", 0.1, 0.1, 0.12, 0.2), (" ", 0.12, 0.1, 0.13, 0.2), ("b", 0.13, 0.1, 0.15, 0.2)
    )
    merged, _ = merge_characters(parse(text), [1.0, 1.0, 1.0], "word")
    assert [item.text for item in merged.grounded] == ["a", "b"]


def test_a_box_jumping_back_left_starts_a_new_line_even_at_the_same_height():
    text = _characters(("a", 0.5, 0.1, 0.52, 0.2), ("b", 0.1, 0.1, 0.12, 0.2))
    merged, _ = merge_characters(parse(text), [1.0, 1.0], "line")
    assert [item.text for item in merged.grounded] == ["a", "b"]


def test_non_character_items_are_kept_in_place():
    text = (
        "<char>a</char><bbox>0.1, 0.1, 0.12, 0.2</bbox>"
        "<obj>sign</obj><bbox>0, 0, 1, 1</bbox>"
        "<char>b</char><bbox>0.13, 0.1, 0.15, 0.2</bbox>"
    )
    merged, scores = merge_characters(parse(text), [0.5, 0.6, 0.7], "word")
    assert [type(item) for item in merged.grounded] == [OcrItem, Phrase, OcrItem]
    assert scores == [0.5, 0.6, 0.7]


def test_character_level_is_a_no_op_and_score_count_is_checked():
    parsed = parse(SIGN)
    assert merge_characters(parsed, [1.0] * 8, "character") == (parsed, [1.0] * 8)
    with pytest.raises(ValueError, match="scores"):
        merge_characters(parsed, [1.0], "word")


def test_ocr_profile_postprocess_merges_only_ocr():
    ocr = profile_for("NCSOFT/VARCO-VISION-2.0-1.7B-OCR")
    parsed = parse(SIGN)
    merged, _ = ocr.postprocess(parsed, [1.0] * 8, Task.OCR)
    assert len(merged.grounded) == 3
    assert ocr.postprocess(parsed, [1.0] * 8, Task.GROUNDING)[0] is parsed
    assert profile_for(DEFAULT_MODEL).postprocess(parsed, [1.0] * 8, Task.OCR)[0] is parsed
