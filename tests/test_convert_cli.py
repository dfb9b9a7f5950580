import json
import subprocess
import sys

import pytest
from helpers import CATS_CONFIG, varco_fixture
from label_studio_sdk.label_interface import LabelInterface
from PIL import Image


def _run(*args, stdin=""):
    return subprocess.run(
        [sys.executable, "-m", "varco_labeler.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def cats_config(tmp_path):
    path = tmp_path / "config.xml"
    path.write_text(CATS_CONFIG)
    return path


def _line(**record):
    return json.dumps(record, ensure_ascii=False) + "\n"


def test_convert_writes_an_import_file_and_reports_bad_lines(tmp_path, cats_config):
    upright = tmp_path / "upright.png"
    Image.new("RGB", (64, 48)).save(upright)
    # Stored 64x48, EXIF orientation 6 (turned a quarter): Label Studio shows it 48x64.
    turned = tmp_path / "turned.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (64, 48)).save(turned, exif=exif)
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("hello")
    cats = varco_fixture("grounding_two_cats")
    lines = (
        _line(image=str(upright), output=cats, task="grounding")
        + "{not json\n"
        + "\n"
        + _line(image=str(turned), output=cats)
        + _line(image="https://example.org/cat.jpg", output=cats)
        + _line(image=str(not_an_image), output=cats)
        + _line(image="https://example.org/cat.jpg", output=cats, task="detect", width=9, height=9)
        + _line(image="https://example.org/cat.jpg", output=cats, width=640, height=480)
    )
    done = _run("convert", "--label-config", str(cats_config), "--model-version", "m1", stdin=lines)
    assert done.returncode == 1, done.stderr
    tasks = json.loads(done.stdout)
    assert [t["data"]["image"] for t in tasks] == [
        str(upright),
        str(turned),
        "https://example.org/cat.jpg",
    ]
    interface = LabelInterface(CATS_CONFIG)
    for task in tasks:
        (prediction,) = task["predictions"]
        assert prediction["model_version"] == "m1"
        assert len(prediction["result"]) == 4
        assert interface.validate_prediction(prediction)
    sizes = [
        (
            t["predictions"][0]["result"][0]["original_width"],
            t["predictions"][0]["result"][0]["original_height"],
        )
        for t in tasks
    ]
    assert sizes == [(64, 48), (48, 64), (640, 480)]
    errors = done.stderr
    assert "line 2: skipped: not valid JSON" in errors
    assert (
        "line 5 (https://example.org/cat.jpg): skipped: https://example.org/cat.jpg is not a "
        'local file: give "width" and "height"' in errors
    )
    assert f"line 6 ({not_an_image}): skipped: {not_an_image}: not an image" in errors
    assert """line 7 (https://example.org/cat.jpg): skipped: "task" must be""" in errors
    assert "wrote 3 task(s) with 12 region(s); skipped 4 bad line(s)" in errors


def test_convert_reads_a_file_and_lists_drops_with_verbose(tmp_path, cats_config):
    source = tmp_path / "outputs.jsonl"
    source.write_text(
        _line(image="a.jpg", output=varco_fixture("grounding_two_cats"), width=640, height=480)
    )
    done = _run("convert", "-v", "--label-config", str(cats_config), str(source))
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)) == 1
    assert "line 1 (a.jpg): dropped phrase 'a pink blanket' matches no label" in done.stderr


def test_convert_refuses_a_config_without_boxes(tmp_path):
    config = tmp_path / "choices.xml"
    config.write_text(
        "<View><Image name='i' value='$i'/><Choices name='c' toName='i'>"
        "<Choice value='a'/></Choices></View>"
    )
    done = _run("convert", "--label-config", str(config), stdin="")
    assert done.returncode == 2
    assert "no <RectangleLabels>" in done.stderr and done.stdout == ""


def test_help_explains_the_input_format():
    done = _run("convert", "--help")
    assert done.returncode == 0
    assert '"output": RAW_TEXT' in done.stdout and "--label-config" in done.stdout
