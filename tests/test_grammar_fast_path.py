"""The fast path of ``parse`` (well-formed outputs) must agree exactly with the full parser."""

import unicodedata

from helpers import varco_fixture
from hypothesis import given, settings
from hypothesis import strategies as st

from varco_labeler.varco.grammar import _parse_well_formed, _Parser, clean_model_text, parse

COORDINATES = st.sampled_from(["0", "1", "0.5", "0.049", "0.997", "1.0", "0.25", "1.5", "2"])
FRAGMENTS = st.sampled_from(
    ["<obj>", "</obj>", "<char>", "</char>", "<bbox>", "</bbox>", "<delim>", ", ", ",", " ",
     "\n", "0.5", "1", "1.", "-0.1", "abc", "고양이", "<", ">", "<|im_end|>", "e5", "x"]
)  # fmt: skip


@st.composite
def well_formed_items(draw):
    tag = draw(st.sampled_from(["obj", "char"]))
    text = draw(st.text(st.characters(blacklist_characters="<"), max_size=8))
    boxes = [
        draw(st.sampled_from([", ", ",", " , "])).join(
            draw(st.lists(COORDINATES, min_size=4, max_size=4))
        )
        for _ in range(draw(st.integers(1, 3)))
    ]
    return f"<{tag}>{text}</{tag}><bbox>{'<delim>'.join(boxes)}</bbox>"


outputs = st.lists(st.one_of(well_formed_items(), FRAGMENTS, st.text(max_size=5)), max_size=12).map(
    "".join
)


def full_parse(raw):
    return _Parser(unicodedata.normalize("NFC", clean_model_text(raw))).run()


@settings(max_examples=600, deadline=None)
@given(outputs)
def test_parse_equals_the_full_parser(raw):
    assert parse(raw) == full_parse(raw)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(well_formed_items(), st.sampled_from(["", " and ", ".\n"])), max_size=6))
def test_well_formed_items_take_the_fast_path_unless_a_box_needs_repair(parts):
    text = unicodedata.normalize("NFC", "".join(parts))
    full = full_parse(text)
    fast = _parse_well_formed(text)
    # Out of range or unordered boxes are the only repairs well-formed items can need.
    assert (fast is None) == bool(full.problems)
    assert fast is None or fast == full


def test_fixtures_take_the_fast_path():
    for name in ["grounding_two_cats", "ocr_street_sign", "referring_prompt"]:
        raw = varco_fixture(name)
        assert _parse_well_formed(raw) == full_parse(raw)
        assert _parse_well_formed(raw) is not None
