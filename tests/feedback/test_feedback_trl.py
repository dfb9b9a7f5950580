"""Exported TRL sets train: one real SFTTrainer / DPOTrainer step on the tiny VARCO-shaped model
(LlavaOnevision) on CPU, from the files the export wrote."""

from __future__ import annotations

from pathlib import Path

import pytest

from varco_labeler.feedback.export import ImageReader, export
from varco_labeler.feedback.pairing import Example
from varco_labeler.regions import Region, regions_to_varco
from varco_labeler.varco import Box, Task, prompt_for

pytest.importorskip("trl", reason="the training tests need the train extra (trl, peft)")
torch = pytest.importorskip("torch")


def examples() -> list[Example]:
    """Two corrected OCR tasks, one red and one blue image."""
    out = []
    for task_id, image, word, wrong in ((1, "a.png", "STOP", "ST0P"), (2, "b.png", "EXIT", "EX1T")):
        human = (Region(Box(0.2, 0.3, 0.8, 0.6), text=word),)
        model = (Region(Box(0.2, 0.3, 0.8, 0.6), text=wrong),)
        out.append(
            Example(
                task_id=task_id,
                project=1,
                image=image,
                kind=Task.OCR,
                prompt=prompt_for(Task.OCR),
                answer=regions_to_varco(human, Task.OCR),
                regions=human,
                model_answer=regions_to_varco(model, Task.OCR),
                model_regions=model,
                model_version="tiny",
            )
        )
    return out


def one_step(trainer_name: str, fmt: str, model_dir: Path, data_dir: Path, out: Path) -> dict:
    import datasets
    import trl
    from transformers import AutoModelForImageTextToText, AutoProcessor

    train = datasets.load_dataset(str(data_dir), cache_dir=str(out / "cache"))["train"]
    config_class = getattr(trl, trainer_name.replace("Trainer", "Config"))
    args = config_class(
        output_dir=str(out / fmt),
        max_steps=1,
        per_device_train_batch_size=2,
        learning_rate=1e-4,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        dataloader_num_workers=0,
    )
    trainer = getattr(trl, trainer_name)(
        model=AutoModelForImageTextToText.from_pretrained(model_dir),
        args=args,
        train_dataset=train,
        processing_class=AutoProcessor.from_pretrained(model_dir),
    )
    before = [p.detach().clone() for p in trainer.model.parameters() if p.requires_grad]
    result = trainer.train()
    after = [p.detach() for p in trainer.model.parameters() if p.requires_grad]
    assert result.global_step == 1
    assert any(not torch.equal(b, a) for b, a in zip(before, after, strict=True)), "no update"
    return result.metrics


@pytest.mark.parametrize(("fmt", "trainer"), [("trl-sft", "SFTTrainer"), ("trl-dpo", "DPOTrainer")])
def test_exported_set_trains_one_step(
    fmt: str, trainer: str, tiny_model_dir: Path, tmp_path: Path, png_images: ImageReader
) -> None:
    summary = export(examples(), fmt, tmp_path / fmt, val_fraction=0.0, images=png_images)
    assert summary["written"]["train"] == 2
    metrics = one_step(trainer, fmt, tiny_model_dir, tmp_path / fmt, tmp_path)
    assert metrics["train_loss"] > 0
