"""``train`` unchanged under ``accelerate launch`` with two processes (data parallel over gloo on
the CPU): both train, the main one saves, merges, evaluates and writes the summary, and the
model it wrote loads and predicts."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from varco_labeler.feedback.export import ImageReader, export, split_of

pytest.importorskip("trl", reason="the training tests need the train extra (trl, peft)")
pytest.importorskip("accelerate")
pytest.importorskip("torch")

from test_feedback_train import GROUNDING, corrected

from varco_labeler.engine.base import Request
from varco_labeler.engine.tiny import RED, solid_image
from varco_labeler.engine.transformers_engine import TransformersEngine
from varco_labeler.varco import Task


def test_two_processes_train_one_model(
    tiny_model_dir: Path, tmp_path: Path, png_images: ImageReader
) -> None:
    red, blue = (hashlib.sha256(png_images.read_bytes(r)).hexdigest() for r in ("a.png", "b.png"))
    seed = next(s for s in range(50) if split_of(red, 0.5, s) != split_of(blue, 0.5, s))
    export(
        [corrected(i) for i in range(1, 9)],
        "trl-sft",
        tmp_path / "sft",
        0.5,
        seed=seed,
        images=png_images,
    )
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    assert accelerate, "accelerate's launcher is installed with the worker extra"
    out = tmp_path / "run"
    command = [
        accelerate, "launch",
        # Two processes through torchrun; without a GPU the trainer runs them on the CPU (gloo).
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no",
        "-m", "varco_labeler.cli", "train", str(tmp_path / "sft"),
        "--base-model", str(tiny_model_dir), "--out", str(out),
        "--max-steps", "2", "--batch-size", "1", "--grad-accum", "1",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 2
    # One summary on stdout: the main process speaks, the other only trained.
    assert done.stdout.count('"hyperparameters"') == 1
    assert summary["evaluation"]["examples"] == summary["validation_examples"] == 4
    engine = TransformersEngine(out / "model", device="cpu")
    assert engine.model_version == summary["model_version"]
    (result,) = engine.generate([Request(solid_image(RED), GROUNDING, Task.GROUNDING, 64)])
    assert "<bbox>" in result.raw


@pytest.mark.parametrize(("name", "kind"), [("fsdp", "FSDP"), ("deepspeed-zero3", "DEEPSPEED")])
def test_the_documented_multi_gpu_configs_are_accelerate_configs(name: str, kind: str) -> None:
    # Read by accelerate's own loader, as `accelerate launch --config_file` reads them; running
    # them needs GPUs.
    from accelerate.commands.config.config_args import load_config_from_file

    root = Path(__file__).resolve().parents[2]
    config = load_config_from_file(str(root / "configs" / "accelerate" / f"{name}.yaml"))
    assert str(config.distributed_type).endswith(kind) and config.mixed_precision == "bf16"
