"""Comparing a prediction with its human correction, region by region and page by page.

Boxes are matched one-to-one by the Hungarian algorithm on 1 - IoU; a match counts (a true
positive) at IoU >= 0.5. OCR text is compared per page: every region's text in reading order,
one line each, so a missed line counts as deleted characters and a hallucinated one as inserted
characters (a box-matched comparison would see neither). Character error rate = edit distance /
reference length, normalised edit distance = edit distance / longer length, on NFC-normalised
text so that composed and decomposed Hangul compare equal. Edit distances come from rapidfuzz
(Levenshtein, unit costs).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from rapidfuzz.distance import Levenshtein
from scipy.optimize import linear_sum_assignment

from varco_labeler.feedback.reading_order import reading_order
from varco_labeler.regions import Region

MATCH_IOU = 0.5
# Below this IoU a kept box counts as moved: about a 5% shift of a box's side.
MATERIAL_IOU = 0.9


@dataclass(frozen=True)
class Match:
    predicted: int
    reference: int
    iou: float


@dataclass(frozen=True)
class Matching:
    """Matched pairs (IoU >= threshold) and the indices left over on each side."""

    matches: tuple[Match, ...]
    unmatched_predicted: tuple[int, ...]
    unmatched_reference: tuple[int, ...]


def match_regions(
    predicted: Sequence[Region], reference: Sequence[Region], threshold: float = MATCH_IOU
) -> Matching:
    """One-to-one matching maximising total IoU; pairs below ``threshold`` stay unmatched."""
    matches: list[Match] = []
    if predicted and reference:
        iou = np.array([[p.box.iou(r.box) for r in reference] for p in predicted])
        rows, cols = linear_sum_assignment(1.0 - iou)
        matches = [
            Match(int(i), int(j), float(iou[i, j]))
            for i, j in zip(rows, cols, strict=True)
            if iou[i, j] >= threshold
        ]
    used_p = {m.predicted for m in matches}
    used_r = {m.reference for m in matches}
    return Matching(
        tuple(matches),
        tuple(i for i in range(len(predicted)) if i not in used_p),
        tuple(j for j in range(len(reference)) if j not in used_r),
    )


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance over characters (insert, delete, substitute: 1 each)."""
    return int(Levenshtein.distance(a, b))


def nfc(text: str | None) -> str:
    return unicodedata.normalize("NFC", text or "").strip()


def cer(predicted: str | None, reference: str | None) -> float:
    """Character error rate; 0 for two empty strings, 1 per character against an empty one."""
    p, r = nfc(predicted), nfc(reference)
    if not r:
        return float(len(p) > 0)
    return edit_distance(p, r) / len(r)


def ned(predicted: str | None, reference: str | None) -> float:
    """Normalised edit distance in [0, 1]: edit distance over the longer string's length."""
    p, r = nfc(predicted), nfc(reference)
    longest = max(len(p), len(r))
    return edit_distance(p, r) / longest if longest else 0.0


def page_text(regions: Sequence[Region]) -> str:
    """A page's transcription: each region's text in reading order, one per line."""
    return "\n".join(nfc(r.text) for r in reading_order(regions) if nfc(r.text))


@dataclass(frozen=True)
class PageOcr:
    """One page's transcription against the human one: ``edits`` (Levenshtein) over
    ``reference_chars``; ``ned`` = edits / the longer text's length."""

    edits: int
    reference_chars: int
    ned: float


def page_ocr(predicted: Sequence[Region], reference: Sequence[Region]) -> PageOcr:
    """Compare whole pages, so text the model missed or made up counts in full."""
    p, r = page_text(predicted), page_text(reference)
    return PageOcr(edit_distance(p, r), len(r), ned(p, r))


def region_changed(predicted: Region, reference: Region, iou: float) -> bool:
    """A kept region was adjusted: moved (IoU < 0.9), relabelled, or its text retyped."""
    return (
        iou < MATERIAL_IOU
        or (predicted.label or predicted.phrase) != (reference.label or reference.phrase)
        or nfc(predicted.text) != nfc(reference.text)
    )


def differs_materially(predicted: Sequence[Region], reference: Sequence[Region]) -> bool:
    """True when a human changed something that matters for training: a region added or
    removed, a box moved (best one-to-one IoU < 0.9), a label changed, or text retyped.

    Sub-pixel nudges and reordering do not count, so DPO pairs carry real corrections only.
    """
    if len(predicted) != len(reference):
        return True
    matching = match_regions(predicted, reference, threshold=0.0)
    if matching.unmatched_predicted or matching.unmatched_reference:
        return True
    return any(
        region_changed(predicted[m.predicted], reference[m.reference], m.iou)
        for m in matching.matches
    )
