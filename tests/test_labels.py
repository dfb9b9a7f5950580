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


@pytest.mark.parametrize(
    ("phrase", "words"),
    [
        # COCO classes and other plurals a suffix rule gets wrong.
        ("two buses", ("bus",)),
        ("a bus", ("bus",)),  # not "bu"
        ("knives", ("knife",)),
        ("three people", ("person",)),
        ("lenses", ("lens",)),
        ("a lens", ("lens",)),  # not "len"
        ("mice", ("mouse",)),
        ("children", ("child",)),
        ("sheep", ("sheep",)),
    ],
)
def test_english_plurals_from_a_dictionary(phrase, words):
    assert normalise(phrase) == words


@pytest.mark.parametrize(
    ("phrase", "label"),
    [
        ("고양이가", "고양이"),  # subject particle
        ("고양이들은", "고양이"),  # plural suffix and topic particle
        ("빨간 자동차를", "자동차"),  # object particle, head noun
        ("신호등이 켜져 있다", "신호등"),
        ("three people", "Person"),
        ("two buses", "Bus"),
        ("knives", "Knife"),
    ],
)
def test_korean_particles_and_english_plurals_map_to_labels(phrase, label):
    mapper = LabelMapper(["고양이", "자동차", "신호등", "Person", "Bus", "Knife"])
    assert mapper.label_for(phrase) == label
