"""Reading order for OCR regions: lines top to bottom, words left to right within a line.

Annotators draw (and the model emits) boxes in any order; a training target or a page-level
transcription should read the way a person reads the page. Boxes whose vertical centres lie within
half a line height of a line's centre join that line; lines are read top to bottom and each
line left to right. Left-to-right scripts only (Korean and English both are).
"""

from __future__ import annotations

from collections.abc import Sequence

from varco_labeler.regions import Region


def reading_order(regions: Sequence[Region]) -> list[Region]:
    """``regions`` sorted as a page is read; ties keep their given order."""
    lines: list[list[Region]] = []
    for region in sorted(regions, key=lambda r: _centre_y(r)):
        line = lines[-1] if lines else None
        if line is not None and _same_line(line, region):
            line.append(region)
        else:
            lines.append([region])
    return [region for line in lines for region in sorted(line, key=lambda r: r.box.x1)]


def _centre_y(region: Region) -> float:
    return (region.box.y1 + region.box.y2) / 2


def _same_line(line: list[Region], region: Region) -> bool:
    centre = sum(_centre_y(r) for r in line) / len(line)
    height = sum(r.box.y2 - r.box.y1 for r in line) / len(line)
    own = region.box.y2 - region.box.y1
    # Half the smaller height: a tall neighbour line never swallows a short one.
    return abs(_centre_y(region) - centre) <= min(height, own) / 2
