"""Raw VARCO output -> a Label Studio prediction, with an account of everything left out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from varco_labeler.labelstudio.config import LabelConfig
from varco_labeler.labelstudio.labels import LabelMapper
from varco_labeler.labelstudio.results import regions_to_results
from varco_labeler.regions import ParserNotes, Region, regions_from_varco
from varco_labeler.varco import Task, parse


@dataclass
class Conversion:
    prediction: dict[str, Any]
    regions: list[Region]
    dropped: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)


def prediction_from_regions(
    regions: Sequence[Region],
    config: LabelConfig,
    width: int,
    height: int,
    model_version: str,
    seed: str = "",
) -> dict[str, Any]:
    """A prediction: result items, the model version, and the mean region score when known."""
    result = regions_to_results(regions, config, width, height, seed=seed)
    prediction: dict[str, Any] = {"model_version": model_version, "result": result}
    scores = [r.score for r in regions if r.score is not None]
    if scores:
        prediction["score"] = sum(scores) / len(scores)
    return prediction


def conversion_from_regions(
    regions: Sequence[Region],
    task: Task | str,
    config: LabelConfig,
    mapper: LabelMapper,
    width: int,
    height: int,
    model_version: str,
    *,
    min_score: float = 0.0,
    seed: str = "",
    notes: ParserNotes | None = None,
) -> Conversion:
    """Label the model's regions for a project, leave out what cannot be shown, and build the
    prediction. ``notes``: what the parser dropped or repaired in the model's text."""
    labelled, unmatched = mapper.assign(regions, task)
    dropped = list(unmatched)
    kept = []
    for region in labelled:
        name = region.phrase or region.text
        if region.box.is_degenerate:
            dropped.append(f"degenerate box {region.box.to_text()} ({name!r})")
        elif region.score is not None and region.score < min_score:
            dropped.append(f"score {region.score:.3f} below {min_score} ({name!r})")
        elif config.labels_type is not None and not region.label:
            # A labelled control shows nothing for a region without a label.
            dropped.append(f"no label for {name!r}")
        else:
            kept.append(region)
    return Conversion(
        prediction=prediction_from_regions(kept, config, width, height, model_version, seed),
        regions=kept,
        dropped=[*(notes.dropped if notes else ()), *dropped],
        repaired=list(notes.repaired if notes else ()),
    )


def prediction_from_varco(
    raw: str,
    task: Task | str,
    config: LabelConfig,
    mapper: LabelMapper,
    width: int,
    height: int,
    model_version: str,
    scores: Sequence[float | None] | None = None,
    seed: str = "",
) -> Conversion:
    """Raw model text from elsewhere (an import file): parse it, then as
    :func:`conversion_from_regions`. ``scores``: one confidence per grounded item, if known."""
    parsed = parse(raw)
    return conversion_from_regions(
        regions_from_varco(parsed, scores),
        task,
        config,
        mapper,
        width,
        height,
        model_version,
        seed=seed,
        notes=ParserNotes.of(parsed),
    )
