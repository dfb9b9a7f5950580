"""The report on hand-computable cases."""

from __future__ import annotations

import unicodedata

import pytest

from varco_labeler.feedback.metrics import cer, differs_materially, match_regions, ned
from varco_labeler.feedback.pairing import Example
from varco_labeler.feedback.report import build_report, render_table, review_effort
from varco_labeler.feedback.report_html import render_html
from varco_labeler.regions import Region
from varco_labeler.varco import Box, Task


def region(box: tuple[float, ...], label: str = "Cat", **kw) -> Region:
    return Region(Box(*box), label=label, **kw)


def example(task_id: int, human, model, version: str = "v1", kind: Task = Task.GROUNDING):
    return Example(
        task_id=task_id,
        project=1,
        image=f"img{task_id}.png",
        kind=kind,
        prompt="",
        answer="",
        regions=tuple(human),
        model_regions=tuple(model) if model is not None else None,
        model_version=version if model is not None else None,
    )


def grounding_examples() -> list[Example]:
    # Task 1: a Cat kept as it was; a Dog squashed to half its height (IoU 0.5: still a match,
    # but adjusted); a false Cat deleted. Task 2: the model missed a Cat the human added.
    task1 = example(
        1,
        [region((0, 0, 0.5, 0.5), id="a"), region((0.5, 0.5, 1, 1), "Dog", id="b")],
        [
            region((0, 0, 0.5, 0.5), id="a", score=0.9),
            region((0.5, 0.5, 1, 0.75), "Dog", id="b", score=0.8),
            region((0.6, 0, 0.9, 0.3), id="c", score=0.3),
        ],
    )
    task2 = example(2, [region((0, 0, 0.2, 0.2), id="x")], [])
    return [task1, task2, example(3, [region((0, 0, 1, 1))], None)]


def test_box_metrics_per_label_and_micro() -> None:
    report = build_report(grounding_examples())
    assert report["examples"] == 3 and report["without_prediction"] == 1
    v1 = report["versions"]["v1"]
    assert v1["tasks"] == 2
    cat, dog = v1["labels"]["Cat"], v1["labels"]["Dog"]
    assert (cat["tp"], cat["fp"], cat["fn"]) == (1, 1, 1)
    assert cat["precision"] == cat["recall"] == cat["f1"] == 0.5 and cat["mean_iou"] == 1.0
    assert (dog["tp"], dog["fp"], dog["fn"]) == (1, 0, 0)
    assert dog["f1"] == 1.0 and dog["mean_iou"] == pytest.approx(0.5)
    micro = v1["micro"]
    assert micro["precision"] == pytest.approx(2 / 3) and micro["recall"] == pytest.approx(2 / 3)
    assert micro["f1"] == pytest.approx(2 / 3) and micro["mean_iou"] == pytest.approx(0.75)


def test_review_effort_and_acceptance() -> None:
    effort = build_report(grounding_examples())["versions"]["v1"]["effort"]
    assert effort == {
        "accepted": 1,
        "adjusted": 1,
        "deleted": 1,
        "added": 1,
        "predicted": 3,
        "acceptance_rate": pytest.approx(1 / 3),
    }


def test_effort_follows_overlap_when_ids_differ() -> None:
    # Relabelled (same box, new id) is an adjustment, not a deletion plus an addition.
    effort = review_effort([region((0, 0, 1, 1), "Dog", id="p")], [region((0, 0, 1, 1), id="h")])
    assert effort == {"adjusted": 1, "deleted": 0, "added": 0}


def test_calibration_and_worst_tasks() -> None:
    report = build_report(grounding_examples())
    bins = report["versions"]["v1"]["calibration"]
    assert [(b["low"], b["count"], b["accuracy"]) for b in bins] == [
        (0.3, 1, 0.0),  # the deleted false positive, scored 0.3
        (0.8, 1, 1.0),
        (0.9, 1, 1.0),
    ]
    worst = report["worst_tasks"]
    assert [t["task_id"] for t in worst] == [2, 1]
    assert worst[0]["f1"] == 0.0 and worst[1]["f1"] == pytest.approx(0.8)  # P 2/3, R 1


def test_ocr_cer_and_ned_on_nfc_text() -> None:
    decomposed = unicodedata.normalize("NFD", "안녕하세오")  # composes to 5 syllables
    human = [
        region((0, 0, 0.5, 0.2), "Text", text="안녕하세요"),
        region((0, 0.5, 0.5, 0.7), "Text", text="STOP"),
    ]
    model = [
        region((0, 0, 0.5, 0.2), "Text", text=decomposed),
        region((0, 0.5, 0.5, 0.7), "Text", text="STOPS"),
    ]
    ocr = build_report([example(1, human, model, kind=Task.OCR)])["versions"]["v1"]["ocr"]
    assert ocr["pages"] == 1
    # The page "안녕하세요\nSTOP" (10 characters) against "안녕하세오\nSTOPS": 2 edits.
    assert ocr["cer"] == pytest.approx(2 / 10)
    assert ocr["ned"] == pytest.approx(2 / 11)
    assert cer("", "") == 0.0 and cer("x", "") == 1.0 and ned("abc", "abd") == pytest.approx(1 / 3)


def test_versions_are_reported_apart() -> None:
    same = [region((0, 0, 0.5, 0.5))]
    report = build_report([example(1, same, same, "v1"), example(2, same, [], "v2")])
    assert report["versions"]["v1"]["micro"]["f1"] == 1.0
    assert report["versions"]["v2"]["micro"]["recall"] == 0.0


def test_hungarian_beats_greedy() -> None:
    # Greedy on the best IoU first would pair p0-r1 (0.52/0.68 = 0.765), leaving p1-r0 at
    # 0.3/0.9 < 0.5; the optimal assignment matches p0-r0 (0.667) and p1-r1 (0.714).
    p = [region((0.12, 0, 0.72, 1)), region((0.3, 0, 0.9, 1))]
    r = [region((0.0, 0, 0.6, 1)), region((0.2, 0, 0.8, 1))]
    matching = match_regions(p, r)
    assert [(m.predicted, m.reference) for m in matching.matches] == [(0, 0), (1, 1)]
    assert [m.iou for m in matching.matches] == pytest.approx([0.48 / 0.72, 0.5 / 0.7])
    assert not differs_materially(p, p) and differs_materially(p, r)


def test_renderings() -> None:
    report = build_report(grounding_examples())
    table = render_table(report)
    assert "model version v1: 2 task(s)" in table
    assert "ALL (micro)" in table and "66.7" in table
    assert "acceptance 33.3%" in table
    page = render_html(report)
    # The versions compared, F1 per label and the calibration: drawn with axes and ticks.
    assert page.startswith("<!doctype html>") and page.count("<svg") == 3
    assert page.count('id="xtick_') >= 10 and page.count('id="ytick_') >= 10
    # Self-contained: nothing loaded from elsewhere (links to the SVG and XLink specs only).
    assert "src='http" not in page and 'src="http' not in page and "<link" not in page


def test_html_shows_each_task_to_review_on_its_image_with_a_link(png_images) -> None:
    import base64
    import io
    import re

    from PIL import Image

    from varco_labeler.feedback.report_html import CORRECTION, PRE_LABEL

    report = build_report(grounding_examples())
    page = render_html(report, images=png_images, label_studio_url="http://ls.example:8080/")
    pictures = re.findall(r"<img src='data:image/png;base64,([^']+)'", page)
    assert len(pictures) == len(report["worst_tasks"]) == 2
    assert "href='http://ls.example:8080/projects/1/data?task=1'" in page
    assert "href='http://ls.example:8080/projects/1/data?task=2'" in page
    # Task 1's thumbnail (the second card): the correction and the pre-label, in two colours.
    with Image.open(io.BytesIO(base64.b64decode(pictures[1]))) as thumbnail:
        colours = {colour for _, colour in thumbnail.convert("RGB").getcolors(1 << 16)}
    assert {_rgb(CORRECTION), _rgb(PRE_LABEL)} <= colours
    # Without images or an address, the cards still name the image.
    assert "img0" not in render_html(report) and "img1.png" in render_html(report)


def _rgb(colour: str) -> tuple[int, int, int]:
    return tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))
