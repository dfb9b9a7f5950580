"""Which certainty measure tells the pre-labels that need the most correcting? On the tiny model.

Three dozen images between the two colours the tiny model was taught (red: one cat; blue: two
dogs), at three brightnesses; the truth of each is its nearer colour's taught answer. Correction
effort is what an annotator does to the pre-label: regions deleted + added + adjusted (moved,
relabelled; ``feedback.metrics``). For each pre-label three measures of certainty:

- ``score``: the prediction score Label Studio stores (mean over regions of the geometric mean of
  the chosen tokens' probabilities; ``engine.confidence``);
- ``margin``: mean over generated tokens of p(top 1) - p(top 2);
- ``entropy``: minus the mean entropy of the next-token distribution.

Prints Spearman's rho between each measure and the effort (negative: less certain, more effort).
``python -m bench.certainty [--json]``; needs torch (the worker extra).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from scipy.stats import spearmanr

from varco_labeler.engine.base import Request
from varco_labeler.engine.tiny import BLUE, GROUNDING, RED, build_tiny_model, solid_image
from varco_labeler.engine.transformers_engine import TransformersEngine
from varco_labeler.feedback.metrics import match_regions, region_changed
from varco_labeler.regions import Region, regions_from_varco
from varco_labeler.varco import Task
from varco_labeler.varco.boxes import Box

CAT = [Region(Box(0.1, 0.2, 0.5, 0.9), phrase="red cat")]
DOGS = [
    Region(Box(0.05, 0.1, 0.4, 0.8), phrase="two dogs"),
    Region(Box(0.6, 0.1, 0.95, 0.8), phrase="two dogs"),
]
MIXES = 12
BRIGHTNESS = (0.6, 0.8, 1.0)


def _colour(mix: float, brightness: float) -> tuple[int, int, int]:
    return tuple(  # type: ignore[return-value]
        round(brightness * ((1 - mix) * r + mix * b)) for r, b in zip(RED, BLUE, strict=True)
    )


def effort(predicted: list[Region], truth: list[Region]) -> int:
    """Regions an annotator deletes, adds or adjusts to turn the pre-label into the truth."""
    matching = match_regions(predicted, truth)
    adjusted = sum(
        region_changed(predicted[m.predicted], truth[m.reference], m.iou) for m in matching.matches
    )
    return len(matching.unmatched_predicted) + len(matching.unmatched_reference) + adjusted


def measure(model_dir: Path) -> dict[str, Any]:
    torch.set_num_threads(1)
    engine = TransformersEngine(str(model_dir), max_batch_size=1)
    distributions: list[torch.Tensor] = []
    generate = engine.model.generate

    def generate_keeping_scores(**kwargs: Any) -> Any:  # the engine's own call, scores kept
        output = generate(**kwargs, output_scores=True)
        distributions.append(torch.softmax(torch.cat(output.scores).float(), dim=-1))
        return output

    engine.model.generate = generate_keeping_scores
    rows = []
    for brightness in BRIGHTNESS:
        for step in range(MIXES):
            mix = step / (MIXES - 1)
            image = solid_image(_colour(mix, brightness))
            (result,) = engine.generate([Request(image, GROUNDING, Task.GROUNDING)])
            regions = regions_from_varco(result.parsed, result.region_scores)
            probabilities = distributions.pop()
            top = probabilities.topk(2, dim=-1).values
            entropy = -(probabilities * probabilities.clamp_min(1e-12).log()).sum(-1)
            scores = [r.score for r in regions if r.score is not None]
            rows.append(
                {
                    "mix": round(mix, 3),
                    "brightness": brightness,
                    "effort": effort(regions, CAT if mix < 0.5 else DOGS),
                    "score": sum(scores) / len(scores) if scores else 0.0,
                    "margin": float((top[:, 0] - top[:, 1]).mean()),
                    "entropy": -float(entropy.mean()),
                }
            )
    efforts = [row["effort"] for row in rows]
    rho = {
        name: round(float(spearmanr([row[name] for row in rows], efforts).statistic), 3)
        for name in ("score", "margin", "entropy")
    }
    return {"images": len(rows), "spearman_vs_effort": rho, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print every row as JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as root:
        result = measure(build_tiny_model(Path(root) / "tiny"))
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        efforts = sorted({row["effort"] for row in result["rows"]})
        print(f"{result['images']} images, correction effort values {efforts}")
        for name, rho in result["spearman_vs_effort"].items():
            print(f"  Spearman rho({name}, effort) = {rho:+.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
