import unicodedata

import pytest
from helpers import varco_fixture
from hypothesis import given, settings
from hypothesis import strategies as st

from varco_labeler.varco import Box, OcrItem, Phrase, Text, format_coordinate, format_items, parse

FIXTURE_NAMES = ["grounding_two_cats", "ocr_street_sign"]


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_fixture_round_trips_exactly(name):
    raw = varco_fixture(name)
    parsed = parse(raw)
    assert parsed.problems == ()
    assert format_items(parsed.items) == raw


def test_two_cats_phrases_and_boxes():
    parsed = parse(varco_fixture("grounding_two_cats"))
    phrases = parsed.grounded
    assert [type(p) for p in phrases] == [Phrase, Phrase, Phrase]
    assert [p.text for p in phrases] == ["two cats", "a pink blanket", "two remote controls"]
    assert [len(p.boxes) for p in phrases] == [2, 1, 2]
    assert phrases[0].boxes[1] == Box(0.016, 0.108, 0.512, 0.99)
    assert parsed.items[0] == Text("The image shows ")


def test_ocr_items_keep_korean_text():
    parsed = parse(varco_fixture("ocr_street_sign"))
    items = parsed.grounded
    assert len(items) == 16
    assert all(isinstance(item, OcrItem) for item in items)
    assert items[0].text == "백범로"
    assert items[13].text == "모래내시장역"
    assert all(unicodedata.is_normalized("NFC", item.text) for item in items)
    assert items[15].boxes == (Box(0.564, 0.684, 0.611, 0.723),)


def test_decomposed_hangul_is_normalised_to_nfc():
    decomposed = unicodedata.normalize("NFD", "<char>백범로</char><bbox>0.1, 0.1, 0.2, 0.2</bbox>")
    assert parse(decomposed).grounded[0].text == "백범로"


def _item_spans(raw):
    """(start, end, item) in raw for each grounded item of a clean output."""
    spans, cursor = [], 0
    for item in parse(raw).items:
        text = item.text if isinstance(item, Text) else item.to_text()
        start = raw.index(text, cursor)
        cursor = start + len(text)
        if not isinstance(item, Text):
            spans.append((start, cursor, item))
    return spans


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_truncated_output_keeps_every_complete_item(name):
    raw = varco_fixture(name)
    spans = _item_spans(raw)
    for cut in range(len(raw) + 1):
        parsed = parse(raw[:cut])
        complete = [item for _, end, item in spans if end <= cut]
        got = list(parsed.grounded)
        assert got[: len(complete)] == complete, f"cut at {cut}: {raw[:cut][-40:]!r}"
        cut_item = [(start, item) for start, end, item in spans if start < cut < end]
        if cut_item:
            start, full = cut_item[0]
            # A partial item keeps only boxes that were finished before the cut.
            for extra in got[len(complete) :]:
                assert extra.text == full.text
                assert full.boxes[: len(extra.boxes)] == extra.boxes != full.boxes
            if cut >= start + len(f"<{full.tag}>"):
                assert parsed.problems, f"cut at {cut} inside an item went unreported"
        else:
            assert got == complete


def test_truncated_mid_box_reports_the_dropped_box():
    parsed = parse("<obj>two cats</obj><bbox>0.521, 0.049, 0.997, 0.783<delim>0.016, 0.1")
    assert parsed.grounded == (Phrase("two cats", (Box(0.521, 0.049, 0.997, 0.783),)),)
    assert [p.message for p in parsed.dropped] == ["truncated box '0.016, 0.1'"]


def test_box_cut_after_last_number_is_dropped_because_the_number_may_be_cut():
    parsed = parse("<char>Park</char><bbox>0.564, 0.684, 0.611, 0.72")
    assert parsed.grounded == ()
    assert len(parsed.dropped) == 2  # the box, then the item left without a box


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # missing </obj>
        ("<obj>cat<bbox>0.1, 0.2, 0.3, 0.4</bbox>", [Phrase("cat", (Box(0.1, 0.2, 0.3, 0.4),))]),
        # missing </bbox> before the next item
        (
            "<char>A</char><bbox>0.1, 0.2, 0.3, 0.4<char>B</char><bbox>0.5, 0.5, 0.6, 0.6</bbox>",
            [OcrItem("A", (Box(0.1, 0.2, 0.3, 0.4),)), OcrItem("B", (Box(0.5, 0.5, 0.6, 0.6),))],
        ),
        # whitespace and newlines inside the box
        (
            "<obj>x</obj><bbox>\n 0.1 ,\n0.2,  0.3 ,0.4 \n</bbox>",
            [Phrase("x", (Box(0.1, 0.2, 0.3, 0.4),))],
        ),
        # out of range: clamped; corners out of order: swapped
        ("<obj>x</obj><bbox>1.2, -0.1, 0.3, 0.4</bbox>", [Phrase("x", (Box(0.3, 0.0, 1.0, 0.4),))]),
        # eight numbers without <delim>: two boxes
        (
            "<obj>x</obj><bbox>0.1, 0.1, 0.2, 0.2, 0.3, 0.3, 0.4, 0.4</bbox>",
            [Phrase("x", (Box(0.1, 0.1, 0.2, 0.2), Box(0.3, 0.3, 0.4, 0.4)))],
        ),
        # junk around numbers is ignored when four numbers remain
        (
            "<obj>x</obj><bbox>[0.1, 0.2, 0.3, 0.4]</bbox>",
            [Phrase("x", (Box(0.1, 0.2, 0.3, 0.4),))],
        ),
        # end-of-turn and padding stripped, text after end-of-turn ignored
        (
            "<obj>x</obj><bbox>0.1, 0.2, 0.3, 0.4</bbox><|im_end|><|endoftext|><obj>y</obj>",
            [Phrase("x", (Box(0.1, 0.2, 0.3, 0.4),))],
        ),
    ],
)
def test_malformed_but_salvageable(raw, expected):
    parsed = parse(raw)
    assert list(parsed.grounded) == expected
    assert not parsed.dropped


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("<obj>x</obj><bbox>0.1, 0.2, 0.3</bbox>", "4 numbers, got 3"),
        ("<obj>x</obj><bbox>left top right bottom</bbox>", "non-numeric"),
        ("<obj>x</obj><bbox></bbox>", "empty box"),
        ("<obj>x</obj> and more text", "has no box"),
        ("<bbox>0.1, 0.2, 0.3, 0.4</bbox>", "box without a phrase"),
    ],
)
def test_unsalvageable_is_dropped_and_reported(raw, fragment):
    parsed = parse(raw)
    assert parsed.grounded == ()
    assert any(fragment in p.message for p in parsed.dropped), parsed.problems


def test_phrase_without_box_stays_in_the_description():
    parsed = parse("A <obj>cat</obj> sleeps.")
    assert format_items(parsed.items) == "A cat sleeps."


def test_coordinates_are_written_like_the_model_writes_them():
    assert [format_coordinate(v) for v in (0.99, 0.34, 1.0, 0.0, 0.5211, 0.0004, -0.0)] == [
        "0.99",
        "0.34",
        "1.0",
        "0.0",
        "0.521",
        "0.0",
        "0.0",
    ]


# Text that holds no tag: the grammar's round-trip property is about tagged structure.
_plain = st.text(st.characters(blacklist_characters="<>", blacklist_categories=["Cs"])).filter(
    lambda s: unicodedata.is_normalized("NFC", s)
)
_coordinate = st.integers(0, 1000).map(lambda n: n / 1000)


@st.composite
def _boxes(draw):
    x = sorted([draw(_coordinate), draw(_coordinate)])
    y = sorted([draw(_coordinate), draw(_coordinate)])
    return Box(x[0], y[0], x[1], y[1])


_grounded = st.builds(
    lambda cls, text, boxes: cls(text, tuple(boxes)),
    st.sampled_from([Phrase, OcrItem]),
    _plain,
    st.lists(_boxes(), min_size=1, max_size=3),
)
_items = st.lists(st.one_of(_plain.filter(bool).map(Text), _grounded), max_size=12)


def _merged(items):
    out = []
    for item in items:
        if isinstance(item, Text) and out and isinstance(out[-1], Text):
            out[-1] = Text(out[-1].text + item.text)
        else:
            out.append(item)
    return out


@settings(max_examples=300)
@given(_items)
def test_format_then_parse_round_trips(items):
    raw = format_items(items)
    parsed = parse(raw)
    assert list(parsed.items) == _merged(items)
    assert parsed.problems == ()
    assert format_items(parsed.items) == raw


_tag_soup = st.lists(
    st.one_of(
        st.sampled_from(
            [
                "<obj>",
                "</obj>",
                "<char>",
                "</char>",
                "<bbox>",
                "</bbox>",
                "<delim>",
                "<|im_end|>",
                "<pad>",
                ", ",
                "0.5",
                "1e999",
                "-3",
                "nan",
                "\n",
                " ",
                ".",
                "<",
                ">",
            ]
        ),
        st.text(max_size=5),
    ),
    max_size=40,
).map("".join)


@settings(max_examples=500)
@given(st.one_of(st.text(), _tag_soup))
def test_parse_never_raises_and_always_reformats(raw):
    parsed = parse(raw)
    format_items(parsed.items)
    for item in parsed.grounded:
        assert item.boxes
        for box in item.boxes:
            assert 0 <= box.x1 <= box.x2 <= 1 and 0 <= box.y1 <= box.y2 <= 1
