"""Region confidence from the probabilities of the generated tokens. Pure Python, no torch.

A grounded item's score is the geometric mean of the probabilities of the tokens that spell it,
from ``<obj>`` (or ``<char>``) to ``</bbox>``: ``exp(mean(log p))``. Why this aggregate:

- the product (the item's sequence probability) punishes long phrases and multi-box items for
  their length, so scores would not be comparable between items;
- the arithmetic mean is dominated by the many near-certain tokens (tags, ``", "``, ``"0."``) and
  barely moves when one token, such as the leading digit of a coordinate, was a guess;
- the minimum is the opposite extreme: one uncertain last digit (0.52 vs 0.53, a box that is fine
  either way) would sink the whole region.

The geometric mean is length-normalised, like the product, yet one unlikely token still pulls it
down hard, which is what a reviewer sorting pre-labels by score needs.

Spans are found in bytes, because byte-level tokens may split a UTF-8 character (Korean text).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from varco_labeler.varco import Parsed

# Where an item ends when its </bbox> never came: the next item's opening tag.
_ITEM_START = re.compile(rb"<(?:obj|char)>")
_BOX_END = b"</bbox>"


@dataclass(frozen=True, slots=True)
class Token:
    """One generated token: the bytes it adds to the output and its probability (0..1]."""

    piece: bytes
    probability: float


def item_byte_spans(text: bytes, parsed: Parsed) -> list[tuple[int, int] | None]:
    """Byte ranges ``[start, end)`` in ``text`` of each grounded item of ``parsed``, in order.

    ``parsed`` must come from this text. An item that cannot be found (its text was normalised by
    the parser, for instance) gets ``None`` rather than a wrong span.
    """
    spans: list[tuple[int, int] | None] = []
    cursor = 0
    for item in parsed.grounded:
        opening = f"<{item.tag}>{item.text}".encode()
        start = text.find(opening, cursor)
        if start < 0:
            spans.append(None)
            continue
        end = _item_end(text, start + len(opening))
        spans.append((start, end))
        cursor = end
    return spans


def _item_end(text: bytes, after: int) -> int:
    box_end = text.find(_BOX_END, after)
    next_item = _ITEM_START.search(text, after)
    ends = [len(text)]
    if box_end >= 0:
        ends.append(box_end + len(_BOX_END))
    if next_item is not None:
        ends.append(next_item.start())
    return min(ends)


def tokens_in_span(tokens: Sequence[Token], span: tuple[int, int]) -> list[Token]:
    """The tokens whose bytes overlap ``span`` (a token straddling an edge counts)."""
    start, end = span
    inside = []
    offset = 0
    for token in tokens:
        token_end = offset + len(token.piece)
        if offset < end and token_end > start:
            inside.append(token)
        offset = token_end
    return inside


def geometric_mean(probabilities: Sequence[float]) -> float | None:
    if not probabilities:
        return None
    if min(probabilities) <= 0.0:
        return 0.0
    return math.exp(sum(math.log(p) for p in probabilities) / len(probabilities))


def region_scores(tokens: Sequence[Token], parsed: Parsed) -> list[float | None]:
    """One confidence per grounded item of ``parsed`` (see the module docstring), or ``None``.

    ``parsed`` must be the parse of the text the tokens spell.
    """
    text = b"".join(token.piece for token in tokens)
    scores: list[float | None] = []
    for span in item_byte_spans(text, parsed):
        if span is None:
            scores.append(None)
            continue
        scores.append(geometric_mean([t.probability for t in tokens_in_span(tokens, span)]))
    return scores
