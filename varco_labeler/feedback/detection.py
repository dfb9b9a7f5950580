"""Detection metrics over many images: COCO mAP (pycocotools) and a label confusion matrix.

mAP is COCO's: average precision over IoU thresholds 0.50:0.05:0.95 and 101 recall points, per
label, averaged over the labels that have human boxes; ``map_50`` is the same at IoU 0.5 only.
pycocotools (the COCO reference implementation) computes it; this module only feeds it. Boxes
are normalised, so they are scaled to a 1000 x 1000 frame (COCO's area ranges are not used:
every box counts, "all" areas). A region without a score ranks with score 1.0: a model that
gives no confidences is scored as if it were sure of every box.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from varco_labeler.feedback.metrics import match_regions
from varco_labeler.regions import Region

NONE = "(none)"
_SCALE = 1000.0
Page = tuple[Sequence[Region], Sequence[Region]]  # (predicted, reference) on one image


def _label(region: Region) -> str:
    return region.label or region.phrase or NONE


def _bbox(region: Region) -> list[float]:
    box = region.box
    return [box.x1 * _SCALE, box.y1 * _SCALE, box.width * _SCALE, box.height * _SCALE]


def mean_average_precision(pages: Sequence[Page]) -> dict[str, Any]:
    """``{"map", "map_50", "labels": {label: AP@[.5:.95]}}``; None where no human drew a box."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    labels = sorted({_label(r) for pred, ref in pages for r in [*pred, *ref]})
    category = {label: i + 1 for i, label in enumerate(labels)}
    truth: list[dict[str, Any]] = []
    detections: list[dict[str, Any]] = []
    for image_id, (predicted, reference) in enumerate(pages, 1):
        for region in reference:
            bbox = _bbox(region)
            truth.append(
                {
                    "id": len(truth) + 1,
                    "image_id": image_id,
                    "category_id": category[_label(region)],
                    "bbox": bbox,
                    "area": bbox[2] * bbox[3],
                    "iscrowd": 0,
                }
            )
        detections += [
            {
                "image_id": image_id,
                "category_id": category[_label(region)],
                "bbox": _bbox(region),
                "score": 1.0 if region.score is None else float(region.score),
            }
            for region in predicted
        ]
    empty = {"map": None, "map_50": None, "labels": {}}
    if not truth:
        return empty
    if not detections:
        return {"map": 0.0, "map_50": 0.0, "labels": {_label_of(t, labels): 0.0 for t in truth}}
    ground = COCO()
    ground.dataset = {
        "images": [{"id": i} for i in range(1, len(pages) + 1)],
        "categories": [{"id": i, "name": label} for label, i in category.items()],
        "annotations": truth,
    }
    # pycocotools prints its progress; a report or an evaluation should not.
    with contextlib.redirect_stdout(io.StringIO()):
        ground.createIndex()
        evaluation = COCOeval(ground, ground.loadRes(detections), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    # precision: [IoU thresholds, recall points, categories, area ranges, max detections]
    precision = evaluation.eval["precision"][:, :, :, 0, -1]
    per_label = {}
    for index, category_id in enumerate(evaluation.params.catIds):
        values = precision[:, :, index]
        if (values > -1).any():
            per_label[labels[category_id - 1]] = float(np.mean(values[values > -1]))
    return {
        "map": float(evaluation.stats[0]),
        "map_50": float(evaluation.stats[1]),
        "labels": per_label,
    }


def _label_of(annotation: dict[str, Any], labels: list[str]) -> str:
    return labels[annotation["category_id"] - 1]


def confusion(pages: Sequence[Page]) -> dict[str, Any]:
    """Which label the model gave the boxes a human labelled, matching boxes whatever their
    labels (Hungarian, IoU >= 0.5). ``matrix[i][j]`` counts human label ``labels[i]`` given
    model label ``labels[j]``; the ``(none)`` row holds boxes only the model drew, the
    ``(none)`` column boxes the model missed."""
    counts: dict[tuple[str, str], int] = {}
    for predicted, reference in pages:
        matching = match_regions(predicted, reference)
        pairs = [
            (_label(reference[m.reference]), _label(predicted[m.predicted]))
            for m in matching.matches
        ]
        pairs += [(NONE, _label(predicted[i])) for i in matching.unmatched_predicted]
        pairs += [(_label(reference[j]), NONE) for j in matching.unmatched_reference]
        for pair in pairs:
            counts[pair] = counts.get(pair, 0) + 1
    labels = [*sorted({label for pair in counts for label in pair} - {NONE}), NONE]
    matrix = [[counts.get((human, model), 0) for model in labels] for human in labels]
    return {"labels": labels, "matrix": matrix}
