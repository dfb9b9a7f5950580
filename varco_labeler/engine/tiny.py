"""An offline, seconds-to-build VARCO-shaped checkpoint for tests and benchmarks.

It has the real checkpoint's shape where the engine can tell: a LlavaOnevision model (SigLIP vision
tower + Qwen2/Qwen3 text model) saved with its processor, a byte-level Qwen tokenizer carrying the
VARCO tag tokens, and the VARCO-VISION-14B-HF ChatML chat template. It loads through the same
``AutoModelForImageTextToText`` / ``AutoProcessor`` path as ``NCSOFT/VARCO-VISION-14B-HF``.

Its weights are random, then briefly taught a few answers (``TEACHING``) so that it emits parseable
VARCO output that depends on the image: tests can then check parsing, region scores and that the
vision path is alive, without any download. Other answers can be taught from a JSON Lines file
(``read_lessons``; ``varco-labeler tiny-model DIR --lessons FILE``), e.g. one-box-per-character OCR
like VARCO-VISION-2.0-1.7B-OCR. Everything here needs the ``worker`` extra (torch).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from PIL import Image, UnidentifiedImageError
from tokenizers import pre_tokenizers
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessor,
    LlavaOnevisionProcessor,
    LlavaOnevisionVideoProcessor,
    Qwen2Config,
    Qwen2Tokenizer,
    Qwen3Config,
    SiglipVisionConfig,
)

from varco_labeler.varco import prompt_for

TextModel = Literal["qwen2", "qwen3"]

# The VARCO-VISION-14B-HF chat template, as published with the checkpoint.
CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% else %}{{ '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}{% endif %}"
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\\n' }}{% endfor %}"
    "{# Render all text next #}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] }}{% endfor %}"
    "{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] }}{% endgeneration %}{% endfor %}"
    "{% endif %}{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

PAD_TOKEN = "<|endoftext|>"
END_OF_TURN = "<|im_end|>"
IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = (
    PAD_TOKEN,
    "<|im_start|>",
    END_OF_TURN,
    IMAGE_TOKEN,
    "<video>",  # the processor looks this token up even for images
    "<gro>",
    "<ocr>",
    "<obj>",
    "</obj>",
    "<bbox>",
    "</bbox>",
    "<delim>",
    "<char>",
    "</char>",
)

# Small enough for fast CPU tests, large enough for anyres tiling: a 2x2 grid of 8 px patches per
# tile, and tiles of 32 px arranged up to 2x2.
IMAGE_SIZE = 32
PATCH_SIZE = 8
GRID_PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]

# The longest sequence (image + chat + answer tokens) the text model takes. Rotary positions cost
# nothing per position, so this is generous: with one byte per token, a 40-character OCR answer of
# `<char>S</char><bbox>0.123, 0.345, 0.234, 0.678</bbox>` items is about 1,300 tokens.
MAX_POSITIONS = 8192

Colour = tuple[int, int, int]


@dataclass(frozen=True)
class Lesson:
    """An answer the tiny model is taught to give for an image and a prompt.

    ``image`` is a solid colour (taught on ``solid_image(colour)``) or a PIL image. ``origin`` says
    where the lesson came from (``FILE line N``), for error messages.
    """

    image: Colour | Image.Image
    prompt: str
    answer: str
    origin: str = field(default="", compare=False)

    def picture(self) -> Image.Image:
        """The RGB image taught on."""
        if isinstance(self.image, Image.Image):
            return self.image.convert("RGB")
        return solid_image(self.image)


RED, BLUE = (220, 30, 30), (30, 30, 220)
GROUNDING, OCR = prompt_for("grounding"), prompt_for("ocr")
TEACHING = (
    Lesson(RED, GROUNDING, "A <obj>red cat</obj><bbox>0.1, 0.2, 0.5, 0.9</bbox> sits."),
    Lesson(
        BLUE,
        GROUNDING,
        "<obj>two dogs</obj><bbox>0.05, 0.1, 0.4, 0.8<delim>0.6, 0.1, 0.95, 0.8</bbox> play.",
    ),
    Lesson(RED, OCR, "<char>STOP</char><bbox>0.2, 0.3, 0.8, 0.6</bbox>"),
    Lesson(BLUE, OCR, "<char>EXIT</char><bbox>0.1, 0.1, 0.9, 0.4</bbox>"),
)


MIN_TEACHING_STEPS = 150
_LESSON_KEYS = ("image", "prompt", "answer")


def solid_image(colour: Colour, size: tuple[int, int] = (48, 40)) -> Image.Image:
    """A plain image of one colour; the tiny model was taught on these."""
    return Image.new("RGB", size, colour)


def read_lessons(path: str | Path) -> list[Lesson]:
    """Lessons from a JSON Lines file: ``{"image": PATH, "prompt": TEXT, "answer": TEXT}`` a line.

    Relative image paths resolve against the file's folder; images are converted to RGB. Blank
    lines are skipped. Raises ``ValueError`` naming the file and line for a bad line or image, or
    for a file without lessons, and ``OSError`` if the file cannot be read.
    """
    path = Path(path)
    lessons = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                lessons.append(_lesson(path, number, line))
    if not lessons:
        raise ValueError(f"{path}: no lessons; expected one JSON object per line: {_EXPECTED}")
    return lessons


_EXPECTED = '{"image": PATH, "prompt": TEXT, "answer": TEXT}'


def _lesson(path: Path, number: int, line: str) -> Lesson:
    where = f"{path} line {number}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where}: not JSON ({error}); expected {_EXPECTED}") from None
    if not isinstance(record, dict):
        raise ValueError(
            f"{where}: expected a JSON object {_EXPECTED}, got {type(record).__name__}"
        )
    missing = [key for key in _LESSON_KEYS if key not in record]
    if missing:
        raise ValueError(f"{where}: missing {', '.join(map(repr, missing))}; expected {_EXPECTED}")
    unknown = sorted(set(record) - set(_LESSON_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown {', '.join(map(repr, unknown))}; expected {_EXPECTED}")
    for key in _LESSON_KEYS:
        if not isinstance(record[key], str):
            kind = type(record[key]).__name__
            raise ValueError(f"{where}: {key!r} must be a string, got {kind}; expected {_EXPECTED}")
    image_path = path.parent / record["image"]  # an absolute image path stays as it is
    try:
        with Image.open(image_path) as opened:
            image = opened.convert("RGB")
    except FileNotFoundError:
        raise ValueError(f"{where}: image not found: {image_path}") from None
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"{where}: expected an image file: {image_path} ({error})") from None
    return Lesson(image, record["prompt"], record["answer"], origin=where)


def default_teaching_steps(lessons: Sequence[Lesson]) -> int:
    """The default number of teaching steps: 150 per 1,000 answer tokens, at least 150.

    Tokens are bytes, and tags such as ``<char>`` one token each; all lessons count, as they share
    the model. Measured on one CPU thread: 150 steps (4 s) teach the built-in lessons or a 4-char
    OCR answer; one 40-char OCR answer with 3-decimal boxes (1,240 tokens) needs 150 (100 fail),
    four 20-char ones (2,480 tokens) 300 (150 fail). Each step costs time in proportion to the
    lessons times the longest one (a 40-char OCR lesson: about 0.2 s a step).
    """
    tokenizer = _processor().tokenizer
    tokens = sum(
        len(tokenizer(lesson.answer + END_OF_TURN, add_special_tokens=False)["input_ids"])
        for lesson in lessons
    )
    per_thousand = -(-tokens * MIN_TEACHING_STEPS // 1000)  # rounded up
    return max(MIN_TEACHING_STEPS, -(-per_thousand // 10) * 10)


def build_tiny_model(
    out_dir: Path,
    *,
    text_model: TextModel = "qwen2",
    seed: int = 0,
    lessons: Sequence[Lesson] = TEACHING,
    teaching_steps: int | None = None,
) -> Path:
    """Build, teach and save a tiny VARCO-shaped checkpoint in ``out_dir``; return ``out_dir``.

    ``lessons=()`` leaves the weights random (the output is then byte noise).
    ``teaching_steps=None`` takes ``default_teaching_steps(lessons)``. Raises ``ValueError`` if a
    lesson is longer than the model takes (``MAX_POSITIONS`` tokens with the image and template).
    """
    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    processor = _processor()
    tokenizer = processor.tokenizer
    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(
            image_size=IMAGE_SIZE,
            patch_size=PATCH_SIZE,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            vision_use_head=False,
        ),
        text_config=_text_config(text_model, vocab_size=len(tokenizer)),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        vision_feature_select_strategy="full",
        image_grid_pinpoints=GRID_PINPOINTS,
    )
    model = LlavaOnevisionForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    if lessons:
        # One thread: the matrices are tiny, and extra threads only spin against other processes
        # (measured 4 s with one thread, 15-35 s with two on a busy 2-core machine).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            steps = (
                teaching_steps if teaching_steps is not None else default_teaching_steps(lessons)
            )
            _teach(model, processor, lessons, steps)
        finally:
            torch.set_num_threads(threads)
    model.eval()
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def load_tiny_model(path: Path) -> tuple[torch.nn.Module, LlavaOnevisionProcessor]:
    """Load a tiny checkpoint the way a real one is loaded."""
    return AutoModelForImageTextToText.from_pretrained(path), AutoProcessor.from_pretrained(path)


def _processor(
    image_size: int = IMAGE_SIZE,
    patch_size: int = PATCH_SIZE,
    grid_pinpoints: Sequence[Sequence[int]] = GRID_PINPOINTS,
) -> LlavaOnevisionProcessor:
    """The byte-level processor; the image geometry is the tiny model's unless given (a
    real-size model, engine.random_model, takes the real checkpoint's)."""
    # Every byte is a token and there are no merges: any text round-trips, and the vocabulary stays
    # a few hundred entries. The special tokens are single tokens, as in the real tokenizer.
    byte_symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: index for index, symbol in enumerate(byte_symbols)}
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=[],
        eos_token=END_OF_TURN,
        pad_token=PAD_TOKEN,
        unk_token=PAD_TOKEN,
        additional_special_tokens=list(SPECIAL_TOKENS),
        # Only a constructor argument survives save/load; batched generation needs left padding.
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
    )
    pinpoints = [list(pinpoint) for pinpoint in grid_pinpoints]
    image_processor = LlavaOnevisionImageProcessor(
        size={"height": image_size, "width": image_size}, image_grid_pinpoints=pinpoints
    )
    return LlavaOnevisionProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        # Unused, but the processor requires one; sized like the images for consistency.
        video_processor=LlavaOnevisionVideoProcessor(
            size={"height": image_size, "width": image_size}
        ),
        num_image_tokens=(image_size // patch_size) ** 2,
        vision_feature_select_strategy="full",
        chat_template=CHAT_TEMPLATE,
    )


def _text_config(text_model: TextModel, *, vocab_size: int) -> Qwen2Config | Qwen3Config:
    shape = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=False,
    )
    if text_model == "qwen2":
        return Qwen2Config(**shape)
    if text_model == "qwen3":
        return Qwen3Config(head_dim=16, **shape)
    raise ValueError(f"unknown text model {text_model!r}; use 'qwen2' or 'qwen3'")


def _teach(
    model: LlavaOnevisionForConditionalGeneration,
    processor: LlavaOnevisionProcessor,
    lessons: Sequence[Lesson],
    steps: int,
) -> None:
    """Overfit the lessons with loss on the answer tokens only, as SFT would."""
    prompts = [_chat(processor, lesson.prompt) for lesson in lessons]
    answers = [lesson.answer + END_OF_TURN for lesson in lessons]
    images = [lesson.picture() for lesson in lessons]
    for index, (lesson, image, prompt, answer) in enumerate(
        zip(lessons, images, prompts, answers, strict=True)
    ):
        length = processor(images=[image], text=[prompt + answer], return_tensors="pt")[
            "input_ids"
        ].shape[1]
        if length > MAX_POSITIONS:
            where = lesson.origin or f"lesson {index + 1}"
            raise ValueError(
                f"{where}: too long for the tiny model: image, prompt and answer take {length} "
                f"tokens (one per byte and tag), over its {MAX_POSITIONS}"
            )
    batch = processor(
        images=images,
        text=[p + a for p, a in zip(prompts, answers, strict=True)],
        return_tensors="pt",
        padding=True,
    )
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = -100
    for row, answer in enumerate(answers):
        answer_length = len(processor.tokenizer(answer, add_special_tokens=False)["input_ids"])
        labels[row, : labels.shape[1] - answer_length] = -100  # left padding: answers end rows
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimiser.step()
        optimiser.zero_grad()


def _chat(processor: LlavaOnevisionProcessor, prompt: str) -> str:
    conversation = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}
    ]
    return processor.apply_chat_template(conversation, add_generation_prompt=True)
