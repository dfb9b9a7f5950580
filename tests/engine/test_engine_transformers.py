"""The transformers engine and the tiny model, on CPU, through the real checkpoint's code path."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from varco_labeler.engine.base import Request  # noqa: E402
from varco_labeler.engine.predict import run_predict  # noqa: E402
from varco_labeler.engine.tiny import (  # noqa: E402
    BLUE,
    GROUNDING,
    OCR,
    RED,
    TEACHING,
    build_tiny_model,
    load_tiny_model,
    solid_image,
)
from varco_labeler.engine.transformers_engine import TransformersEngine  # noqa: E402
from varco_labeler.policy import Policy  # noqa: E402
from varco_labeler.settings import Settings  # noqa: E402
from varco_labeler.varco import OcrItem, Phrase, Task, clean_model_text, parse  # noqa: E402


def _request(colour, prompt=GROUNDING, task=Task.GROUNDING, **options) -> Request:
    return Request(solid_image(colour), prompt, task, **options)


def test_tiny_model_loads_like_a_real_checkpoint(tiny_model_dir: Path):
    model, processor = load_tiny_model(tiny_model_dir)
    assert type(model).__name__ == "LlavaOnevisionForConditionalGeneration"
    assert type(processor).__name__ == "LlavaOnevisionProcessor"
    tokenizer = processor.tokenizer
    assert tokenizer.padding_side == "left"  # persisted through save/load
    for tag in ("<obj>", "</obj>", "<bbox>", "</bbox>", "<delim>", "<char>", "</char>", "<gro>"):
        assert len(tokenizer(tag, add_special_tokens=False)["input_ids"]) == 1, tag
    assert model.config.image_token_index == tokenizer.convert_tokens_to_ids("<image>")
    conversation = [
        {"role": "user", "content": [{"type": "text", "text": "<ocr>"}, {"type": "image"}]}
    ]
    assert processor.apply_chat_template(conversation, add_generation_prompt=True) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<image>\n<ocr><|im_end|>\n<|im_start|>assistant\n"
    )


def test_taught_answers_come_back_parsed_with_scores(tiny_engine: TransformersEngine):
    red, blue_ocr = tiny_engine.generate([_request(RED), _request(BLUE, OCR, Task.OCR)])
    assert red.raw == TEACHING[0].answer
    assert red.parsed.grounded == parse(TEACHING[0].answer).grounded
    assert isinstance(red.parsed.grounded[0], Phrase)
    assert blue_ocr.raw == TEACHING[3].answer
    assert isinstance(blue_ocr.parsed.grounded[0], OcrItem)
    for result in (red, blue_ocr):
        assert len(result.region_scores) == len(result.parsed.grounded) == 1
        assert all(0.0 < score <= 1.0 for score in result.region_scores)
        assert result.prompt_tokens > 16  # the image alone is 16+ tokens
        assert result.completion_tokens == len(result.raw.encode()) - _tag_bytes(result.raw) + 1
        assert result.seconds > 0


def _tag_bytes(raw: str) -> int:
    """Bytes taken by tags, which are single tokens (so completion tokens can be counted)."""
    tags = ("<obj>", "</obj>", "<bbox>", "</bbox>", "<delim>", "<char>", "</char>")
    return sum(raw.count(tag) * (len(tag) - 1) for tag in tags)


def test_batched_equals_single_token_for_token(tiny_engine: TransformersEngine):
    # Different sizes give different numbers of image tokens, so rows are really left-padded.
    # One shared limit keeps them in one batch (and bounds the untaught, rambling answers).
    requests = [
        Request(solid_image(colour, size), prompt, task, max_new_tokens=64)
        for colour, size, prompt, task in (
            (RED, (48, 40), GROUNDING, Task.GROUNDING),
            (BLUE, (80, 30), GROUNDING, Task.GROUNDING),
            (BLUE, (48, 40), OCR, Task.OCR),
            ((30, 200, 30), (30, 70), OCR, Task.OCR),
        )
    ]
    batched = tiny_engine.generate(requests)
    singles = [tiny_engine.generate([request])[0] for request in requests]
    for batch_result, single in zip(batched, singles, strict=True):
        assert batch_result.raw == single.raw
        assert batch_result.completion_tokens == single.completion_tokens
        assert batch_result.prompt_tokens == single.prompt_tokens
        assert batch_result.region_scores == pytest.approx(single.region_scores, abs=1e-4)
    assert len({r.prompt_tokens for r in batched}) > 1


def test_different_images_give_different_answers(tiny_engine: TransformersEngine):
    red, blue = tiny_engine.generate([_request(RED), _request(BLUE)])
    assert red.raw != blue.raw


def test_raw_matches_the_processors_own_decoding(tiny_model_dir: Path):
    model, processor = load_tiny_model(tiny_model_dir)
    engine = TransformersEngine(tiny_model_dir, device="cpu")
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": GROUNDING}]}],
        add_generation_prompt=True,
    )
    inputs = processor(images=[solid_image(BLUE)], text=[text], return_tensors="pt")
    ids = model.generate(**inputs, max_new_tokens=100, do_sample=False)
    new = ids[0, inputs["input_ids"].shape[1] :]
    expected = clean_model_text(processor.decode(new, skip_special_tokens=False))
    assert engine.generate([_request(BLUE)])[0].raw == expected


def test_max_new_tokens_cuts_the_answer_and_the_parse_reports_it(tiny_engine: TransformersEngine):
    [cut] = tiny_engine.generate([_request(RED, OCR, Task.OCR, max_new_tokens=12)])
    assert cut.completion_tokens == 12
    assert cut.parsed.grounded == ()
    assert cut.parsed.dropped


def test_mixed_token_limits_keep_request_order(tiny_engine: TransformersEngine):
    requests = [_request(RED, max_new_tokens=5), _request(BLUE), _request(RED, OCR, Task.OCR)]
    results = tiny_engine.generate(requests)
    assert results[0].completion_tokens == 5
    assert results[1].raw == TEACHING[1].answer
    assert results[2].raw == TEACHING[2].answer


def test_out_of_memory_halves_the_batch_instead_of_failing(tiny_model_dir, monkeypatch):
    engine = TransformersEngine(tiny_model_dir, device="cpu", max_batch_size=4)
    real = engine._generate_batch
    sizes: list[int] = []

    def fits_two(requests, limit):
        sizes.append(len(requests))
        if len(requests) > 2:
            raise torch.OutOfMemoryError("simulated")
        return real(requests, limit)

    monkeypatch.setattr(engine, "_generate_batch", fits_two)
    colours = [RED, BLUE, RED, BLUE, RED]
    results = engine.generate([_request(colour) for colour in colours])
    assert [r.raw for r in results] == [
        TEACHING[0].answer if c == RED else TEACHING[1].answer for c in colours
    ]
    assert sizes == [4, 2, 2, 1]  # 4 fails, halves to 2 + 2; the size sticks for the last one
    assert engine.max_batch_size == 2


def test_a_single_request_that_does_not_fit_still_raises(tiny_model_dir, monkeypatch):
    engine = TransformersEngine(tiny_model_dir, device="cpu")

    def never_fits(requests, limit):
        raise torch.OutOfMemoryError("simulated")

    monkeypatch.setattr(engine, "_generate_batch", never_fits)
    with pytest.raises(torch.OutOfMemoryError):
        engine.generate([_request(RED)])


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="installed")
def test_quantisation_without_bitsandbytes_says_what_to_install(tiny_model_dir):
    with pytest.raises(RuntimeError, match="pip install bitsandbytes"):
        TransformersEngine(tiny_model_dir, device="cpu", load_in_4bit=True)


def test_model_version_names_the_local_directory(tiny_engine, tiny_model_dir):
    assert tiny_engine.model_version == tiny_model_dir.resolve().name


def test_qwen3_text_model_builds_and_generates(single_thread_torch, tmp_path):
    path = build_tiny_model(tmp_path / "qwen3", text_model="qwen3", lessons=())
    engine = TransformersEngine(path, device="cpu")
    assert engine.model.config.text_config.model_type == "qwen3"
    [result] = engine.generate([_request(RED, max_new_tokens=8)])
    assert result.completion_tokens == 8


def test_run_predict_yields_one_record_per_image(tiny_engine, tmp_path):
    paths = []
    for name, colour in (("red.png", RED), ("blue.png", BLUE), ("red2.png", RED)):
        solid_image(colour).save(tmp_path / name)
        paths.append(tmp_path / name)
    policy = Policy.resolve(Settings(model="unused"), task="grounding")
    records = list(run_predict(tiny_engine, policy, paths, batch_size=2))
    assert [r["image"] for r in records] == [str(p) for p in paths]
    red, blue, _ = records
    assert red["regions"] == [
        {
            "box": [0.1, 0.2, 0.5, 0.9],
            "label": None,
            "phrase": "red cat",
            "text": None,
            "score": red["regions"][0]["score"],
            "id": None,
        }
    ]
    assert len(blue["regions"]) == 2  # one phrase, two boxes
    assert blue["regions"][0]["score"] == blue["regions"][1]["score"]
    assert red["model_version"] == tiny_engine.model_version
    assert (red["task"], red["width"], red["height"]) == ("grounding", 48, 40)
    assert red["notes"] == {"dropped": [], "repaired": []}
