import subprocess
import sys

import pytest
from helpers import CATS_CONFIG, labelstudio_fixture

from varco_labeler.labelstudio import LabelConfigError, read_label_config
from varco_labeler.varco import Task


def test_captured_ocr_config(ocr_config_xml):
    config = read_label_config(ocr_config_xml)
    assert config.image == "image"
    assert config.data_key == "image"
    assert (config.box_control, config.box_type) == ("bbox", "rectanglelabels")
    assert config.labels == ("Text", "Handwriting")
    assert config.text_control == "transcription"
    assert config.default_task is Task.OCR


def test_predict_request_carries_the_same_config(ocr_config_xml):
    assert read_label_config(labelstudio_fixture("predict_batch")["label_config"]) == (
        read_label_config(ocr_config_xml)
    )


def test_grounding_config_with_aliases_and_prompt_box():
    config = read_label_config(
        """<View>
          <Image name="img" value="$photo"/>
          <TextArea name="prompt" toName="img"/>
          <RectangleLabels name="boxes" toName="img">
            <Label value="Cat" predicted_values="kitty, feline"/><Label value="Remote"/>
          </RectangleLabels>
        </View>"""
    )
    assert (config.image, config.data_key, config.box_control) == ("img", "photo", "boxes")
    assert config.aliases == {"kitty": "Cat", "feline": "Cat"}
    assert config.prompt_control == "prompt"
    assert config.text_control is None
    assert config.default_task is Task.GROUNDING
    assert config.labels_type == "rectanglelabels"


def test_rectangle_with_separate_labels():
    config = read_label_config(
        """<View><Image name="image" value="$image"/>
          <Labels name="kind" toName="image"><Label value="Dog"/></Labels>
          <Rectangle name="box" toName="image"/></View>"""
    )
    assert (config.box_control, config.box_type) == ("box", "rectangle")
    assert (config.labels_control, config.labels, config.labels_type) == (
        "kind",
        ("Dog",),
        "labels",
    )


@pytest.mark.parametrize(
    ("xml", "message"),
    [
        ("", "empty"),
        ("<View><Image name='i' value='$i'>", "not valid XML"),
        ("<View><Text name='t' value='$t'/></View>", "no <Image> tag"),
        (
            "<View><Image name='i' value='$i'/><Choices name='c' toName='i'>"
            "<Choice value='a'/></Choices></View>",
            "no <RectangleLabels> (or <Rectangle> with <Labels>) pointing at an <Image>; "
            "found <Choices name='c'>",
        ),
        (
            "<View><Image name='i' value='https://host/$i'/>"
            "<RectangleLabels name='r' toName='i'><Label value='a'/></RectangleLabels></View>",
            "must name one task field",
        ),
    ],
)
def test_configs_without_what_we_need_get_one_clear_error(xml, message):
    with pytest.raises(LabelConfigError) as error:
        read_label_config(xml)
    assert message in str(error.value)


def test_cats_config_is_grounding():
    assert read_label_config(CATS_CONFIG).default_task is Task.GROUNDING


@pytest.mark.parametrize(
    ("kind", "task", "text_control"),
    [
        ("grounding", Task.GROUNDING, None),
        ("ocr", Task.OCR, "transcription"),
        ("referring", Task.GROUNDING, "answer"),
    ],
)
def test_printed_label_configs_are_what_the_backend_reads(kind, task, text_control):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "varco_labeler.cli",
            "label-config",
            kind,
            "--labels",
            'Cat,Dog "big"',
            "--prompt-box",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    config = read_label_config(done.stdout)
    assert config.labels == ("Cat", 'Dog "big"')
    assert (config.default_task, config.text_control) == (task, text_control)
    assert config.prompt_control == "prompt"
    assert config.referring is (kind == "referring")


BILLION_LAUGHS = (
    """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY a "lollollollollollollollollollol">
"""
    + "".join(f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">\n' for i in range(8))
    + """]>
<View><Image name="image" value="$image"/>
<RectangleLabels name="l" toName="image"><Label value="&i;"/></RectangleLabels></View>"""
)

EXTERNAL_ENTITY = """<?xml version="1.0"?><!DOCTYPE v [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<View><Image name="image" value="$image"/>
<RectangleLabels name="l" toName="image"><Label value="&x;"/></RectangleLabels></View>"""


@pytest.mark.parametrize("xml", [BILLION_LAUGHS, EXTERNAL_ENTITY], ids=["billion-laughs", "xxe"])
def test_malicious_label_configs_are_refused(xml):
    # lxml stops the entity expansion and never reads the external file.
    with pytest.raises(LabelConfigError, match="not valid XML"):
        read_label_config(xml)
