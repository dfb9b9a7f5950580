"""Regions <-> Label Studio result JSON, in both directions.

A region becomes a rectangle item (``rectanglelabels``, or ``rectangle`` plus ``labels``) and,
when it has text and the config a per-region TextArea, a ``textarea`` item with the SAME id: Label
Studio joins items by id into one region. Geometry is percent of the original image.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

from varco_labeler.labelstudio.config import LabelConfig
from varco_labeler.regions import Region, stable_ids
from varco_labeler.varco import Box, referring_prompt
from varco_labeler.varco.prompts import DEFAULT_REFERRING_QUESTION

ResultItem = dict[str, Any]


# Percent to 1e-6: far below a pixel on any image, and free of float noise like 47.599999999999994.
_PERCENT_DECIMALS = 6


@lru_cache(maxsize=4096)  # round() to decimals is slow, and boxes repeat a few thousand values
def _percent(fraction: float) -> float:
    return round(100.0 * fraction, _PERCENT_DECIMALS)


def rectangle_value(box: Box) -> dict[str, float]:
    """Percent geometry: x = 100*x1, y = 100*y1, width = 100*(x2-x1), height = 100*(y2-y1)."""
    return {
        "x": _percent(box.x1),
        "y": _percent(box.y1),
        "width": _percent(box.x2 - box.x1),
        "height": _percent(box.y2 - box.y1),
        "rotation": 0,
    }


def box_from_rectangle(
    value: Mapping[str, Any],
    original_width: float | None = None,
    original_height: float | None = None,
) -> Box:
    """The normalised box of a Label Studio rectangle value.

    A rotated rectangle (Label Studio turns it about its top-left corner, in pixels) becomes the
    axis-aligned box around it, since that is all the model's boxes can say.
    """
    x, y = float(value["x"]) / 100, float(value["y"]) / 100
    w, h = float(value["width"]) / 100, float(value["height"]) / 100
    rotation = float(value.get("rotation") or 0)
    if rotation % 360 == 0:
        box, _ = Box.repaired(x, y, x + w, y + h)
        return box
    # Rotate in pixels: percent units differ on the two axes unless the image is square.
    sx, sy = float(original_width or 1), float(original_height or 1)
    angle = math.radians(rotation)
    cos, sin = math.cos(angle), math.sin(angle)
    corners = [(0.0, 0.0), (w * sx, 0.0), (w * sx, h * sy), (0.0, h * sy)]
    xs = [x + (cx * cos - cy * sin) / sx for cx, cy in corners]
    ys = [y + (cx * sin + cy * cos) / sy for cx, cy in corners]
    box, _ = Box.repaired(min(xs), min(ys), max(xs), max(ys))
    return box


def regions_to_results(
    regions: Sequence[Region], config: LabelConfig, width: int, height: int, seed: str = ""
) -> list[ResultItem]:
    """Result items for regions; degenerate boxes are left out. Ids are stable for equal input."""
    shown = [region for region in regions if not region.box.is_degenerate]
    items: list[ResultItem] = []
    for region, region_id in zip(shown, stable_ids(shown, seed), strict=True):
        base: ResultItem = {
            "id": region_id,
            "to_name": config.image,
            "original_width": width,
            "original_height": height,
            "image_rotation": 0,
        }
        if region.score is not None:
            base["score"] = region.score
        geometry = rectangle_value(region.box)
        labels = [region.label] if region.label else []
        if config.box_type == "rectanglelabels":
            value = geometry | {"rectanglelabels": labels}
            items.append(_item(base, config.box_control, "rectanglelabels", value))
        else:
            items.append(_item(base, config.box_control, "rectangle", geometry.copy()))
            if config.labels_control and labels:
                value = geometry | {"labels": labels}
                items.append(_item(base, config.labels_control, "labels", value))
        if config.text_control and region.text:
            value = geometry | {"text": [region.text]}
            items.append(_item(base, config.text_control, "textarea", value))
    return items


def _item(base: ResultItem, from_name: str, kind: str, value: dict[str, Any]) -> ResultItem:
    """One result item: the region's common fields, then its control, type and value."""
    item = base.copy()
    item["from_name"] = from_name
    item["type"] = kind
    item["value"] = value
    return item


def results_to_regions(results: Iterable[Mapping[str, Any]], config: LabelConfig) -> list[Region]:
    """Regions of an annotation or prediction: items sharing an id merge into one region.

    Items of other tags (choices, a global text prompt) are ignored.
    """
    by_id: dict[str, dict[str, Any]] = {}
    for result in results:
        if result.get("to_name") != config.image or "value" not in result:
            continue
        region = by_id.setdefault(str(result.get("id")), {})
        value = result["value"]
        kind = result.get("type")
        if (
            kind in ("rectanglelabels", "rectangle")
            and result.get("from_name") == config.box_control
        ):
            region["box"] = box_from_rectangle(
                value, result.get("original_width"), result.get("original_height")
            )
            if result.get("score") is not None:
                region["score"] = float(result["score"])
        if kind in ("rectanglelabels", "labels") and value.get(kind):
            region["label"] = value[kind][0]
        if kind == "textarea" and result.get("from_name") == config.text_control:
            region["text"] = " ".join(str(t) for t in value.get("text") or [])
    return [
        Region(
            box=fields["box"],
            label=fields.get("label"),
            text=fields.get("text"),
            score=fields.get("score"),
            id=region_id,
        )
        for region_id, fields in by_id.items()
        if "box" in fields
    ]


def referring_prompt_for(
    result: Mapping[str, Any], question: str = DEFAULT_REFERRING_QUESTION
) -> str:
    """The referring question about a rectangle a user drew in Label Studio."""
    box = box_from_rectangle(
        result["value"], result.get("original_width"), result.get("original_height")
    )
    return referring_prompt(box, question)
