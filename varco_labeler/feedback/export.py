"""Examples -> training sets: TRL SFT, TRL DPO, LLaVA, LLaVA-NeXT DPO, and a plain HF dataset.

Every export is self-contained: Parquet formats embed the image bytes (a Parquet ``Image()``
column otherwise stores only paths), LLaVA formats copy the images into ``images/``. Images are
written upright: a JPEG with an EXIF orientation is rotated as Label Studio shows it (the boxes
are in that frame) and saved without the tag, so no trainer has to know about EXIF. OCR targets
list the lines in reading order (``reading_order``), whatever order they were drawn in.

The train/validation split is decided per image from a hash of (seed, the image's content), so
one picture never sits in both splits (two tasks may share an image, and images are stored once
by content), an image keeps its split when the data grows, and re-exports give the same files.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from PIL import Image, ImageOps

from varco_labeler.feedback.metrics import MATERIAL_IOU, differs_materially
from varco_labeler.feedback.pairing import Example
from varco_labeler.feedback.reading_order import reading_order
from varco_labeler.labelstudio.images import cloud_reference
from varco_labeler.regions import regions_to_varco
from varco_labeler.varco import Task

FORMATS = ("trl-sft", "trl-dpo", "llava", "llava-dpo", "hf")
PREFERENCE_FORMATS = frozenset({"trl-dpo", "llava-dpo"})
_PARQUET = frozenset({"trl-sft", "trl-dpo", "hf"})
SPLITS = ("train", "validation")


class ImageReader(Protocol):
    """Anything with ``read_bytes(ref)``: ``labelstudio.images.ImageFetcher`` is one."""

    def read_bytes(self, ref: str) -> bytes: ...


@dataclass(frozen=True)
class _StoredImage:
    name: str  # path inside the export, e.g. images/3fa2....png
    data: bytes
    content: str  # sha256 of the bytes as read, before turning upright: the split's key


def split_of(content_hash: str, val_fraction: float, seed: int = 0) -> str:
    """``validation`` for about ``val_fraction`` of images (by content hash), the same ones on
    every run."""
    key = f"{seed}:{content_hash}"
    position = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
    return "validation" if position < val_fraction else "train"


def in_reading_order(example: Example) -> Example:
    """An OCR example whose target lists its lines as a page is read."""
    if example.kind is not Task.OCR:
        return example
    regions = tuple(reading_order(example.regions))
    return replace(example, regions=regions, answer=regions_to_varco(regions, example.kind))


def export(
    examples: Sequence[Example],
    fmt: str,
    out_dir: Path,
    val_fraction: float = 0.1,
    seed: int = 0,
    images: ImageReader | None = None,
) -> dict[str, Any]:
    """Write ``examples`` as ``fmt`` into ``out_dir`` (with a README.md dataset card).

    Examples with an empty human answer are skipped (nothing to learn to say); preference
    formats also skip examples without a prediction or whose correction did not change the
    prediction materially (see ``metrics.differs_materially``). Images come from ``images``
    (default: local files only). Returns a summary of what was written and skipped.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError("val_fraction must be in [0, 1)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    reader = images or _LocalFiles()
    skipped: Counter[str] = Counter()
    image_errors: list[str] = []
    stored: dict[str, _StoredImage] = {}
    rows: dict[str, list[tuple[Example, _StoredImage]]] = {split: [] for split in SPLITS}
    for example in map(in_reading_order, examples):
        reason = _skip_reason(example, fmt)
        if reason:
            skipped[reason] += 1
            continue
        if example.image not in stored:
            try:
                # A cloud URI is fetched through Label Studio's resolver for its task.
                ref = cloud_reference(example.image, example.task_id)
                stored[example.image] = _store_image(reader.read_bytes(ref))
            except (OSError, ValueError) as error:  # ImageError is a ValueError
                skipped["image_error"] += 1
                image_errors.append(f"{example.image}: {error}")
                continue
        image = stored[example.image]
        rows[split_of(image.content, val_fraction, seed)].append((example, image))

    files = _WRITERS[fmt](rows, out_dir)
    written = [example for split in SPLITS for example, _ in rows[split]]
    summary = {
        "format": fmt,
        "out_dir": str(out_dir),
        "examples_in": len(examples),
        "written": {split: len(rows[split]) for split in SPLITS},
        "skipped": dict(skipped),
        "image_errors": image_errors[:20],
        "images": len({image.name for split in SPLITS for _, image in rows[split]}),
        "tasks_by_kind": dict(Counter(e.kind.value for e in written)),
        "model_versions": dict(Counter(e.model_version or "none" for e in written)),
        "sources": dict(Counter(e.source for e in written)),
        "val_fraction": val_fraction,
        "seed": seed,
        "files": sorted(files),
    }
    (out_dir / "README.md").write_text(_card(summary), encoding="utf-8")
    (out_dir / "export_summary.json").write_text(
        json.dumps(summary, indent=1, ensure_ascii=False), encoding="utf-8"
    )
    return summary


def load_llava(out_dir: Path, split: str = "train") -> list[dict[str, Any]]:
    return json.loads((Path(out_dir) / f"{split}.json").read_text(encoding="utf-8"))


# -- rows ------------------------------------------------------------------------------------
def _skip_reason(example: Example, fmt: str) -> str | None:
    if not example.answer.strip():
        return "empty_answer"
    if fmt in PREFERENCE_FORMATS:
        if example.model_regions is None or example.model_answer is None:
            return "no_prediction"
        if not differs_materially(example.model_regions, example.regions):
            return "unchanged"
    return None


def _row_id(example: Example) -> str:
    return f"{example.project}-{example.task_id}"


def _user(prompt: str) -> list[dict[str, Any]]:
    # No "image" key inside a content part: Arrow would add it to every part and TRL would then
    # count zero image placeholders (DESIGN section 7).
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]


def _assistant(text: str) -> list[dict[str, Any]]:
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]


def _trl_row(example: Example, image: _StoredImage, preference: bool) -> dict[str, Any]:
    row: dict[str, Any] = {
        "images": [{"bytes": image.data, "path": image.name}],
        "prompt": _user(example.prompt),
    }
    if preference:
        row["chosen"] = _assistant(example.answer)
        row["rejected"] = _assistant(example.model_answer or "")
    else:
        row["completion"] = _assistant(example.answer)
    return row


def _hf_row(example: Example, image: _StoredImage) -> dict[str, Any]:
    return {
        "id": _row_id(example),
        "image": {"bytes": image.data, "path": image.name},
        "task_kind": example.kind.value,
        "prompt": example.prompt,
        "answer": example.answer,
        "model_answer": example.model_answer,
        "model_version": example.model_version,
        "changed": (
            differs_materially(example.model_regions, example.regions)
            if example.model_regions is not None
            else None
        ),
        "task_id": example.task_id,
        "project": example.project,
        "annotation_id": example.annotation_id,
        "source": example.source,
    }


# -- writers ---------------------------------------------------------------------------------
Rows = dict[str, list[tuple[Example, _StoredImage]]]


def _features(fmt: str) -> Any:
    from datasets import Features, Image, List, Value

    turn = List(
        {
            "role": Value("string"),
            "content": List({"type": Value("string"), "text": Value("string")}),
        }
    )
    if fmt == "trl-sft":
        return Features({"images": List(Image()), "prompt": turn, "completion": turn})
    if fmt == "trl-dpo":
        return Features({"images": List(Image()), "prompt": turn, "chosen": turn, "rejected": turn})
    return Features(
        {
            "id": Value("string"),
            "image": Image(),
            "task_kind": Value("string"),
            "prompt": Value("string"),
            "answer": Value("string"),
            "model_answer": Value("string"),
            "model_version": Value("string"),
            "changed": Value("bool"),
            "task_id": Value("int64"),
            "project": Value("int64"),
            "annotation_id": Value("int64"),
            "source": Value("string"),
        }
    )


def _write_parquet(fmt: str) -> Callable[[Rows, Path], list[str]]:
    def write(rows: Rows, out_dir: Path) -> list[str]:
        from datasets import Dataset

        files = []
        for split in SPLITS:
            if not rows[split]:
                continue
            if fmt == "hf":
                records = [_hf_row(e, image) for e, image in rows[split]]
            else:
                records = [_trl_row(e, image, fmt == "trl-dpo") for e, image in rows[split]]
            dataset = Dataset.from_list(records, features=_features(fmt))
            # The file name pattern load_dataset(out_dir) recognises as a split.
            name = f"data/{split}-00000-of-00001.parquet"
            (out_dir / "data").mkdir(exist_ok=True)
            dataset.to_parquet(str(out_dir / name))
            files.append(name)
        return files

    return write


def _write_images(rows: Rows, out_dir: Path) -> None:
    (out_dir / "images").mkdir(exist_ok=True)
    for split in SPLITS:
        for _, image in rows[split]:
            path = out_dir / image.name
            if not path.exists():
                path.write_bytes(image.data)


def _write_llava(preference: bool) -> Callable[[Rows, Path], list[str]]:
    def write(rows: Rows, out_dir: Path) -> list[str]:
        _write_images(rows, out_dir)
        files = []
        for split in SPLITS:
            records = []
            for example, image in rows[split]:
                if preference:
                    # LLaVA-NeXT's DPO dataset reads prompt/chosen/rejected and measures
                    # lengths with "answer"; it re-adds the <image> line itself.
                    records.append(
                        {
                            "id": _row_id(example),
                            "image": image.name,
                            "prompt": "<image>\n" + example.prompt,
                            "answer": example.answer,
                            "chosen": example.answer,
                            "rejected": example.model_answer,
                        }
                    )
                else:
                    records.append(
                        {
                            "id": _row_id(example),
                            "image": image.name,
                            "conversations": [
                                {"from": "human", "value": "<image>\n" + example.prompt},
                                {"from": "gpt", "value": example.answer},
                            ],
                        }
                    )
            if records:
                (out_dir / f"{split}.json").write_text(
                    json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8"
                )
                files.append(f"{split}.json")
        return [*files, "images/"] if files else files

    return write


_WRITERS: dict[str, Callable[[Rows, Path], list[str]]] = {
    "trl-sft": _write_parquet("trl-sft"),
    "trl-dpo": _write_parquet("trl-dpo"),
    "hf": _write_parquet("hf"),
    "llava": _write_llava(preference=False),
    "llava-dpo": _write_llava(preference=True),
}


# -- images and the card ---------------------------------------------------------------------
class _LocalFiles:
    def read_bytes(self, ref: str) -> bytes:
        if ref.startswith(("/data/", "http://", "https://")) or "://" in ref:
            raise ValueError(
                f"{ref}: a Label Studio or remote image; pass an ImageFetcher with "
                "LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY"
            )
        return Path(ref).read_bytes()


def _store_image(data: bytes) -> _StoredImage:
    """Name images by content: the same picture in two tasks is stored once. An image with an
    EXIF orientation other than upright is turned upright and re-encoded (JPEG at quality 95)."""
    content = hashlib.sha256(data).hexdigest()
    with Image.open(io.BytesIO(data)) as image:
        fmt = image.format or "PNG"
        if image.getexif().get(_ORIENTATION, 1) != 1:
            upright = ImageOps.exif_transpose(image)
            buffer = io.BytesIO()
            if fmt == "JPEG":
                upright.convert("RGB").save(buffer, "JPEG", quality=95)
            else:
                fmt = "PNG"
                upright.save(buffer, "PNG")
            data = buffer.getvalue()
    extension = fmt.lower().replace("jpeg", "jpg")
    return _StoredImage(f"images/{content[:20]}.{extension}", data, content)


_ORIENTATION = 0x0112  # the EXIF tag


def _card(summary: dict[str, Any]) -> str:
    fmt = summary["format"]
    splits = [s for s in SPLITS if summary["written"][s]]
    lines = []
    if fmt in _PARQUET and splits:
        lines += ["---", "configs:", "- config_name: default", "  data_files:"]
        for split in splits:
            lines += [f"  - split: {split}", f"    path: data/{split}-*.parquet"]
        lines += ["---", ""]
    lines += [
        f"# VARCO-VISION feedback dataset ({fmt})",
        "",
        "Human corrections of VARCO-VISION pre-labels made in Label Studio, exported by "
        "varco-labeler.",
        "",
        "| split | examples |",
        "| --- | --- |",
        *[f"| {split} | {summary['written'][split]} |" for split in SPLITS],
        "",
        f"- task kinds: {_counts(summary['tasks_by_kind'])}",
        f"- model versions of the pre-labels: {_counts(summary['model_versions'])}",
        f"- sources: {_counts(summary['sources'])}",
        f"- images: {summary['images']} (embedded or under images/)",
        f"- skipped: {_counts(summary['skipped']) or 'none'}",
        f"- split: per image (content hash), validation fraction {summary['val_fraction']}, "
        f"seed {summary['seed']}",
        "",
        _HOW_TO_LOAD[fmt],
    ]
    if fmt in PREFERENCE_FORMATS:
        lines += [
            "",
            "chosen = the human correction, rejected = the model's pre-label. A pair is kept only "
            "where they differ materially: a region added or removed, a box moved "
            f"(best one-to-one IoU < {MATERIAL_IOU}), a label changed, or text retyped.",
        ]
    return "\n".join(lines) + "\n"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))


_HOW_TO_LOAD = {
    "trl-sft": 'Load with `datasets.load_dataset("<this folder>")`: conversational '
    "prompt/completion with an `images` column, for `trl.SFTTrainer`.",
    "trl-dpo": 'Load with `datasets.load_dataset("<this folder>")`: `images`, `prompt`, '
    "`chosen`, `rejected` (conversational), for `trl.DPOTrainer`.",
    "hf": 'Load with `datasets.load_dataset("<this folder>")`: one row per task with the image, '
    "prompt, human answer and model answer.",
    "llava": "LLaVA JSON (`train.json`, `validation.json`): `{id, image, conversations}`; "
    "set the image folder to this folder.",
    "llava-dpo": "LLaVA-NeXT DPO JSON (`train.json`, `validation.json`): `{id, image, prompt, "
    "answer, chosen, rejected}`; set the image folder to this folder.",
}
