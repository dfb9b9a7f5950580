"""The project policy: decided once from config, extra_params and environment; travels as JSON."""

from __future__ import annotations

import json

import pytest
from helpers import CAT_DOG_CONFIG

from varco_labeler.engine.profiles import PROFILES, merge_characters
from varco_labeler.labelstudio import LabelConfigError, read_label_config
from varco_labeler.labelstudio.templates import label_config
from varco_labeler.policy import Policy, PolicyError, agreed_version, parse_extra_params
from varco_labeler.regions import model_output
from varco_labeler.settings import Settings
from varco_labeler.varco import Task, parse

SETTINGS = Settings(model="/models/my-varco")
OCR_CONFIG = read_label_config(label_config("ocr", ["Text", "Handwriting"]))
DYNAMIC_CONFIG = """<View>
  <Image name="img" value="$photo"/>
  <RectangleLabels name="box" toName="img" value="$options"/>
</View>"""
# What VARCO-VISION-2.0-1.7B-OCR answers: one <char> item per character.
CHARACTERS = (
    "<char>H</char><bbox>0.10, 0.20, 0.15, 0.30</bbox>"
    "<char>I</char><bbox>0.16, 0.20, 0.21, 0.30</bbox>"
    "<char>G</char><bbox>0.40, 0.20, 0.45, 0.30</bbox>"
    "<char>O</char><bbox>0.46, 0.20, 0.51, 0.30</bbox>"
)


def output(raw: str, version: str = "v1") -> dict:
    """A job's output for ``raw`` as an engine with the generic profile makes it."""
    return {"width": 200, "height": 100, "model_version": version, "raw": raw}


def test_the_task_comes_from_flag_then_extra_params_then_environment_then_config():
    assert Policy.resolve(SETTINGS, OCR_CONFIG).task is Task.OCR
    assert Policy.resolve(SETTINGS, OCR_CONFIG, {"task": "grounding"}).task is Task.GROUNDING
    env = Settings(model="m", default_task="grounding")
    assert Policy.resolve(env, OCR_CONFIG).task is Task.GROUNDING
    assert Policy.resolve(env, OCR_CONFIG, '{"task": "ocr"}').task is Task.OCR
    flagged = Policy.resolve(env, OCR_CONFIG, {"task": "ocr"}, task="question", prompt="Why?")
    assert (flagged.task, flagged.prompt) == (Task.QUESTION, "Why?")
    assert Policy.resolve(SETTINGS).prompt == "<gro>\nDescribe the image in detail."


def test_one_model_version_for_every_path():
    assert Policy.resolve(SETTINGS, OCR_CONFIG).model_version == "my-varco" == SETTINGS.version
    hub = Settings(model="NCSOFT/VARCO-VISION-2.0-1.7B-OCR")
    assert Policy.resolve(hub).model_version == "VARCO-VISION-2.0-1.7B-OCR"
    pinned = Settings(model="NCSOFT/VARCO-VISION-14B-HF", model_version="prod-3")
    assert Policy.resolve(pinned).model_version == "prod-3"
    assert Policy.resolve(pinned, version="workers-v").model_version == "workers-v"


def test_a_policy_travels_as_json_and_comes_back_equal():
    policy = Policy.resolve(
        SETTINGS,
        read_label_config(
            CAT_DOG_CONFIG.replace('value="Cat"', 'value="Cat" predicted_values="kitty"')
        ),
        {"fallback_label": "Dog", "min_score": 0.25, "question": "What is {region}?"},
    )
    assert Policy.from_json(json.loads(json.dumps(policy.to_json()))) == policy
    assert policy.config.aliases == {"kitty": "Cat"}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1]", "must be a JSON object"),
        ({"tsk": "ocr"}, "unknown keys ['tsk']"),
        ({"task": "referring"}, '"task" must be "grounding" or "ocr"'),
        ({"min_score": "high"}, '"min_score" must be a number'),
        ({"min_score": 1.5}, "between 0 and 1"),
        ({"fallback_label": 3}, '"fallback_label" must be a string'),
    ],
)
def test_bad_extra_params_are_refused_with_the_reason(extra, message):
    with pytest.raises(PolicyError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_extra_params(extra)


def test_a_fallback_label_the_config_lacks_is_refused_when_the_policy_is_made():
    with pytest.raises(PolicyError, match="fallback label 'Bird' is not in the label config"):
        Policy.resolve(SETTINGS, read_label_config(CAT_DOG_CONFIG), {"fallback_label": "Bird"})


def test_regions_are_converted_as_they_came_never_parsed_again():
    """The OCR specialist's words reach Label Studio with one score per word, though the raw
    text (kept for the record) holds characters: the crash of issue #10."""
    parsed, scores = merge_characters(parse(CHARACTERS), [0.9, 0.8, 0.5, 0.4], "word")
    job_output = output(CHARACTERS) | model_output(parsed, scores)
    policy = Policy.resolve(SETTINGS, OCR_CONFIG)
    conversion = policy.convert(job_output, seed="img")
    texts = [r["value"]["text"][0] for r in conversion.prediction["result"] if "text" in r["value"]]
    assert texts == ["HI", "GO"]
    assert [round(r.score, 3) for r in conversion.regions] == [0.849, 0.447]
    assert [r.label for r in conversion.regions] == ["Text", "Text"]
    assert PROFILES["NCSOFT/VARCO-VISION-2.0-1.7B-OCR"].ocr_merge == "word"


def test_min_score_fallback_and_ocr_label_apply_to_the_regions():
    raw = (
        "<obj>a bird</obj><bbox>0.1, 0.1, 0.3, 0.3</bbox> and "
        "<obj>a cat</obj><bbox>0.5, 0.5, 0.9, 0.9</bbox>"
    )
    job_output = output(raw) | model_output(parse(raw), [0.9, 0.2])
    config = read_label_config(CAT_DOG_CONFIG)
    plain = Policy.resolve(SETTINGS, config).convert(job_output)
    assert [r.label for r in plain.regions] == ["Cat"]
    assert any("matches no label" in reason for reason in plain.dropped)
    strict = Policy.resolve(SETTINGS, config, {"fallback_label": "Dog", "min_score": 0.5})
    conversion = strict.convert(job_output)
    assert [r.label for r in conversion.regions] == ["Dog"]
    assert any("below 0.5" in reason for reason in conversion.dropped)
    ocr = Policy.resolve(SETTINGS, OCR_CONFIG, {"ocr_label": "Handwriting"})
    text = "<char>hi</char><bbox>0.1, 0.1, 0.3, 0.3</bbox>"
    assert [r.label for r in ocr.convert(output(text) | model_output(parse(text))).regions] == [
        "Handwriting"
    ]


def test_labels_from_task_data_are_honoured_per_task():
    config = read_label_config(DYNAMIC_CONFIG)
    assert (config.labels, config.labels_data_key, config.data_key) == ((), "options", "photo")
    policy = Policy.resolve(SETTINGS, config)
    data = {"photo": "a.png", "options": [{"value": "Cat", "background": "red"}, "Bird"]}
    item = policy.item("1", data, task_id=1)
    assert item["labels"] == ["Cat", "Bird"] and item["image"] == "a.png"
    raw = "<obj>a cat</obj><bbox>0.1, 0.1, 0.3, 0.3</bbox><obj>dog</obj><bbox>0.5, 0.5, 1, 1</bbox>"
    conversion = policy.convert(output(raw) | model_output(parse(raw)), labels=item["labels"])
    assert [r["value"]["rectanglelabels"] for r in conversion.prediction["result"]] == [["Cat"]]
    with pytest.raises(PolicyError, match="data\\['options'\\], which holds no labels"):
        policy.item("2", {"photo": "b.png", "options": []})
    with pytest.raises(PolicyError, match="no image in data\\['photo'\\]"):
        policy.item("3", {"options": ["Cat"]})


def test_a_label_control_with_no_labels_and_no_data_field_is_refused():
    with pytest.raises(LabelConfigError, match='no <Label> children and no value="\\$field"'):
        read_label_config(DYNAMIC_CONFIG.replace(' value="$options"', ""))


def test_the_workers_version_wins_unless_this_command_was_told_another():
    assert agreed_version("cli", False, {}) == "cli"
    assert agreed_version("cli", False, {"gpu-a": "w", "gpu-b": "w"}) == "w"
    assert agreed_version("w", True, {"gpu-a": "w"}) == "w"
    with pytest.raises(PolicyError, match="pre-label as 'cli' but the workers run 'w'"):
        agreed_version("cli", True, {"gpu-a": "w"})
    with pytest.raises(PolicyError, match="gpu-a: v1, gpu-b: v2"):
        agreed_version("v1", False, {"gpu-a": "v1", "gpu-b": "v2"})


def test_a_task_whose_labels_cannot_hold_the_fallback_fails_alone():
    """A prelabel job converts each task under the policy; one task's bad labels fail that task."""
    from varco_labeler.jobs import convert_batch

    policy = Policy.resolve(
        SETTINGS, read_label_config(DYNAMIC_CONFIG), {"fallback_label": "Other"}
    )
    raw = "<obj>a cat</obj><bbox>0.1, 0.1, 0.3, 0.3</bbox>"
    items = [
        policy.item("1", {"photo": "a.png", "options": ["Cat", "Other"]}, task_id=1),
        policy.item("2", {"photo": "b.png", "options": ["Cat"]}, task_id=2),
    ]
    outputs = [output(raw) | model_output(parse(raw)) | {"key": i["key"]} for i in items]
    converted, failed = convert_batch(policy, items, outputs)
    assert [done.record.task_id for done in converted] == [1]
    assert "task" not in converted[0].prediction  # the push adds it, Label Studio's reply must not
    assert list(failed) == ["2"] and "fallback label 'Other'" in failed["2"]


def test_a_project_may_word_its_grounding_request_in_korean():
    config = read_label_config(CAT_DOG_CONFIG)
    korean = Policy.resolve(SETTINGS, config, {"prompt": "이미지를 자세히 설명해 주세요."})
    assert korean.prompt == "<gro>\n이미지를 자세히 설명해 주세요."
    item = korean.item("1", {"image": "/data/upload/1/a.png"}, task_id=1)
    assert item["prompt"] == korean.prompt  # it travels with each job (and keys the cache)
    assert Policy.from_json(korean.to_json()) == korean
    assert Policy.resolve(SETTINGS, config).prompt == "<gro>\nDescribe the image in detail."
    with pytest.raises(PolicyError, match='"prompt" words the grounding request'):
        Policy.resolve(SETTINGS, OCR_CONFIG, {"prompt": "글자를 읽어 주세요."})
    with pytest.raises(PolicyError, match='"prompt" must be a string'):
        parse_extra_params({"prompt": 3})


def test_a_cloud_image_is_asked_for_through_label_studio_for_its_task():
    policy = Policy.resolve(SETTINGS, read_label_config(CAT_DOG_CONFIG))
    item = policy.item("7", {"image": "s3://bucket/cats/a.png"}, task_id=7)
    assert item["image"] == "/tasks/7/resolve/?fileuri=czM6Ly9idWNrZXQvY2F0cy9hLnBuZw=="
    local = policy.item("8", {"image": "/data/upload/1/a.png"}, task_id=8)
    assert local["image"] == "/data/upload/1/a.png"
