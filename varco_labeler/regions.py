"""Regions: the one type between the model's text and Label Studio's JSON.

VARCO text -> :func:`regions_from_varco` -> regions -> ``labelstudio.results`` -> result JSON,
and back: result JSON -> regions -> :func:`regions_to_varco` -> the answer the model should give.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from varco_labeler.varco import Box, OcrItem, Parsed, Phrase, Task, Text, format_items


@dataclass(frozen=True, slots=True)
class Region:
    """One box on the image and what is known about it.

    ``phrase`` is the model's grounding phrase ("two cats"), ``label`` the Label Studio label it
    maps to ("Cat"), ``text`` the region's transcription or answer, ``score`` a confidence in 0..1.
    """

    box: Box
    label: str | None = None
    phrase: str | None = None
    text: str | None = None
    score: float | None = None
    id: str | None = None

    def with_(self, **changes: Any) -> Region:
        # Spelled out: dataclasses.replace costs more than the rest of a conversion per region.
        region = Region(
            changes.pop("box", self.box),
            changes.pop("label", self.label),
            changes.pop("phrase", self.phrase),
            changes.pop("text", self.text),
            changes.pop("score", self.score),
            changes.pop("id", self.id),
        )
        if changes:
            raise TypeError(f"Region has no field {', '.join(changes)}")
        return region

    def to_json(self) -> dict[str, Any]:
        """Plain JSON: how regions travel through the queue and sit in the feedback store."""
        return {
            "box": list(self.box.as_tuple()),
            "label": self.label,
            "phrase": self.phrase,
            "text": self.text,
            "score": self.score,
            "id": self.id,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Region:
        return cls(
            box=Box(*data["box"]),
            label=data.get("label"),
            phrase=data.get("phrase"),
            text=data.get("text"),
            score=data.get("score"),
            id=data.get("id"),
        )


def regions_from_varco(
    parsed: Parsed, scores: Sequence[float | None] | None = None
) -> list[Region]:
    """One region per box: a phrase with two boxes gives two regions sharing the phrase.

    ``scores``, when given, holds one confidence per grounded item of ``parsed`` (in order).
    """
    regions: list[Region] = []
    for index, item in enumerate(parsed.grounded):
        score = scores[index] if scores is not None else None
        phrase, text = (item.text, None) if isinstance(item, Phrase) else (None, item.text)
        regions.extend(Region(box, None, phrase, text, score) for box in item.boxes)
    return regions


@dataclass(frozen=True)
class ParserNotes:
    """What the parser dropped from or repaired in the model's text, as plain strings (JSON)."""

    dropped: tuple[str, ...] = ()
    repaired: tuple[str, ...] = ()

    def to_json(self) -> dict[str, list[str]]:
        return {"dropped": list(self.dropped), "repaired": list(self.repaired)}

    @classmethod
    def of(cls, parsed: Parsed) -> ParserNotes:
        return cls(
            tuple(str(p) for p in parsed.problems if p.dropped),
            tuple(str(p) for p in parsed.problems if not p.dropped),
        )


def model_output(parsed: Parsed, scores: Sequence[float | None] | None = None) -> dict[str, Any]:
    """What the model said, as JSON: its regions (one per box) and the parser's notes. This is
    what crosses the queue and what ``predict`` prints; nobody parses the text again."""
    return {
        "regions": [region.to_json() for region in regions_from_varco(parsed, scores)],
        "notes": ParserNotes.of(parsed).to_json(),
    }


def regions_to_varco(regions: Iterable[Region], task: Task | str) -> str:
    """The answer the model should have given for these regions, in its exact output form.

    OCR: one ``<char>`` item per region with text, one per line. Grounding: one ``<obj>`` item per
    label (or phrase), its boxes joined by ``<delim>``, items separated by ", ".
    """
    task = Task(task)
    if task is Task.OCR:
        lines = [OcrItem(r.text, (r.box,)) for r in regions if r.text]
        return "\n".join(item.to_text() for item in lines)
    boxes_by_name: dict[str, list[Box]] = {}
    for region in regions:
        name = region.label or region.phrase
        if name:
            boxes_by_name.setdefault(name, []).append(region.box)
    items: list[Phrase | Text] = []
    for name, boxes in boxes_by_name.items():
        if items:
            items.append(Text(", "))
        items.append(Phrase(name, tuple(boxes)))
    return format_items(items)


def stable_ids(regions: Sequence[Region], seed: str = "") -> list[str]:
    """Each region's id, or for a region without one an id derived from its content, so re-runs
    give the same ids. ``seed`` (for example the image reference) keeps ids of equal regions on
    different images apart."""
    seen: dict[str, int] = {}
    ids = []
    for region in regions:
        if region.id:
            ids.append(region.id)
            continue
        key = (
            f"{seed}|{region.label or ''}|{region.phrase or ''}|{region.text or ''}"
            f"|{region.box.to_text()}"
        )
        occurrence = seen.get(key, 0)
        seen[key] = occurrence + 1
        ids.append(hashlib.sha1(f"{key}|{occurrence}".encode()).hexdigest()[:10])
    return ids
