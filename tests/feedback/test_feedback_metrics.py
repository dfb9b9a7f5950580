"""The report's figures against hand-computed cases: page-level OCR with a missed and a made-up
line, COCO mAP (pycocotools) on small fixtures, label confusion, reading order, time saved and
per-annotator figures from Label Studio's lead_time and completed_by."""

from __future__ import annotations

import pytest

from varco_labeler.feedback.annotations import AnnotationFilter, index_annotations, parse_since
from varco_labeler.feedback.detection import confusion, mean_average_precision
from varco_labeler.feedback.metrics import page_ocr, page_text
from varco_labeler.feedback.pairing import Example
from varco_labeler.feedback.reading_order import reading_order
from varco_labeler.feedback.report import build_report
from varco_labeler.regions import Region
from varco_labeler.varco import Box, Task


def line(y: float, text: str, x: float = 0.1) -> Region:
    return Region(Box(x, y, x + 0.3, y + 0.1), label="Text", text=text)


def box(x1: float, y1: float, x2: float, y2: float, label: str = "Cat", **kw) -> Region:
    return Region(Box(x1, y1, x2, y2), label=label, **kw)


def test_a_missed_line_counts_in_full() -> None:
    # Box by box, the one line read would score CER 0; the page misses "EXIT\n".
    ocr = page_ocr([line(0.6, "STOP")], [line(0.2, "EXIT"), line(0.6, "STOP")])
    assert (ocr.edits, ocr.reference_chars) == (5, 9)
    assert ocr.ned == pytest.approx(5 / 9)


def test_a_made_up_line_counts_in_full() -> None:
    ocr = page_ocr([line(0.2, "STOP"), line(0.6, "OPEN")], [line(0.2, "STOP")])
    assert (ocr.edits, ocr.reference_chars) == (5, 4)  # "\nOPEN" inserted: CER 1.25
    assert ocr.ned == pytest.approx(5 / 9)


def test_the_report_scores_ocr_pages() -> None:
    human = (line(0.2, "EXIT"), line(0.6, "STOP"))
    model = (line(0.6, "STOP"),)
    report = build_report([_example(1, human, model, kind=Task.OCR)])
    ocr = report["versions"]["v1"]["ocr"]
    assert ocr == {"pages": 1, "cer": pytest.approx(5 / 9), "ned": pytest.approx(5 / 9)}


def test_reading_order_is_lines_top_down_then_left_to_right() -> None:
    words = [
        line(0.52, "world", x=0.5),
        line(0.1, "Title"),
        line(0.5, "hello", x=0.05),
        line(0.8, "end"),
    ]
    assert [r.text for r in reading_order(words)] == ["Title", "hello", "world", "end"]
    assert page_text(words) == "Title\nhello\nworld\nend"


def test_map_of_one_box_at_iou_06() -> None:
    # IoU 0.6 is a hit at thresholds 0.50, 0.55 and 0.60 and a miss at the seven above: 3/10.
    result = mean_average_precision([([box(0, 0, 0.5, 0.3, score=0.9)], [box(0, 0, 0.5, 0.5)])])
    assert result["map"] == pytest.approx(0.3)
    assert result["map_50"] == pytest.approx(1.0)
    assert result["labels"] == {"Cat": pytest.approx(0.3)}


def test_map_ranks_by_score() -> None:
    # Two cats; the surest box is wrong, the next one exact. Ranked: FP then TP, so precision is
    # 1/2 at recall 1/2 and nothing reaches recall 1. COCO's 101 recall points: 0..0.50 (51 of
    # them) at precision 0.5: AP = 51 * 0.5 / 101 at every IoU threshold.
    predicted = [box(0.6, 0.6, 0.9, 0.9, score=0.95), box(0, 0, 0.2, 0.2, score=0.9)]
    reference = [box(0, 0, 0.2, 0.2), box(0.3, 0, 0.5, 0.2)]
    result = mean_average_precision([(predicted, reference)])
    assert result["map"] == pytest.approx(51 * 0.5 / 101)
    # The same boxes with the right one surer: precision 1 up to recall 0.5.
    swapped = [predicted[0].with_(score=0.5), predicted[1]]
    assert mean_average_precision([(swapped, reference)])["map"] == pytest.approx(51 / 101)


def test_map_averages_labels_and_handles_empty_sides() -> None:
    pages = [
        ([box(0, 0, 0.5, 0.5)], [box(0, 0, 0.5, 0.5)]),  # a cat, exact: AP 1
        ([], [box(0, 0, 0.5, 0.5, "Dog")]),  # a dog missed: AP 0
    ]
    result = mean_average_precision(pages)
    assert result["labels"] == {"Cat": pytest.approx(1.0), "Dog": pytest.approx(0.0)}
    assert result["map"] == pytest.approx(0.5)
    assert mean_average_precision([([box(0, 0, 1, 1)], [])])["map"] is None  # nothing to find
    assert mean_average_precision([([], [box(0, 0, 1, 1)])])["map"] == 0.0


def test_confusion_of_labels_on_matched_boxes() -> None:
    pages = [
        ([box(0, 0, 0.5, 0.5, "Dog")], [box(0, 0, 0.5, 0.5, "Cat")]),  # a cat called a dog
        ([box(0, 0, 0.5, 0.5)], [box(0, 0, 0.5, 0.5)]),  # right
        ([box(0.6, 0.6, 0.9, 0.9)], [box(0, 0, 0.2, 0.2, "Dog")]),  # a made-up cat, a missed dog
    ]
    assert confusion(pages) == {
        "labels": ["Cat", "Dog", "(none)"],
        # rows: human Cat, Dog, (none); columns: model Cat, Dog, (none)
        "matrix": [[1, 1, 0], [0, 0, 1], [1, 0, 0]],
    }


def _example(task_id, human, model, version="v1", kind=Task.GROUNDING, rule="started_from"):
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
        annotation_id=100 + task_id,
        pairing_rule=rule if model is not None else "none",
    )


def _tasks() -> list[dict]:
    users = [1, {"id": 2, "email": "b@example.com"}, 1, 2]
    times = [10.0, 20.0, 30.0, 50.0]
    return [
        {
            "id": task_id,
            "annotations": [
                {
                    "id": 100 + task_id,
                    "completed_by": user,
                    "lead_time": seconds,
                    "ground_truth": task_id == 2,
                    "created_at": f"2026-11-0{task_id}T10:00:00Z",
                }
            ],
        }
        for task_id, user, seconds in zip((1, 2, 3, 4), users, times, strict=True)
    ]


def test_time_saved_and_per_annotator() -> None:
    cat = box(0, 0, 0.5, 0.5)
    examples = [
        _example(1, [cat], [cat]),  # annotator 1, 10 s, pre-label accepted
        _example(2, [cat], [box(0.6, 0.6, 0.9, 0.9)]),  # b@example.com, 20 s, box redrawn
        _example(3, [cat], None),  # annotator 1, no pre-label, 30 s
        _example(4, [cat], None),  # annotator 2, no pre-label, 50 s
        _example(1, [cat], [cat], version="v2", rule="latest"),  # scored later, never seen
    ]
    report = build_report(examples, annotations=index_annotations(_tasks()))
    assert report["time"] == {"unassisted_tasks": 2, "unassisted_mean_seconds": 40.0}
    time = report["versions"]["v1"]["time"]
    assert time == {
        "tasks": 2,
        "mean_seconds": 15.0,
        "saved_per_task_seconds": 25.0,
        "saved_total_seconds": 50.0,
    }
    assert report["versions"]["v2"]["time"]["tasks"] == 0  # nobody annotated from v2
    annotators = report["annotators"]
    assert set(annotators) == {"1", "b@example.com"}
    assert annotators["1"]["micro"]["f1"] == 1.0 and annotators["1"]["time"]["mean_seconds"] == 10
    assert annotators["b@example.com"]["micro"]["f1"] == 0.0
    assert annotators["b@example.com"]["effort"]["acceptance_rate"] == 0.0


def test_annotation_filters() -> None:
    index = index_annotations(_tasks())
    examples = [_example(t, [], []) for t in (1, 2, 3, 4)]

    def kept(**criteria) -> list[int]:
        return [e.task_id for e in AnnotationFilter(**criteria).apply(examples, index)]

    assert kept() == [1, 2, 3, 4]
    assert kept(annotators=frozenset({"1"})) == [1, 3]
    assert kept(annotators=frozenset({"b@example.com"})) == [2]  # by e-mail, or by id "2"
    assert kept(annotators=frozenset({"2"})) == [2, 4]
    assert kept(since=parse_since("2026-11-03")) == [3, 4]
    assert kept(reviewed_only=True) == [2]  # the ground truth one
    unknown = _example(9, [], [])  # an annotation the source says nothing about
    assert not AnnotationFilter(reviewed_only=True).apply([unknown], index)
