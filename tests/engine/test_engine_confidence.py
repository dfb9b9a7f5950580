"""Token offsets -> grounded items -> region scores, without torch."""

from __future__ import annotations

import math

import pytest

from varco_labeler.engine.confidence import (
    Token,
    geometric_mean,
    item_byte_spans,
    region_scores,
    tokens_in_span,
)
from varco_labeler.varco import parse


def _tokens(pieces: list[str], probabilities: list[float] | None = None) -> list[Token]:
    probabilities = probabilities or [1.0] * len(pieces)
    return [Token(p.encode(), q) for p, q in zip(pieces, probabilities, strict=True)]


def test_spans_cover_each_item_from_opening_tag_to_closing_box():
    text = (
        "A <obj>cat</obj><bbox>0.1, 0.2, 0.3, 0.4</bbox> and <obj>dog</obj><bbox>0, 0, 1, 1</bbox>."
    )
    spans = item_byte_spans(text.encode(), parse(text))
    assert [text.encode()[s:e].decode() for s, e in spans] == [
        "<obj>cat</obj><bbox>0.1, 0.2, 0.3, 0.4</bbox>",
        "<obj>dog</obj><bbox>0, 0, 1, 1</bbox>",
    ]


def test_same_phrase_twice_maps_to_two_distinct_spans():
    text = "<obj>cat</obj><bbox>0, 0, 0.5, 0.5</bbox> <obj>cat</obj><bbox>0.5, 0.5, 1, 1</bbox>"
    first, second = item_byte_spans(text.encode(), parse(text))
    assert first[1] <= second[0]


def test_item_without_closing_box_ends_at_next_item():
    text = "<char>A</char><bbox>0, 0, 0.5, 0.5\n<char>B</char><bbox>0.5, 0.5, 1, 1</bbox>"
    spans = item_byte_spans(text.encode(), parse(text))
    assert [text[s:e] for s, e in spans] == [
        "<char>A</char><bbox>0, 0, 0.5, 0.5\n",
        "<char>B</char><bbox>0.5, 0.5, 1, 1</bbox>",
    ]


def test_korean_spans_are_byte_offsets():
    text = "<char>백범로</char><bbox>0.1, 0.2, 0.3, 0.4</bbox>"
    data = text.encode()
    [span] = item_byte_spans(data, parse(text))
    assert span == (0, len(data))


def test_unfindable_item_gets_none():
    # The parser NFC-normalises; a decomposed Hangul syllable in the raw bytes is not found.
    decomposed = "\u1100\u1161"  # 가 as jamo
    text = f"<char>{decomposed}</char><bbox>0, 0, 1, 1</bbox>"
    assert item_byte_spans(text.encode(), parse(text)) == [None]


def test_tokens_straddling_a_span_edge_count():
    tokens = _tokens(["ab", "cd", "ef"])
    assert [t.piece for t in tokens_in_span(tokens, (1, 3))] == [b"ab", b"cd"]
    assert [t.piece for t in tokens_in_span(tokens, (2, 4))] == [b"cd"]
    assert tokens_in_span(tokens, (6, 6)) == []


def test_scores_use_only_the_items_tokens_and_their_geometric_mean():
    pieces = ["A ", "<obj>", "cat", "</obj>", "<bbox>", "0, 0, 1, 1", "</bbox>", " end"]
    probabilities = [0.01, 0.9, 0.5, 0.9, 0.9, 0.8, 0.9, 0.01]
    tokens = _tokens(pieces, probabilities)
    text = "".join(pieces)
    [score] = region_scores(tokens, parse(text))
    expected = math.exp(sum(math.log(p) for p in probabilities[1:7]) / 6)
    assert score == pytest.approx(expected)


def test_one_unlikely_token_lowers_the_score_more_than_an_arithmetic_mean_would():
    probabilities = [1.0] * 9 + [0.01]
    assert geometric_mean(probabilities) < 0.7 < sum(probabilities) / len(probabilities)


def test_split_utf8_character_across_tokens():
    # Byte-level tokens may cut a Hangul syllable in two; both halves belong to the item.
    data = "<char>가</char><bbox>0, 0, 1, 1</bbox>".encode()
    pieces = [data[:7], data[7:8], data[8:]]
    tokens = [Token(pieces[0], 1.0), Token(pieces[1], 0.25), Token(pieces[2], 1.0)]
    [score] = region_scores(tokens, parse(data.decode()))
    assert score == pytest.approx(0.25 ** (1 / 3))


def test_one_score_per_grounded_item_and_none_without_tokens():
    text = "<obj>a</obj><bbox>0, 0, 1, 1</bbox><obj>b</obj><bbox>0, 0, 1, 1</bbox>"
    assert region_scores([], parse(text)) == [None, None]
    assert geometric_mean([]) is None
    assert geometric_mean([0.0, 1.0]) == 0.0
