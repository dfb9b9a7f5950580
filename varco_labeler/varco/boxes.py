"""Normalised boxes: x1, y1, x2, y2 in 0..1 of the original image, as VARCO-VISION writes them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

# The model prints at most three decimals; finer precision is noise in its answers.
DECIMALS = 3
# Wider than this, a box keeps its area at the model's precision whatever the rounding.
_SURELY_WIDE = 2 * 10**-DECIMALS


@dataclass(frozen=True, slots=True)
class Box:
    x1: float
    y1: float
    x2: float
    y2: float

    @classmethod
    def repaired(cls, x1: float, y1: float, x2: float, y2: float) -> tuple[Box, list[str]]:
        """Build a box from raw model numbers: clamp to [0, 1] and order the corners.

        Returns the box and what had to be repaired, in words, so callers can report it.
        """
        notes: list[str] = []
        raw = (x1, y1, x2, y2)
        if not all(math.isfinite(v) for v in raw):
            raise ValueError(f"non-finite coordinate in {raw}")
        clamped = tuple(min(1.0, max(0.0, v)) for v in raw)
        if clamped != raw:
            notes.append(f"coordinates {_fmt_all(raw)} clamped to [0, 1]")
        cx1, cy1, cx2, cy2 = clamped
        if cx1 > cx2:
            cx1, cx2 = cx2, cx1
            notes.append("x1 > x2, swapped")
        if cy1 > cy2:
            cy1, cy2 = cy2, cy1
            notes.append("y1 > y2, swapped")
        return cls(cx1, cy1, cx2, cy2), notes

    @property
    def width(self) -> float:
        return self.x2 - self.x1

    @property
    def height(self) -> float:
        return self.y2 - self.y1

    @property
    def is_degenerate(self) -> bool:
        """True when the box has no area once written at the model's precision."""
        if self.x2 - self.x1 > _SURELY_WIDE and self.y2 - self.y1 > _SURELY_WIDE:
            return False  # rounding moves each side by at most half a step
        return (
            round(self.x2, DECIMALS) - round(self.x1, DECIMALS) <= 0
            or round(self.y2, DECIMALS) - round(self.y1, DECIMALS) <= 0
        )

    def rounded(self) -> Box:
        return Box(*(round(v, DECIMALS) for v in self.as_tuple()))

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.x1, self.y1, self.x2, self.y2)

    def iou(self, other: Box) -> float:
        ix = max(0.0, min(self.x2, other.x2) - max(self.x1, other.x1))
        iy = max(0.0, min(self.y2, other.y2) - max(self.y1, other.y1))
        inter = ix * iy
        union = self.width * self.height + other.width * other.height - inter
        return inter / union if union > 0 else 0.0

    def to_text(self) -> str:
        """The box as the model writes it: ``0.521, 0.049, 0.997, 0.783``."""
        fmt = format_coordinate
        return f"{fmt(self.x1)}, {fmt(self.y1)}, {fmt(self.x2)}, {fmt(self.y2)}"


@lru_cache(maxsize=4096)  # boxes repeat a few thousand values; formatting dominates region ids
def format_coordinate(value: float) -> str:
    """Up to three decimals, no trailing zeros, as the model writes them: 0.99, 0.34, 1.0."""
    return repr(round(value, DECIMALS) + 0.0)  # + 0.0 turns -0.0 into 0.0


def _fmt_all(values: tuple[float, ...]) -> str:
    return ", ".join(format_coordinate(v) for v in values)
