"""Raw VARCO output -> a Label Studio prediction, with an account of everything left out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from varco_labeler.labelstudio.config import LabelConfig
from varco_labeler.labelstudio.labels import LabelMapper
from varco_labeler.labelstudio.results import regions_to_results
from varco_labeler.regions import Region, regions_from_varco
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
    """Parse raw model output, label its regions for the project and build the prediction.

    ``scores`` holds one confidence per grounded item of the output, when the engine gave them.
    """
    parsed = parse(raw)
    regions = regions_from_varco(parsed, scores)
    labelled, unmatched = mapper.assign(regions, task)
    degenerate = [r for r in labelled if r.box.is_degenerate]
    kept = [r for r in labelled if not r.box.is_degenerate]
    return Conversion(
        prediction=prediction_from_regions(kept, config, width, height, model_version, seed),
        regions=kept,
        dropped=[str(p) for p in parsed.dropped]
        + unmatched
        + [f"degenerate box {r.box.to_text()} ({r.phrase or r.text!r})" for r in degenerate],
        repaired=[str(p) for p in parsed.problems if not p.dropped],
    )
