"""``varco-labeler evaluate``: run a model on an exported dataset's split and score its answers
against the human ones with the report's metrics (box P/R/F1 at IoU 0.5, mAP, label confusion,
page-level OCR CER/NED).

A model is judged on images it did not train on: ``train`` calls :func:`evaluate_engine` on the
validation split (never the training split) for the base and the trained model. Every export
format is read: ``trl-sft``, ``trl-dpo`` (the chosen answer is the human one), ``hf``, ``llava``
and ``llava-dpo``. The human answer is the target text parsed back into regions; the model's
phrases are mapped onto the labels the human answers use (the project's label mapping: "two red
cats" -> "Cat"), so a phrase is scored by the label it would get in Label Studio.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from varco_labeler.feedback.pairing import Example
from varco_labeler.feedback.report import build_report
from varco_labeler.labelstudio.images import decode_image
from varco_labeler.labelstudio.labels import LabelMapper
from varco_labeler.regions import Region, regions_from_varco
from varco_labeler.varco import Task, parse, prompt_for

SPLITS = ("train", "validation")
# What a comparison of two models keeps of a version's report.
SCORE_KEYS = ("tasks", "micro", "map", "labels", "confusion", "ocr")


class EvaluateError(ValueError):
    """The dataset cannot be evaluated on; the message says why."""


@dataclass(frozen=True)
class Item:
    """One image of the split, its prompt and the human answer."""

    image: bytes
    example: Example


def load_split(dataset_dir: Path, split: str = "validation") -> list[Item]:
    """The images, prompts and human answers of one split of an export made by ``export``."""
    dataset_dir = Path(dataset_dir)
    if split not in SPLITS:
        raise EvaluateError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    fmt = _format(dataset_dir)
    rows = _llava_rows(dataset_dir, split, fmt) if fmt.startswith("llava") else None
    if rows is None:
        rows = _parquet_rows(dataset_dir, split, fmt)
    if not rows:
        raise EvaluateError(
            f"{dataset_dir}: the {split} split is empty; export with --val-fraction above 0 "
            "so that some images are held out"
        )
    return rows


def _format(dataset_dir: Path) -> str:
    try:
        summary = json.loads((dataset_dir / "export_summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise EvaluateError(
            f"{dataset_dir}: no export_summary.json; evaluate a folder written by "
            "varco-labeler export"
        ) from None
    return str(summary.get("format"))


def _example(index: int, prompt: str, answer: str, kind: str | None, **ids: Any) -> Example:
    task = Task(kind) if kind in (Task.GROUNDING.value, Task.OCR.value) else _kind_of(prompt)
    regions = tuple(_regions(answer))
    return Example(
        task_id=ids.get("task_id", index),
        project=ids.get("project"),
        image=ids.get("image", f"row-{index}"),
        kind=task,
        prompt=prompt,
        answer=answer,
        regions=regions,
    )


def _kind_of(prompt: str) -> Task:
    return Task.OCR if prompt.strip() == prompt_for(Task.OCR) else Task.GROUNDING


def _regions(answer: str) -> list[Region]:
    # A human grounding answer names each box by its label: the phrase is the label.
    return [r.with_(label=r.phrase) if r.phrase else r for r in regions_from_varco(parse(answer))]


def _text(turns: Sequence[dict[str, Any]]) -> str:
    return "".join(part.get("text") or "" for turn in turns for part in turn["content"])


def _parquet_rows(dataset_dir: Path, split: str, fmt: str) -> list[Item]:
    import pyarrow.parquet as pq

    items = []
    for path in sorted((dataset_dir / "data").glob(f"{split}-*.parquet")):
        for row in pq.read_table(path).to_pylist():
            index = len(items)
            if fmt == "hf":
                image = row["image"]["bytes"]
                example = _example(
                    index,
                    row["prompt"],
                    row["answer"],
                    row["task_kind"],
                    task_id=row["task_id"],
                    project=row["project"],
                    image=row["id"],
                )
            else:
                image = row["images"][0]["bytes"]
                answer = row["chosen"] if fmt == "trl-dpo" else row["completion"]
                example = _example(index, _text(row["prompt"]), _text(answer), None)
            items.append(Item(image, example))
    return items


def _llava_rows(dataset_dir: Path, split: str, fmt: str) -> list[Item]:
    path = dataset_dir / f"{split}.json"
    if not path.is_file():
        return []
    items = []
    for index, record in enumerate(json.loads(path.read_text(encoding="utf-8"))):
        if fmt == "llava-dpo":
            prompt, answer = record["prompt"], record["chosen"]
        else:
            human, gpt = record["conversations"][:2]
            prompt, answer = human["value"], gpt["value"]
        prompt = prompt.removeprefix("<image>\n")
        image = (dataset_dir / record["image"]).read_bytes()
        items.append(Item(image, _example(index, prompt, answer, None, image=record["image"])))
    return items


# -- running a model -------------------------------------------------------------------------
def evaluate_engine(
    engine: Any,
    items: Sequence[Item],
    *,
    batch_size: int = 8,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Ask ``engine`` every item's prompt; score its regions against the human ones.

    Returns the model version's figures (``SCORE_KEYS`` of the report) and the whole report.
    """
    from varco_labeler.engine.base import Request

    labels = sorted({r.label for item in items for r in item.example.regions if r.label})
    mapper = LabelMapper(labels)
    scored: list[Example] = []
    bar = tqdm(
        total=len(items),
        desc="evaluate",
        unit="image",
        disable=None if progress is None else not progress,
    )
    try:
        for batch in _batches(items, batch_size):
            requests = [
                Request(decode_image(i.image, i.example.image), i.example.prompt, i.example.kind)
                for i in batch
            ]
            for item, result in zip(batch, engine.generate(requests), strict=True):
                predicted = [Region.from_json(r) for r in result.to_json()["regions"]]
                scored.append(
                    replace(
                        item.example,
                        model_regions=tuple(_labelled(predicted, mapper, item.example.kind)),
                        model_version=engine.model_version,
                    )
                )
            bar.update(len(batch))
    finally:
        bar.close()
    report = build_report(scored, worst=10)
    version = report["versions"].get(engine.model_version, {})
    return {
        "model_version": engine.model_version,
        "examples": len(items),
        **{key: version.get(key) for key in SCORE_KEYS},
        "worst_tasks": report["worst_tasks"],
    }


def _labelled(regions: list[Region], mapper: LabelMapper, kind: Task) -> list[Region]:
    if kind is Task.OCR:
        return regions  # OCR is scored by its text per page; boxes by whatever label they carry
    # A phrase no label takes keeps its own words: it counts as a box of another label.
    return [r.with_(label=mapper.label_for(r.phrase or "") or r.phrase) for r in regions]


def _batches(items: Sequence[Item], size: int) -> Iterator[Sequence[Item]]:
    for start in range(0, len(items), max(1, size)):
        yield items[start : start + size]


def evaluate(
    model: str | Path,
    dataset_dir: Path,
    split: str = "validation",
    *,
    batch_size: int = 8,
    engine_options: dict[str, Any] | None = None,
    settings_overrides: dict[str, Any] | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Load ``model`` as the worker would (``engine_options``: device, dtype,
    attn_implementation, load_in_4bit, load_in_8bit; ``settings_overrides``: openai_url,
    profile, ...) and score it on ``split`` of the export in ``dataset_dir``."""
    from varco_labeler.engine.load import load_engine
    from varco_labeler.settings import Settings

    items = load_split(dataset_dir, split)  # before loading a model: fail fast
    settings = Settings.from_env(model=str(model), **(settings_overrides or {}))
    engine = load_engine(settings, **(engine_options or {}))
    result = evaluate_engine(engine, items, batch_size=batch_size, progress=progress)
    return {"model": str(model), "dataset": str(dataset_dir), "split": split, **result}
