"""Real-size VARCO-VISION models with random weights: the published architecture, no download.

``varco-labeler tiny-model DIR --size 14b --random`` writes a LlavaOnevision checkpoint with the
layer counts, widths, vocabulary size and image geometry of ``NCSOFT/VARCO-VISION-14B-HF``
(Qwen2.5-14B + SigLIP so400m/14 at 384 px, anyres up to 6x6 tiles), ``--size 1.7b`` those of
``NCSOFT/VARCO-VISION-2.0-1.7B`` (Qwen3-1.7B + SigLIP2 so400m/16 at 384 px). Its weights are
random, so its answers are noise, but every matrix has the real shape: on a GPU it costs the real
memory and time per token, which is what ``python -m bench --only batching --model DIR`` measures
(forcing a fixed number of new tokens). The offline byte tokenizer of the tiny model is mapped
into the real vocabulary size (its ids are the first few hundred of it).

Sources of the numbers (the checks in tests/engine/test_tiny_sizes.py compare against them):
Qwen2.5-14B's and Qwen3-1.7B's published ``config.json`` (text model); SigLIP so400m's
(vision tower: 27 layers, of which LLaVA-OneVision keeps 26 as it reads the penultimate layer's
features); the original NCSOFT/VARCO-VISION-14B ``config.json`` (hidden size 5120, 384 px tiles,
``anyres_max_9`` with 384..2304 px grid pinpoints); and its safetensors, 30.4 GB in bf16, so
~15.2 billion parameters. The 2.0-1.7B vision tower is assumed to have the same depth as the 14B
one (SigLIP2 so400m has SigLIP so400m's shape, with 16 px patches).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import (
    GenerationConfig,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    Qwen2Config,
    Qwen3Config,
    SiglipVisionConfig,
)

from varco_labeler.engine.profiles import write_profile
from varco_labeler.engine.tiny import END_OF_TURN, IMAGE_TOKEN, _processor

Size = Literal["14b", "1.7b"]


@dataclass(frozen=True)
class Architecture:
    """One published checkpoint's shape."""

    checkpoint: str
    text_model: Literal["qwen2", "qwen3"]
    text: dict[str, Any]
    vision: dict[str, Any]
    max_tiles: int  # anyres grid: up to max_tiles x max_tiles tiles of vision image_size
    published_parameters: float | None  # from the published weights' size, where known

    @property
    def image_size(self) -> int:
        return int(self.vision["image_size"])

    @property
    def patch_size(self) -> int:
        return int(self.vision["patch_size"])


_SIGLIP_SO400M = {
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 26,
    "num_attention_heads": 16,
    "image_size": 384,
    "vision_use_head": False,
}

ARCHITECTURES: dict[str, Architecture] = {
    "14b": Architecture(
        checkpoint="NCSOFT/VARCO-VISION-14B-HF",
        text_model="qwen2",
        text={
            "vocab_size": 152064,
            "hidden_size": 5120,
            "intermediate_size": 13824,
            "num_hidden_layers": 48,
            "num_attention_heads": 40,
            "num_key_value_heads": 8,
            "max_position_embeddings": 32768,
            "rope_theta": 1_000_000.0,
            "rms_norm_eps": 1e-6,
            "tie_word_embeddings": False,
        },
        vision={**_SIGLIP_SO400M, "patch_size": 14},
        max_tiles=6,
        published_parameters=30.37e9 / 2,  # bytes of bf16 safetensors / 2
    ),
    "1.7b": Architecture(
        checkpoint="NCSOFT/VARCO-VISION-2.0-1.7B",
        text_model="qwen3",
        text={
            "vocab_size": 151936,
            "hidden_size": 2048,
            "intermediate_size": 6144,
            "num_hidden_layers": 28,
            "num_attention_heads": 16,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "max_position_embeddings": 40960,
            "rope_theta": 1_000_000.0,
            "rms_norm_eps": 1e-6,
            "tie_word_embeddings": True,
        },
        vision={**_SIGLIP_SO400M, "patch_size": 16},
        max_tiles=6,
        published_parameters=None,
    ),
}


def grid_pinpoints(image_size: int, max_tiles: int) -> list[list[int]]:
    """anyres grid resolutions: every (rows, columns) of 1..max_tiles tiles of ``image_size``."""
    sides = [image_size * tiles for tiles in range(1, max_tiles + 1)]
    return [[height, width] for height in sides for width in sides]


def model_config(size: Size, image_size: int | None = None) -> LlavaOnevisionConfig:
    """The LlavaOnevision config of a real-size model with the byte tokenizer's token ids.

    ``image_size`` replaces the tile resolution (keeping the patch size): for a CPU test only,
    since the number of vision tokens, and so the work per image, falls with it.
    """
    architecture = ARCHITECTURES[size]
    tile = image_size or architecture.image_size
    tokenizer = _processor().tokenizer
    text_class = Qwen2Config if architecture.text_model == "qwen2" else Qwen3Config
    return LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(**{**architecture.vision, "image_size": tile}),
        text_config=text_class(**architecture.text),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_grid_pinpoints=grid_pinpoints(tile, architecture.max_tiles),
    )


def parameter_count(config: LlavaOnevisionConfig) -> int:
    """Parameters of the model a config describes, counted on the meta device (nothing is
    allocated, so the 14B model can be checked on any machine)."""
    with torch.device("meta"):
        model = LlavaOnevisionForConditionalGeneration(config)
    return sum(parameter.numel() for parameter in model.parameters())


def build_random_model(
    out_dir: Path,
    size: Size,
    *,
    image_size: int | None = None,
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
) -> Path:
    """Write a randomly initialised real-size model and its processor into ``out_dir``.

    Built in ``dtype`` (bf16: half the memory of fp32; 1.7b takes ~4.5 GB, 14b ~30 GB of RAM
    and disk). The checkpoint's profile is written with it, so the engine prompts it as the
    real one.
    """
    out_dir = Path(out_dir)
    architecture = ARCHITECTURES[size]
    tile = image_size or architecture.image_size
    config = model_config(size, image_size)
    processor = _processor(
        tile, architecture.patch_size, grid_pinpoints(tile, architecture.max_tiles)
    )
    # Drawn on the GPU when there is one: 15 billion random numbers take minutes on a small CPU.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = _random_weights(config, dtype, seed, device)
    tokenizer = processor.tokenizer
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.convert_tokens_to_ids(END_OF_TURN),
        pad_token_id=tokenizer.pad_token_id,
        # The byte tokenizer names only the first few hundred ids of the real vocabulary: never
        # generate the others (the logits are still computed over all of it, as the real model's).
        suppress_tokens=list(range(len(tokenizer), config.text_config.vocab_size)),
    )
    model.eval()
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    write_profile(out_dir, architecture.checkpoint)
    return out_dir


def _random_weights(
    config: LlavaOnevisionConfig, dtype: torch.dtype, seed: int, device: str
) -> LlavaOnevisionForConditionalGeneration:
    """The model with weights drawn uniformly at the usual 0.02 standard deviation, norms at 1.

    Built empty on the meta device, then filled here: transformers' own initialisation takes
    minutes at this size on a small CPU (truncated normals), this takes seconds. Buffers (rotary
    frequencies, position ids) are not saved: loading computes them again.
    """
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            model = LlavaOnevisionForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(default_dtype)
    model = model.to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    bound = 0.02 * 3**0.5  # uniform on [-b, b] has standard deviation b / sqrt(3)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.ndim == 1:  # norms' scales start at 1, biases at 0
                parameter.fill_(1.0 if "norm" in name else 0.0)
            else:
                parameter.uniform_(-bound, bound, generator=generator)
    return model
