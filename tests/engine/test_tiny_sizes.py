"""Real-size random models (``tiny-model DIR --size 14b|1.7b --random``): the published
architectures, checked without allocating them, and a 1.7B model built and run on this CPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from varco_labeler.engine.random_model import (
    ARCHITECTURES,
    grid_pinpoints,
    model_config,
    parameter_count,
)


def test_14b_has_the_published_architecture_of_varco_vision_14b_hf() -> None:
    config = model_config("14b")
    text, vision = config.text_config, config.vision_config
    assert config.model_type == "llava_onevision"
    # Qwen2.5-14B
    assert text.model_type == "qwen2"
    assert (text.num_hidden_layers, text.hidden_size, text.intermediate_size) == (48, 5120, 13824)
    assert (text.num_attention_heads, text.num_key_value_heads) == (40, 8)
    assert text.vocab_size == 152064 and not text.tie_word_embeddings
    # SigLIP so400m/14 at 384 px, the penultimate of its 27 layers read
    assert vision.model_type == "siglip_vision_model"
    assert (vision.num_hidden_layers, vision.hidden_size, vision.intermediate_size) == (
        26,
        1152,
        4304,
    )
    assert (vision.image_size, vision.patch_size) == (384, 14)
    assert (vision.image_size // vision.patch_size) ** 2 == 729  # vision tokens per tile
    # anyres_max_9: 384..2304 px grids, as the original config lists them
    assert len(config.image_grid_pinpoints) == 36
    assert config.image_grid_pinpoints[0] == [384, 384]
    assert config.image_grid_pinpoints[-1] == [2304, 2304]
    # 30.37 GB of bf16 safetensors published: ~15.19 billion parameters (counted on meta)
    published = ARCHITECTURES["14b"].published_parameters
    assert published is not None
    assert abs(parameter_count(config) - published) / published < 0.01


def test_1_7b_has_qwen3_1_7b_and_a_siglip2_tower() -> None:
    config = model_config("1.7b")
    text, vision = config.text_config, config.vision_config
    assert text.model_type == "qwen3"
    assert (text.num_hidden_layers, text.hidden_size, text.intermediate_size) == (28, 2048, 6144)
    assert (text.num_attention_heads, text.num_key_value_heads, text.head_dim) == (16, 8, 128)
    assert text.vocab_size == 151936 and text.tie_word_embeddings
    assert (vision.image_size, vision.patch_size, vision.hidden_size) == (384, 16, 1152)
    assert 2.0e9 < parameter_count(config) < 2.3e9


def test_a_smaller_tile_keeps_every_weight_but_the_position_table() -> None:
    small = model_config("1.7b", image_size=64)
    assert small.vision_config.image_size == 64
    assert small.image_grid_pinpoints == grid_pinpoints(64, 6)
    assert small.text_config.to_dict() == model_config("1.7b").text_config.to_dict()


def test_random_needs_a_size_and_a_size_needs_random(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from varco_labeler.cli import main

    for flags in (["--size", "1.7b"], ["--random"], ["--size", "1.7b", "--random", "--steps", "3"]):
        assert main(["tiny-model", str(tmp_path / "m"), *flags]) == 2, flags
        assert "error:" in capsys.readouterr().err
        assert not (tmp_path / "m").exists()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_random_1_7b_model_builds_on_cpu_and_predicts_an_image(tmp_path: Path) -> None:
    """Real widths, depths and vocabulary; 64 px tiles instead of 384 so that one image is
    16 vision tokens a tile, not 576 (seconds, not minutes, on two cores)."""
    import torch
    from PIL import Image

    from varco_labeler.engine.base import Request
    from varco_labeler.engine.transformers_engine import TransformersEngine
    from varco_labeler.varco import Task, prompt_for

    out = tmp_path / "varco-1.7b-random"
    argv = [sys.executable, "-m", "varco_labeler.cli", "tiny-model", str(out)]
    build = subprocess.run(
        [*argv, "--size", "1.7b", "--random", "--image-size", "64"],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    engine = TransformersEngine(out, device="cpu", dtype=torch.bfloat16, max_batch_size=1)
    assert engine.profile.name == "NCSOFT/VARCO-VISION-2.0-1.7B"
    assert sum(p.numel() for p in engine.model.parameters()) > 2.0e9
    image = Image.new("RGB", (96, 64), (200, 40, 40))
    request = Request(image, prompt_for(Task.GROUNDING), Task.GROUNDING, max_new_tokens=3)
    (result,) = engine.generate([request])
    assert 1 <= result.completion_tokens <= 3
    assert result.prompt_tokens > 16  # the image's vision tokens went in with the prompt
