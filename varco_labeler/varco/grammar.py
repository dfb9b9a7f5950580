"""The VARCO-VISION tag grammar: parse raw model output, and format it back exactly.

The model writes grounded phrases as ``<obj>two cats</obj><bbox>x1, y1, x2, y2<delim>...</bbox>``
and OCR items as ``<char>text</char><bbox>x1, y1, x2, y2</bbox>``, one per line. Real outputs go
wrong (max tokens hit mid-box, a closing tag missing, junk inside a box), so :func:`parse` never
raises: it keeps every complete item, drops the rest, and lists what it dropped or repaired.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import ClassVar

from varco_labeler.varco.boxes import Box

# End-of-turn and padding tokens that decoding with skip_special_tokens=False leaves in the text.
_END_OF_TURN = re.compile(r"<\|im_end\|>|<\|endoftext\|>|</s>")
_CONTROL_TOKEN = re.compile(r"<\|[a-z_]+\|>|<pad>")
_TAG = re.compile(r"<(/?)(obj|char|bbox)>|<delim>")
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_BOX_SEPARATORS = re.compile(r"[\s,]+")
# A well-formed item: plain numbers, ", " separated, boxes joined by <delim>. Outputs made only of
# these and tag-free text take the fast path of :func:`parse`; anything else the full parser.
_PLAIN_NUMBER = r"[0-9]+(?:\.[0-9]+)?"
_PLAIN_BOX = rf"{_PLAIN_NUMBER}(?: *, *{_PLAIN_NUMBER}){{3}}"
_WELL_FORMED_ITEM = re.compile(
    rf"<(obj|char)>([^<]*)</\1><bbox>({_PLAIN_BOX}(?:<delim>{_PLAIN_BOX})*)</bbox>"
)


@dataclass(frozen=True, slots=True)
class Text:
    """Plain text between tagged items, kept verbatim."""

    text: str


@dataclass(frozen=True, slots=True)
class Grounded:
    """Text tied to one or more boxes; subclasses differ only in the tag the model uses."""

    tag: ClassVar[str] = ""
    text: str
    boxes: tuple[Box, ...]

    def to_text(self) -> str:
        boxes = "<delim>".join(box.to_text() for box in self.boxes)
        return f"<{self.tag}>{self.text}</{self.tag}><bbox>{boxes}</bbox>"


@dataclass(frozen=True, slots=True)
class Phrase(Grounded):
    """A grounded phrase: ``<obj>phrase</obj><bbox>...</bbox>``."""

    tag: ClassVar[str] = "obj"


@dataclass(frozen=True, slots=True)
class OcrItem(Grounded):
    """A piece of recognised text: ``<char>text</char><bbox>...</bbox>``."""

    tag: ClassVar[str] = "char"


Item = Text | Phrase | OcrItem
_GROUNDED_BY_TAG: dict[str, type[Grounded]] = {"obj": Phrase, "char": OcrItem}


@dataclass(frozen=True, slots=True)
class Problem:
    """Something in the raw output that was dropped or repaired, with where it was (char offset)."""

    offset: int
    message: str
    dropped: bool = True

    def __str__(self) -> str:
        verb = "dropped" if self.dropped else "repaired"
        return f"at {self.offset}: {verb}: {self.message}"


@dataclass(frozen=True, slots=True)
class Parsed:
    items: tuple[Item, ...]
    problems: tuple[Problem, ...] = ()

    @property
    def grounded(self) -> tuple[Phrase | OcrItem, ...]:
        return tuple(item for item in self.items if not isinstance(item, Text))

    @property
    def dropped(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.dropped)

    def to_text(self) -> str:
        return format_items(self.items)


def format_items(items: tuple[Item, ...] | list[Item]) -> str:
    """Write items back as the model writes them; the inverse of :func:`parse` for clean output."""
    return "".join(item.text if isinstance(item, Text) else item.to_text() for item in items)


def clean_model_text(raw: str) -> str:
    """Cut at the end-of-turn token and remove padding and other control tokens."""
    end = _END_OF_TURN.search(raw)
    if end:
        raw = raw[: end.start()]
    return _CONTROL_TOKEN.sub("", raw)


def parse(raw: str) -> Parsed:
    """Parse raw model output. Never raises; see :class:`Parsed.problems` for what was lost."""
    text = unicodedata.normalize("NFC", clean_model_text(raw))
    return _parse_well_formed(text) or _Parser(text).run()


def _parse_well_formed(text: str) -> Parsed | None:
    """The common case, fast: every item well formed and every box in range and ordered, which
    leaves the full parser nothing to repair or report. None for anything else."""
    items: list[Item] = []
    cursor = 0
    for match in _WELL_FORMED_ITEM.finditer(text):
        if match.start() != cursor and not _append_plain_text(text, cursor, match.start(), items):
            return None
        tag, phrase, numbers = match.groups()
        # The pattern guarantees groups of four plain numbers with spaces around the commas.
        values = [float(number) for number in numbers.replace("<delim>", ",").split(",")]
        boxes = []
        for start in range(0, len(values), 4):
            x1, y1, x2, y2 = values[start : start + 4]
            if not (0.0 <= x1 <= x2 <= 1.0 and 0.0 <= y1 <= y2 <= 1.0):
                return None
            boxes.append(Box(x1, y1, x2, y2))
        items.append(_GROUNDED_BY_TAG[tag](phrase, tuple(boxes)))
        cursor = match.end()
    if cursor != len(text) and not _append_plain_text(text, cursor, len(text), items):
        return None
    return Parsed(tuple(items))


def _append_plain_text(text: str, start: int, end: int, items: list[Item]) -> bool:
    """Append text[start:end] as a Text item unless it holds a tag (the full parser's case)."""
    if text.find("<", start, end) >= 0 and _TAG.search(text, start, end):
        return False
    items.append(Text(text[start:end]))
    return True


@dataclass
class _Pending:
    """A tagged item being read: its tag, text, finished boxes and the box text being read."""

    tag: str
    offset: int
    text: str = ""
    text_closed: bool = False
    in_box: bool = False
    box_text: str = ""
    box_offset: int = 0
    boxes: list[Box] = field(default_factory=list)


class _Parser:
    def __init__(self, text: str) -> None:
        self.source = text
        self.items: list[Item] = []
        self.problems: list[Problem] = []
        self.pending: _Pending | None = None

    def run(self) -> Parsed:
        cursor = 0
        for match in _TAG.finditer(self.source):
            self._chunk(self.source[cursor : match.start()], cursor)
            self._tag(match, match.start())
            cursor = match.end()
        self._chunk(self.source[cursor:], cursor)
        self._end_of_text()
        return Parsed(tuple(_merge_text(self.items)), tuple(self.problems))

    def _problem(self, offset: int, message: str, dropped: bool = True) -> None:
        self.problems.append(Problem(offset, message, dropped))

    def _chunk(self, chunk: str, offset: int) -> None:
        if not chunk:
            return
        pending = self.pending
        if pending is None:
            self.items.append(Text(chunk))
        elif pending.in_box:
            pending.box_text += chunk
        elif not pending.text_closed:
            pending.text += chunk
        elif chunk.strip():
            # Text between </obj> and <bbox>: the phrase never got its box.
            self._finish(offset)
            self.items.append(Text(chunk))

    def _tag(self, match: re.Match[str], offset: int) -> None:
        closing, name = match.group(1) == "/", match.group(2)
        pending = self.pending
        if name is None:  # <delim>
            if pending is not None and pending.in_box:
                self._close_box(offset, terminated=True)
            else:
                self._problem(offset, "stray <delim> outside a box", dropped=False)
        elif name == "bbox" and not closing:
            if pending is None:
                self.pending = _Pending(tag="", offset=offset, text_closed=True)
                self._open_box(offset + len(match.group()))
            elif pending.in_box:
                self._problem(offset, "<bbox> inside a box read as <delim>", dropped=False)
                self._close_box(offset, terminated=True)
                self._open_box(offset + len(match.group()))
            else:
                if not pending.text_closed:
                    self._problem(offset, f"missing </{pending.tag}>", dropped=False)
                    pending.text_closed = True
                self._open_box(offset + len(match.group()))
        elif name == "bbox":  # </bbox>
            if pending is not None and pending.in_box:
                self._close_box(offset, terminated=True)
                self._finish(offset)
            else:
                self._problem(offset, "stray </bbox>", dropped=False)
        elif closing:  # </obj> or </char>
            if pending is not None and not pending.text_closed and pending.tag == name:
                pending.text_closed = True
            else:
                self._problem(offset, f"stray </{name}>", dropped=False)
        else:  # <obj> or <char>: a new item starts; whatever was open ends here.
            if pending is not None:
                if pending.in_box:
                    self._problem(offset, "missing </bbox>", dropped=False)
                    self._close_box(offset, terminated=True)
                self._finish(offset)
            self.pending = _Pending(tag=name, offset=offset)

    def _open_box(self, offset: int) -> None:
        assert self.pending is not None
        self.pending.in_box = True
        self.pending.box_text = ""
        self.pending.box_offset = offset

    def _close_box(self, offset: int, *, terminated: bool) -> None:
        pending = self.pending
        assert pending is not None
        box_text, box_offset = pending.box_text, pending.box_offset
        pending.box_text = ""
        if not terminated:
            self._problem(box_offset, f"truncated box {box_text.strip()!r}")
            return
        pending.boxes.extend(self._read_boxes(box_text, box_offset))

    def _read_boxes(self, box_text: str, offset: int) -> list[Box]:
        numbers = _NUMBER.findall(box_text)
        junk = _BOX_SEPARATORS.sub("", _NUMBER.sub("", box_text))
        if junk:
            self._problem(offset, f"non-numeric {junk!r} in box", dropped=not numbers)
        if not numbers or len(numbers) % 4:
            if numbers:
                self._problem(
                    offset, f"box needs 4 numbers, got {len(numbers)}: {box_text.strip()!r}"
                )
            elif not junk:
                self._problem(offset, "empty box")
            return []
        if len(numbers) > 4:
            self._problem(offset, f"{len(numbers)} numbers read as several boxes", dropped=False)
        boxes = []
        for start in range(0, len(numbers), 4):
            try:
                values = [float(n) for n in numbers[start : start + 4]]
                box, notes = Box.repaired(*values)
            except (ValueError, OverflowError) as error:
                self._problem(offset, f"unreadable box {numbers[start : start + 4]}: {error}")
                continue
            for note in notes:
                self._problem(offset, note, dropped=False)
            boxes.append(box)
        return boxes

    def _finish(self, offset: int) -> None:
        """Turn the pending item into an item, or into text when it has no usable box."""
        pending = self.pending
        self.pending = None
        if pending is None:
            return
        if not pending.tag:
            if pending.boxes:
                self._problem(pending.offset, "box without a phrase")
            return
        if pending.boxes:
            cls = _GROUNDED_BY_TAG[pending.tag]
            self.items.append(cls(pending.text, tuple(pending.boxes)))
            return
        self._problem(pending.offset, f"<{pending.tag}>{pending.text}</{pending.tag}> has no box")
        if pending.tag == "obj" and pending.text:
            # A phrase without a box is still part of the description.
            self.items.append(Text(pending.text))

    def _end_of_text(self) -> None:
        pending = self.pending
        if pending is None:
            return
        if pending.in_box:
            # Output ended inside a box (max tokens hit): its last numbers may be cut short.
            self._close_box(len(self.source), terminated=False)
        elif not pending.text_closed:
            self._problem(pending.offset, f"output ends inside <{pending.tag}>", dropped=False)
        self._finish(len(self.source))


def _merge_text(items: list[Item]) -> list[Item]:
    merged: list[Item] = []
    for item in items:
        if isinstance(item, Text) and merged and isinstance(merged[-1], Text):
            merged[-1] = Text(merged[-1].text + item.text)
        else:
            merged.append(item)
    return merged
