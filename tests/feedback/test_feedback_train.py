"""``feedback.train`` on the tiny VARCO-shaped model on CPU: real TRL SFT and DPO steps with LoRA
(and one full fine-tune), from sets written by ``feedback.export``; the merged model is served by
the engine."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from varco_labeler.feedback.export import ImageReader, export, split_of
from varco_labeler.feedback.pairing import Example
from varco_labeler.regions import Region, regions_to_varco
from varco_labeler.varco import Box, Task, prompt_for

pytest.importorskip("trl", reason="the training tests need the train extra (trl, peft)")
torch = pytest.importorskip("torch")

from varco_labeler.engine.base import Request  # noqa: E402  (needs torch)
from varco_labeler.engine.profiles import (  # noqa: E402
    GENERIC,
    PROFILE_FILE,
    PROFILES,
    model_version,
    profile_for,
    write_profile,
)
from varco_labeler.engine.tiny import BLUE, RED, solid_image  # noqa: E402
from varco_labeler.engine.transformers_engine import TransformersEngine  # noqa: E402
from varco_labeler.feedback.train import (  # noqa: E402
    SUMMARY_FILE,
    TrainError,
    train,
)

GROUNDING = prompt_for(Task.GROUNDING)


def corrected(task_id: int) -> Example:
    """A grounding task whose box the annotator moved: red images (a.png) hold a Cat, blue ones
    a Remote (PngImages serves the colours)."""
    red = task_id % 2 == 1
    label = "Cat" if red else "Remote"
    human = (Region(Box(0.1, 0.2, 0.5, 0.9), label=label),)
    model = (Region(Box(0.6, 0.6, 0.9, 0.9), label=label),)
    return Example(
        task_id=task_id,
        project=1,
        image=f"{task_id}-{'a' if red else 'b'}.png",
        kind=Task.GROUNDING,
        prompt=GROUNDING,
        answer=regions_to_varco(human, Task.GROUNDING),
        regions=human,
        model_answer=regions_to_varco(model, Task.GROUNDING),
        model_regions=model,
        model_version="tiny",
    )


def split_seed(images: ImageReader) -> int:
    """A seed that holds out one of the two pictures (red, blue) and trains on the other."""
    red, blue = (hashlib.sha256(images.read_bytes(r)).hexdigest() for r in ("a.png", "b.png"))
    return next(s for s in range(50) if split_of(red, 0.5, s) != split_of(blue, 0.5, s))


def tensors(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for path in sorted(directory.glob("*.safetensors")):
        out.update(load_file(path))
    return out


def generate(model_dir: Path, version: str) -> list[str]:
    engine = TransformersEngine(model_dir, device="cpu", model_version=version)
    requests = [Request(solid_image(c), GROUNDING, Task.GROUNDING, 64) for c in (RED, BLUE)]
    return [result.raw for result in engine.generate(requests)]


def test_lora_sft_writes_adapter_merged_model_and_summary(
    tiny_model_dir: Path, tmp_path: Path, png_images: ImageReader
) -> None:
    # Four tasks, split so that both splits have some: the validation one gives an eval loss.
    examples = [corrected(i) for i in range(1, 5)]
    seed = split_seed(png_images)
    sft = export(examples, "trl-sft", tmp_path / "sft", 0.5, seed=seed, images=png_images)
    out = tmp_path / "out"
    summary = train(
        tmp_path / "sft",
        tiny_model_dir,
        out,
        max_steps=3,
        batch_size=2,
        gradient_accumulation=1,
        logging_steps=1,
    )

    assert summary.method == "sft" and summary.lora and summary.steps == 3
    assert summary.model_version.startswith(f"{tiny_model_dir.name}+sft-")
    validation = sft["written"]["validation"]
    assert validation == 2  # the two tasks of the held-out picture
    assert summary.train_examples == sft["written"]["train"] == 4 - validation
    assert summary.validation_examples == validation and summary.eval_loss is not None
    assert summary.processes == 1
    # Base and trained model, each scored on the held-out picture only.
    evaluation = summary.evaluation
    assert evaluation is not None
    assert (evaluation["split"], evaluation["examples"]) == ("validation", validation)
    assert evaluation["base"]["model_version"] == tiny_model_dir.name
    assert evaluation["trained"]["model_version"] == summary.model_version
    assert {"micro", "map", "labels", "confusion", "ocr"} <= evaluation["trained"].keys()
    assert summary.final_loss is not None and summary.final_loss > 0
    saved = json.loads((out / SUMMARY_FILE).read_text())
    assert saved == summary.to_json() == json.loads((out / "model" / SUMMARY_FILE).read_text())
    assert sorted(p.name for p in out.iterdir()) == ["adapter", "model", SUMMARY_FILE]
    assert model_version(out / "model") == summary.model_version
    assert model_version(tiny_model_dir) == tiny_model_dir.name
    # The base's profile travels with the model (the tiny base has the generic one).
    assert json.loads((out / "model" / PROFILE_FILE).read_text()) == {"profile": "generic"}
    assert summary.profile == "generic" and profile_for(out / "model") is GENERIC
    assert not (out / "adapter" / PROFILE_FILE).exists()

    # The adapter: LoRA on the language model's projections, nothing on the vision tower.
    adapter = out / "adapter"
    assert (adapter / "adapter_config.json").is_file()
    lora_weights = tensors(adapter)
    assert lora_weights and all("lora_" in name for name in lora_weights)
    assert all("language_model" in name for name in lora_weights)
    projections = {name.split(".lora_")[0].rsplit(".", 1)[1] for name in lora_weights}
    assert projections == set("q_proj k_proj v_proj o_proj gate_proj up_proj down_proj".split())

    # The merged model: plain weights (no LoRA left), changed where the adapter was, the vision
    # tower untouched; its processor pads on the left.
    base, merged = tensors(tiny_model_dir), tensors(out / "model")
    assert merged.keys() == base.keys()
    changed = {name for name in base if not torch.equal(base[name], merged[name])}
    assert changed and all("language_model" in name for name in changed)
    from transformers import AutoProcessor

    assert AutoProcessor.from_pretrained(out / "model").tokenizer.padding_side == "left"
    red, blue = generate(out / "model", summary.model_version)
    assert "<bbox>" in red and red != blue  # still VARCO output, still looking at the image


def test_dpo_with_lora_is_the_default_for_a_dpo_export(
    tiny_model_dir: Path, tmp_path: Path, png_images: ImageReader
) -> None:
    export([corrected(1), corrected(2)], "trl-dpo", tmp_path / "dpo", 0.0, images=png_images)
    summary = train(
        tmp_path / "dpo",
        tiny_model_dir,
        tmp_path / "out",
        max_steps=2,
        batch_size=2,
        gradient_accumulation=1,
        learning_rate=1e-3,
        model_version="tiny-dpo-test",
    )
    assert summary.method == "dpo" and summary.steps == 2 and summary.train_examples == 2
    assert summary.model_version == "tiny-dpo-test" and summary.hyperparameters["beta"] == 0.1
    assert (tmp_path / "out" / "adapter" / "adapter_config.json").is_file()
    red, blue = generate(tmp_path / "out" / "model", summary.model_version)
    assert "<bbox>" in red and red != blue


def test_full_fine_tune_leaves_the_vision_tower(
    tiny_model_dir: Path, tmp_path: Path, png_images: ImageReader
) -> None:
    export([corrected(1)], "trl-sft", tmp_path / "sft", 0.0, images=png_images)
    summary = train(
        tmp_path / "sft",
        tiny_model_dir,
        tmp_path / "out",
        lora=False,
        max_steps=2,
        batch_size=1,
        gradient_accumulation=1,
        learning_rate=1e-3,
    )
    assert not summary.lora and summary.adapter_dir is None
    assert not (tmp_path / "out" / "adapter").exists()
    base, trained = tensors(tiny_model_dir), tensors(tmp_path / "out" / "model")
    changed = {name for name in base if not torch.equal(base[name], trained[name])}
    assert any("language_model" in name for name in changed)
    assert any("multi_modal_projector" in name for name in changed)
    assert not any("vision_tower" in name for name in changed)
    assert json.loads((tmp_path / "out" / "model" / PROFILE_FILE).read_text()) == {
        "profile": "generic"
    }


def test_the_trained_model_keeps_the_base_checkpoints_profile_whatever_it_is_called(
    tiny_model_dir: Path, tmp_path: Path, png_images: ImageReader
) -> None:
    ocr = PROFILES["NCSOFT/VARCO-VISION-2.0-1.7B-OCR"]
    base = shutil.copytree(tiny_model_dir, tmp_path / "base")  # the shared fixture stays as is
    write_profile(base, ocr)
    assert profile_for(base) is ocr
    export([corrected(1)], "trl-sft", tmp_path / "sft", 0.0, images=png_images)
    out = tmp_path / "runs" / "whatever-1"
    summary = train(tmp_path / "sft", base, out, max_steps=1, batch_size=1, gradient_accumulation=1)
    assert summary.profile == ocr.name
    assert json.loads((out / "model" / PROFILE_FILE).read_text()) == {"profile": ocr.name}
    assert profile_for(out / "model") is ocr
    # Copied anywhere under any name, it is still served as the OCR checkpoint.
    moved = shutil.copytree(out / "model", tmp_path / "my-finetune")
    assert profile_for(moved) is ocr
    assert profile_for(moved).ocr_min_long_side == 2304


def test_a_base_with_a_bad_profile_file_is_refused_before_training(
    tiny_model_dir: Path, tmp_path: Path, png_images: ImageReader
) -> None:
    export([corrected(1)], "trl-sft", tmp_path / "sft", 0.0, images=png_images)
    base = tmp_path / "base"
    base.mkdir()  # no weights needed: refused before they are loaded
    (base / PROFILE_FILE).write_text('{"profile": "VARCO-VISION-3"}')
    with pytest.raises(TrainError, match="unknown profile 'VARCO-VISION-3'"):
        train(tmp_path / "sft", base, tmp_path / "out", max_steps=1)
    assert not (tmp_path / "out").exists()


def test_what_is_not_a_trl_export_is_refused(tmp_path: Path, png_images: ImageReader) -> None:
    def refused(dataset: Path, match: str, **options: object) -> None:
        with pytest.raises(TrainError, match=match):
            # Refused before the base model is needed: it does not even exist.
            train(dataset, tmp_path / "no-model", tmp_path / "out", **options)  # type: ignore[arg-type]

    refused(tmp_path / "missing", "no such directory")
    (tmp_path / "empty").mkdir()
    refused(tmp_path / "empty", "not an export of varco-labeler")
    export([corrected(1)], "llava", tmp_path / "llava", 0.0, images=png_images)
    refused(tmp_path / "llava", "a llava export, with no data/train")
    export([corrected(1)], "hf", tmp_path / "hf", 0.0, images=png_images)
    refused(tmp_path / "hf", "neither trl-sft")
    export([corrected(1)], "trl-dpo", tmp_path / "dpo", 0.0, images=png_images)
    refused(tmp_path / "dpo", "it is a trl-dpo export: use method dpo", method="sft")
    refused(tmp_path / "dpo", "unknown method 'ppo'", method="ppo")
    assert not (tmp_path / "out").exists()  # refused before anything was written
