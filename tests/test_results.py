import unicodedata

import pytest
from helpers import CATS_CONFIG, labelstudio_fixture, varco_fixture
from label_studio_sdk.label_interface import LabelInterface

from varco_labeler.labelstudio import (
    LabelMapper,
    box_from_rectangle,
    prediction_from_varco,
    read_label_config,
    regions_to_results,
    results_to_regions,
)
from varco_labeler.regions import Region, regions_to_varco
from varco_labeler.varco import Box, parse


def _convert(xml, name, task, **kwargs):
    config = read_label_config(xml)
    mapper = LabelMapper(config.labels, config.aliases, **kwargs)
    return prediction_from_varco(varco_fixture(name), task, config, mapper, 640, 480, "v1")


def _geometry(item):
    v = item["value"]
    return tuple(round(v[k], 6) for k in ("x", "y", "width", "height"))


def test_two_cats_gives_two_cats_and_two_remotes_and_drops_the_blanket():
    conversion = _convert(CATS_CONFIG, "grounding_two_cats", "grounding")
    result = conversion.prediction["result"]
    assert LabelInterface(CATS_CONFIG).validate_prediction(conversion.prediction)
    by_label = {}
    for item in result:
        assert item["type"] == "rectanglelabels"
        assert (item["from_name"], item["to_name"]) == ("label", "image")
        assert (item["original_width"], item["original_height"]) == (640, 480)
        assert item["image_rotation"] == 0 and item["value"]["rotation"] == 0
        by_label.setdefault(item["value"]["rectanglelabels"][0], []).append(_geometry(item))
    assert by_label == {
        "Cat": [(52.1, 4.9, 47.6, 73.4), (1.6, 10.8, 49.6, 88.2)],
        "Remote": [(3.9, 13.8, 24.4, 11.9), (50.8, 16.6, 7.3, 12.9)],
    }
    assert conversion.dropped == ["phrase 'a pink blanket' matches no label of ('Cat', 'Remote')"]


def test_fallback_label_keeps_the_blanket():
    conversion = _convert(
        CATS_CONFIG.replace(
            '<Label value="Remote"/>', '<Label value="Remote"/><Label value="Other"/>'
        ),
        "grounding_two_cats",
        "grounding",
        fallback="Other",
    )
    labels = [item["value"]["rectanglelabels"][0] for item in conversion.prediction["result"]]
    assert labels.count("Other") == 1 and len(labels) == 5


def test_street_sign_ocr_gives_sixteen_box_and_text_pairs(ocr_config_xml):
    conversion = _convert(ocr_config_xml, "ocr_street_sign", "ocr")
    result = conversion.prediction["result"]
    assert LabelInterface(ocr_config_xml).validate_prediction(conversion.prediction)
    boxes = [item for item in result if item["type"] == "rectanglelabels"]
    texts = [item for item in result if item["type"] == "textarea"]
    assert len(boxes) == len(texts) == 16
    assert len({item["id"] for item in boxes}) == 16
    for box, text in zip(boxes, texts, strict=True):
        assert box["id"] == text["id"]
        assert box["value"]["rectanglelabels"] == ["Text"]
        assert text["from_name"] == "transcription"
        assert _geometry(box) == _geometry(text)
    words = [t["value"]["text"][0] for t in texts]
    assert words[:3] == ["백범로", "124번길", "Baekbeom-ro"]
    assert all(unicodedata.is_normalized("NFC", w) for w in words)
    assert _geometry(boxes[0]) == (17.2, 26.5, 15.6, 7.5)


def test_region_ids_are_stable_across_runs(ocr_config_xml):
    first = _convert(ocr_config_xml, "ocr_street_sign", "ocr").prediction
    second = _convert(ocr_config_xml, "ocr_street_sign", "ocr").prediction
    assert [i["id"] for i in first["result"]] == [i["id"] for i in second["result"]]


def test_ocr_round_trips_through_label_studio_back_to_the_model_text(ocr_config_xml):
    config = read_label_config(ocr_config_xml)
    result = _convert(ocr_config_xml, "ocr_street_sign", "ocr").prediction["result"]
    regions = results_to_regions(result, config)
    assert regions_to_varco(regions, "ocr") == varco_fixture("ocr_street_sign").strip()


def test_annotation_to_varco_text_and_back_keeps_boxes_and_texts(ocr_config_xml):
    config = read_label_config(ocr_config_xml)
    annotation = labelstudio_fixture("webhook_annotation_created")["annotation"]
    regions = results_to_regions(annotation["result"], config)
    assert [(r.label, r.text, r.id) for r in regions] == [("Text", "HELLO", "r1a")]
    text = regions_to_varco(regions, "ocr")
    assert text == "<char>HELLO</char><bbox>0.1, 0.2, 0.4, 0.25</bbox>"
    item = parse(text).grounded[0]
    assert item.text == "HELLO" and item.boxes[0] == regions[0].box.rounded()


def test_grounding_annotation_to_varco_text_groups_boxes_by_label():
    config = read_label_config(CATS_CONFIG)
    result = _convert(CATS_CONFIG, "grounding_two_cats", "grounding").prediction["result"]
    text = regions_to_varco(results_to_regions(result, config), "grounding")
    assert text == (
        "<obj>Cat</obj><bbox>0.521, 0.049, 0.997, 0.783<delim>0.016, 0.108, 0.512, 0.99</bbox>, "
        "<obj>Remote</obj><bbox>0.039, 0.138, 0.283, 0.257<delim>0.508, 0.166, 0.581, 0.295</bbox>"
    )
    original = {p.text: p.boxes for p in parse(varco_fixture("grounding_two_cats")).grounded}
    again = {p.text: p.boxes for p in parse(text).grounded}
    assert again == {"Cat": original["two cats"], "Remote": original["two remote controls"]}


def test_rectangle_plus_labels_config_gets_paired_items():
    xml = """<View><Image name="image" value="$image"/>
      <Rectangle name="box" toName="image"/>
      <Labels name="kind" toName="image"><Label value="Cat"/></Labels></View>"""
    config = read_label_config(xml)
    regions = [Region(Box(0.1, 0.1, 0.5, 0.5), label="Cat", score=0.8)]
    items = regions_to_results(regions, config, 100, 100)
    assert [(i["type"], i["from_name"]) for i in items] == [
        ("rectangle", "box"),
        ("labels", "kind"),
    ]
    assert items[0]["id"] == items[1]["id"] and items[1]["value"]["labels"] == ["Cat"]
    assert LabelInterface(xml).validate_prediction({"result": items})
    back = results_to_regions(items, config)
    assert [(r.label, r.score) for r in back] == [("Cat", 0.8)]


def test_degenerate_boxes_are_dropped_and_reported():
    conversion = _convert(CATS_CONFIG, "grounding_two_cats", "grounding")
    config = read_label_config(CATS_CONFIG)
    mapper = LabelMapper(config.labels)
    raw = "<obj>a cat</obj><bbox>0.5, 0.5, 0.5, 0.9</bbox>"
    degenerate = prediction_from_varco(raw, "grounding", config, mapper, 10, 10, "v1")
    assert degenerate.prediction["result"] == []
    assert degenerate.dropped == ["degenerate box 0.5, 0.5, 0.5, 0.9 ('a cat')"]
    assert conversion.prediction["model_version"] == "v1"


def test_scores_reach_items_and_prediction():
    config = read_label_config(CATS_CONFIG)
    mapper = LabelMapper(config.labels)
    raw = varco_fixture("grounding_two_cats")
    conversion = prediction_from_varco(
        raw, "grounding", config, mapper, 640, 480, "v1", scores=[0.9, 0.2, 0.6]
    )
    assert [i["score"] for i in conversion.prediction["result"]] == [0.9, 0.9, 0.6, 0.6]
    assert conversion.prediction["score"] == pytest.approx(0.75)


@pytest.mark.parametrize("rotation", [90, 270, 45])
def test_rotated_rectangle_becomes_the_box_around_it(rotation):
    # A 20x10 px rectangle at (50, 50) on a 100x100 image, turned about its top-left corner.
    value = {"x": 50, "y": 50, "width": 20, "height": 10, "rotation": rotation}
    box = box_from_rectangle(value, 100, 100)
    expected = {
        90: Box(0.4, 0.5, 0.5, 0.7),
        270: Box(0.5, 0.3, 0.6, 0.5),
    }.get(rotation)
    if expected:
        assert box.rounded() == expected
    else:
        assert box.x1 < 0.5 < box.x2 and box.y1 == pytest.approx(0.5)


def test_items_of_other_tags_are_ignored(ocr_config_xml):
    config = read_label_config(ocr_config_xml)
    results = [{"id": "c", "from_name": "x", "to_name": "other", "type": "choices", "value": {}}]
    assert results_to_regions(results, config) == []
