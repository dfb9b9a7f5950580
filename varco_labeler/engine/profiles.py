"""What differs between VARCO-VISION checkpoints, as data. Pure Python, no torch.

A profile says how to talk to one checkpoint: the system prompt, how many tokens each task may
need, how to prepare the image, and how to post-process the parse (2.0-OCR answers one box per
character; Label Studio users want words or lines).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType

from PIL import Image

from varco_labeler.engine.confidence import geometric_mean
from varco_labeler.varco import Box, Grounded, Item, OcrItem, Parsed, Task, Text

DEFAULT_MODEL = "NCSOFT/VARCO-VISION-14B-HF"
# What ``varco-labeler train`` writes beside the model it saves, with the version it gave it.
TRAIN_SUMMARY_FILE = "train_summary.json"

# Grounding descriptions run to a few hundred tokens; OCR of a dense page to thousands.
_MAX_NEW_TOKENS = MappingProxyType(
    {Task.GROUNDING: 1024, Task.OCR: 4096, Task.REFERRING: 512, Task.QUESTION: 1024}
)


class MergeLevel(StrEnum):
    """How far to merge per-character OCR boxes."""

    CHARACTER = "character"  # keep as emitted
    WORD = "word"
    LINE = "line"


@dataclass(frozen=True)
class Profile:
    """How to run one checkpoint.

    ``system_prompt=None`` keeps the checkpoint's chat template default (for 14B-HF that is
    "You are a helpful assistant."); no published VARCO checkpoint needs another, and the 14B-HF
    template renders an explicit system message twice, so set it only for checkpoints that need it.
    ``ocr_min_long_side`` upscales OCR images whose long side is shorter (the 2.0-OCR model card
    does this with 2304 px). ``ocr_merge`` merges one-box-per-character OCR into words or lines.
    """

    name: str
    system_prompt: str | None = None
    max_new_tokens: Mapping[Task, int] = field(default_factory=lambda: _MAX_NEW_TOKENS)
    ocr_min_long_side: int | None = None
    ocr_merge: MergeLevel = MergeLevel.CHARACTER

    def max_new_tokens_for(self, task: Task) -> int:
        return self.max_new_tokens[Task(task)]

    def conversation(self, prompt: str) -> list[dict]:
        """The chat messages for one image and prompt, as ``apply_chat_template`` takes them."""
        messages: list[dict] = []
        if self.system_prompt is not None:
            # A plain string: Qwen-style templates concatenate the system content as text.
            messages.append({"role": "system", "content": self.system_prompt})
        content = [{"type": "image"}, {"type": "text", "text": prompt}]
        messages.append({"role": "user", "content": content})
        return messages

    def prepare_image(self, image: Image.Image, task: Task) -> Image.Image:
        """RGB, and upscaled for OCR where the profile asks. Boxes are relative, so unaffected."""
        image = image.convert("RGB")
        if Task(task) is Task.OCR and self.ocr_min_long_side:
            image = upscale_to_long_side(image, self.ocr_min_long_side)
        return image

    def postprocess(
        self, parsed: Parsed, scores: Sequence[float | None], task: Task
    ) -> tuple[Parsed, list[float | None]]:
        if Task(task) is Task.OCR and self.ocr_merge is not MergeLevel.CHARACTER:
            return merge_characters(parsed, scores, self.ocr_merge)
        return parsed, list(scores)


PROFILES: Mapping[str, Profile] = MappingProxyType(
    {
        profile.name: profile
        for profile in (
            Profile("NCSOFT/VARCO-VISION-14B-HF"),
            Profile("NCSOFT/VARCO-VISION-2.0-14B"),
            Profile("NCSOFT/VARCO-VISION-2.0-1.7B"),
            Profile(
                "NCSOFT/VARCO-VISION-2.0-1.7B-OCR",
                max_new_tokens={**_MAX_NEW_TOKENS, Task.OCR: 8192},
                ocr_min_long_side=2304,
                ocr_merge=MergeLevel.WORD,
            ),
        )
    }
)
GENERIC = Profile("generic")


# A model directory may say which profile it takes (``train`` writes it), whatever it is called.
PROFILE_FILE = "varco_profile.json"


def profile_names() -> list[str]:
    """The names :func:`profile_named` and :data:`PROFILE_FILE` take: the known ones and generic."""
    return [*PROFILES, GENERIC.name]


def profile_named(name: str) -> Profile:
    """A known profile by its full name (``NCSOFT/VARCO-VISION-2.0-1.7B-OCR``), its short name
    (``VARCO-VISION-2.0-1.7B-OCR``) or ``generic``, case-insensitive; else ValueError."""
    wanted = name.strip().lower()
    for profile in (*PROFILES.values(), GENERIC):
        if wanted in (profile.name.lower(), profile.name.split("/")[-1].lower()):
            return profile
    raise ValueError(f"unknown profile {name!r}; choose one of {', '.join(profile_names())}")


def profile_for(model: str | Path, override: str | None = None) -> Profile:
    """The profile to run ``model`` with.

    ``override`` (a name :func:`profile_named` takes) wins. Else a local directory holding
    :data:`PROFILE_FILE` gets the profile that file names (an unreadable or unknown one is a
    ValueError). Else the name decides: a hub id or a local directory named like a known
    checkpoint (the last path component, so ``/models/VARCO-VISION-2.0-1.7B-OCR``), or a hub cache
    snapshot of one (``.../models--NCSOFT--VARCO-VISION-2.0-1.7B-OCR/snapshots/<rev>``); anything
    else gets the generic profile.
    """
    if override is not None:
        return profile_named(override)
    marker = Path(model) / PROFILE_FILE
    if marker.is_file():
        return _read_profile(marker)
    return _profile_by_name(str(model))


def write_profile(model_dir: str | Path, profile: Profile | str) -> Path:
    """Write :data:`PROFILE_FILE` into ``model_dir`` so the model loads with ``profile`` whatever
    its directory is called; return the file. Only known profiles (or generic) can be written."""
    name = profile.name if isinstance(profile, Profile) else profile
    known = profile_named(name)  # refuses what could not be read back
    if isinstance(profile, Profile) and profile != known:
        raise ValueError(f"profile {name!r} differs from the known one of that name")
    path = Path(model_dir) / PROFILE_FILE
    path.write_text(json.dumps({"profile": known.name}) + "\n", encoding="utf-8")
    return path


def _read_profile(path: Path) -> Profile:
    expected = f'{{"profile": NAME}} with NAME one of {", ".join(profile_names())}'
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: cannot read it ({error}); expected {expected}") from None
    name = data.get("profile") if isinstance(data, dict) else None
    if not isinstance(name, str):
        raise ValueError(f"{path}: no profile name in it; expected {expected}")
    try:
        return profile_named(name)
    except ValueError:
        raise ValueError(f"{path}: unknown profile {name!r}; expected {expected}") from None


def _profile_by_name(model: str) -> Profile:
    name = model.rstrip("/").lower()
    parts = name.split("/")
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        name = parts[-3].removeprefix("models--").replace("--", "/")  # the hub cache's layout
    for known, profile in PROFILES.items():
        short = known.split("/")[-1].lower()
        if name == known.lower() or name.endswith("/" + short) or name == short:
            return profile
    return GENERIC


def upscale_to_long_side(image: Image.Image, long_side: int) -> Image.Image:
    """Scale up (never down), keeping the aspect ratio, so the long side is ``long_side``."""
    width, height = image.size
    if max(width, height) >= long_side:
        return image
    factor = long_side / max(width, height)
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return image.resize(size, Image.Resampling.BICUBIC)


# A gap wider than this fraction of the neighbouring characters' mean width separates words.
WORD_GAP = 0.5
# Two boxes are on one line when they overlap vertically by this fraction of the shorter one.
LINE_OVERLAP = 0.5

_Scored = tuple[Grounded, float | None]


def merge_characters(
    parsed: Parsed, scores: Sequence[float | None], level: MergeLevel | str
) -> tuple[Parsed, list[float | None]]:
    """Merge per-character OCR items into words or lines, one item per output line.

    Characters are read in the order emitted: a line ends where a box no longer overlaps it
    vertically or jumps back left; a word ends at a whitespace character or at a gap wider than
    ``WORD_GAP`` character widths. Words of a line are joined by one space. A merged item's box
    is the union of its characters' boxes, its score the geometric mean of their known scores.
    Other grounded items (several boxes, phrases) are kept as they are, in place.
    """
    level = MergeLevel(level)
    grounded = parsed.grounded
    if len(scores) != len(grounded):
        raise ValueError(f"{len(scores)} scores for {len(grounded)} grounded items")
    if level is MergeLevel.CHARACTER:
        return parsed, list(scores)
    merged: list[_Scored] = []
    line: list[_Scored] = []
    for item, score in zip(grounded, scores, strict=True):
        if not _is_character(item):
            merged += _merge_line(line, level)
            merged.append((item, score))
            line = []
            continue
        if line and not _same_line(line[-1][0].boxes[0], item.boxes[0]):
            merged += _merge_line(line, level)
            line = []
        line.append((item, score))
    merged += _merge_line(line, level)
    items: list[Item] = []
    for item, _ in merged:
        items += [Text("\n"), item] if items else [item]
    return Parsed(tuple(items), parsed.problems), [score for _, score in merged]


def _is_character(item: Grounded) -> bool:
    return isinstance(item, OcrItem) and len(item.boxes) == 1


def _same_line(previous: Box, box: Box) -> bool:
    overlap = min(previous.y2, box.y2) - max(previous.y1, box.y1)
    goes_back_left = box.x2 <= previous.x1
    return overlap >= LINE_OVERLAP * min(previous.height, box.height) and not goes_back_left


def _merge_line(line: list[_Scored], level: MergeLevel) -> list[_Scored]:
    words: list[list[_Scored]] = [[]]
    for entry in line:
        item = entry[0]
        if not item.text.strip():
            words.append([])  # whitespace separates words and is dropped
            continue
        if words[-1] and _is_word_gap(words[-1][-1][0].boxes[0], item.boxes[0]):
            words.append([])
        words[-1].append(entry)
    words = [word for word in words if word]
    if level is MergeLevel.LINE:
        return [_join(words)] if words else []
    return [_join([word]) for word in words]


def _is_word_gap(previous: Box, box: Box) -> bool:
    return box.x1 - previous.x2 > WORD_GAP * (previous.width + box.width) / 2


def _join(words: list[list[_Scored]]) -> _Scored:
    text = " ".join("".join(item.text for item, _ in word) for word in words)
    boxes = [item.boxes[0] for word in words for item, _ in word]
    union = Box(
        min(b.x1 for b in boxes),
        min(b.y1 for b in boxes),
        max(b.x2 for b in boxes),
        max(b.y2 for b in boxes),
    )
    known = [score for word in words for _, score in word if score is not None]
    return OcrItem(text, (union,)), geometric_mean(known)


def model_version(model: str | Path, pinned: str | None = None) -> str:
    """The one name predictions carry, for ``serve``, workers, ``prelabel`` and ``predict``:
    ``pinned`` (VARCO_MODEL_VERSION), else the version ``train`` stamped on the model directory,
    else the model's last path component (``NCSOFT/VARCO-VISION-14B-HF``: ``VARCO-VISION-14B-HF``).
    """
    if pinned:
        return pinned
    try:
        summary = json.loads((Path(model) / TRAIN_SUMMARY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        summary = None
    version = summary.get("model_version") if isinstance(summary, dict) else None
    if isinstance(version, str) and version:
        return version
    return Path(str(model).rstrip("/")).name
