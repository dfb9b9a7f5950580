import pytest

from varco_labeler.labelstudio import LabelMapper, normalise
from varco_labeler.regions import Region
from varco_labeler.varco import Box


@pytest.mark.parametrize(
    ("phrase", "words"),
    [
        ("two cats", ("cat",)),
        ("The Remote-Controls", ("remote", "control")),
        ("3 boxes", ("box",)),
        ("a pair of glasses", ("glass",)),
        ("puppies", ("puppy",)),
        ("bus", ("bus",)),
        ("고양이 두 마리", ("고양이", "두", "마리")),
    ],
)
def test_normalise(phrase, words):
    assert normalise(phrase) == words


@pytest.mark.parametrize(
    ("phrase", "label"),
    [
        ("two cats", "Cat"),
        ("a cat", "Cat"),
        ("two remote controls", "Remote"),
        ("the kitty", "Cat"),  # alias, normalised
        ("Feline", "Cat"),  # alias, exact
        ("a pink blanket", None),
        ("a red traffic light", "Traffic light"),  # longest label wins over "Light"
        ("a desk light", "Light"),
    ],
)
def test_label_for(phrase, label):
    mapper = LabelMapper(
        ["Cat", "Remote", "Traffic light", "Light"], aliases={"kitty": "Cat", "feline": "Cat"}
    )
    assert mapper.label_for(phrase) == label


def test_fallback_label_takes_unmatched_phrases():
    assert LabelMapper(["Cat", "Object"], fallback="Object").label_for("blanket") == "Object"


def test_fallback_must_be_a_label_of_the_config():
    with pytest.raises(ValueError, match="not in the label config"):
        LabelMapper(["Cat"], fallback="Dog")


def test_assign_drops_unmatched_and_says_why():
    regions = [Region(Box(0, 0, 1, 1), phrase=p) for p in ("two cats", "a pink blanket")]
    kept, dropped = LabelMapper(["Cat"]).assign(regions, "grounding")
    assert [r.label for r in kept] == ["Cat"]
    assert dropped == ["phrase 'a pink blanket' matches no label of ('Cat',)"]


def test_ocr_regions_take_the_text_label():
    regions = [Region(Box(0, 0, 1, 1), text="124")]
    kept, _ = LabelMapper(["Handwriting", "Text"]).assign(regions, "ocr")
    assert kept[0].label == "Text"
    kept, _ = LabelMapper(["Line"]).assign(regions, "ocr")
    assert kept[0].label == "Line"


def test_config_without_labels_keeps_regions_unlabelled():
    regions = [Region(Box(0, 0, 1, 1), phrase="anything")]
    assert LabelMapper([]).assign(regions, "grounding") == (regions, [])
