"""How good were the pre-labels? Metrics per model version, label and annotator.

- Boxes: per label, Hungarian matching on 1 - IoU, a true positive at IoU >= 0.5; precision,
  recall and F1 per label and micro over labels; mean IoU of the true positives; COCO mAP@[.5:.95]
  and mAP@.5 (pycocotools, see ``detection``); a confusion matrix of labels on boxes matched
  whatever their labels.
- OCR: per page, every region's text in reading order against the human page: CER (total edits /
  total reference characters) and mean NED; missed and made-up lines count (``metrics.page_ocr``).
- Review effort: a pre-label the annotator kept unchanged is *accepted*; kept but moved,
  relabelled or retyped is *adjusted*; removed is *deleted*; a region only the human drew is
  *added*. Regions are followed by their Label Studio id (an edited pre-label keeps its id), and
  matched by overlap where ids do not say. Acceptance rate = accepted / predicted.
- Time: Label Studio's ``lead_time`` (seconds from opening a task to submitting it) of the tasks
  annotated from a version's pre-label, against tasks annotated without any pre-label; time saved
  per task = the difference of the means. Only the pre-label the annotator saw counts (not a
  version scored on the task afterwards).
- Per annotator: the same box figures, effort and time, over the pre-labels each one corrected.
- Calibration: predicted region scores in ten bins against the share of them that were right.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from statistics import mean
from typing import Any

from varco_labeler.feedback.annotations import AnnotationInfo, info_of
from varco_labeler.feedback.detection import confusion, mean_average_precision
from varco_labeler.feedback.metrics import MATCH_IOU, match_regions, page_ocr, region_changed
from varco_labeler.feedback.pairing import LATEST, Example
from varco_labeler.regions import Region
from varco_labeler.varco import Task

NO_LABEL = "(none)"
UNKNOWN_ANNOTATOR = "(unknown)"
# Overlap enough to call a moved box the same region when ids do not say.
EFFORT_IOU = 0.1
BINS = 10
EFFORT_KINDS = ("accepted", "adjusted", "deleted", "added")


@dataclass
class _Counts:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    iou_sum: float = 0.0

    def add(self, other: _Counts) -> None:
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        self.iou_sum += other.iou_sum

    def as_dict(self) -> dict[str, Any]:
        precision = self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0
        recall = self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "mean_iou": self.iou_sum / self.tp if self.tp else None,
        }


@dataclass
class _Group:
    """Everything one model version (or one annotator) is scored on."""

    tasks: int = 0
    labels: dict[str, _Counts] = field(default_factory=lambda: defaultdict(_Counts))
    effort: Counter[str] = field(default_factory=Counter)
    edits: int = 0
    reference_chars: int = 0
    neds: list[float] = field(default_factory=list)
    scored: list[tuple[float, bool]] = field(default_factory=list)
    pages: list[tuple[tuple[Region, ...], tuple[Region, ...]]] = field(default_factory=list)
    lead_times: list[float] = field(default_factory=list)
    per_task: list[dict[str, Any]] = field(default_factory=list)

    def micro(self) -> dict[str, Any]:
        total = _Counts()
        for counts in self.labels.values():
            total.add(counts)
        return total.as_dict()

    def effort_dict(self) -> dict[str, Any]:
        predicted = sum(self.effort[k] for k in ("accepted", "adjusted", "deleted"))
        return {
            **{k: self.effort[k] for k in EFFORT_KINDS},
            "predicted": predicted,
            "acceptance_rate": self.effort["accepted"] / predicted if predicted else None,
        }

    def ocr_dict(self) -> dict[str, Any]:
        return {
            "pages": len(self.neds),
            "cer": self.edits / self.reference_chars if self.reference_chars else None,
            "ned": mean(self.neds) if self.neds else None,
        }


def build_report(
    examples: Sequence[Example],
    worst: int = 20,
    annotations: Mapping[int, AnnotationInfo] | None = None,
) -> dict[str, Any]:
    """The report as plain data (JSON-ready): ``versions`` by model version, ``annotators``,
    ``time`` (the lead time of tasks annotated without a pre-label), and the ``worst_tasks``
    (lowest F1 first) across versions, to review first, with their regions for drawing."""
    annotations = annotations or {}
    versions: dict[str, _Group] = defaultdict(_Group)
    annotators: dict[str, _Group] = defaultdict(_Group)
    unassisted: list[float] = []
    unpaired = 0
    for example in examples:
        info = info_of(example, annotations)
        lead_time = info.lead_time if info else None
        if example.model_regions is None:
            unpaired += 1
            if lead_time is not None:
                unassisted.append(lead_time)
            continue
        task = _score(example)
        seen = example.pairing_rule != LATEST  # the pre-label the annotator worked from
        version = example.model_version or "unknown"
        _add(versions[version], task, lead_time if seen else None)
        versions[version].per_task.append({"model_version": version, **task.row})
        if seen:
            who = (info.annotator if info else None) or UNKNOWN_ANNOTATOR
            _add(annotators[who], task, lead_time)
    baseline = mean(unassisted) if unassisted else None
    all_tasks = sorted(
        (row for group in versions.values() for row in group.per_task),
        key=lambda t: (t["f1"], t["task_id"] or 0),
    )
    return {
        "examples": len(examples),
        "without_prediction": unpaired,
        "match_iou": MATCH_IOU,
        "time": {"unassisted_tasks": len(unassisted), "unassisted_mean_seconds": baseline},
        "versions": {
            version: _version_dict(group, baseline) for version, group in sorted(versions.items())
        },
        "annotators": {
            name: _annotator_dict(group, baseline) for name, group in sorted(annotators.items())
        },
        "worst_tasks": all_tasks[:worst],
    }


@dataclass
class _TaskScore:
    labels: dict[str, _Counts]
    effort: Counter[str]
    page: tuple[tuple[Region, ...], tuple[Region, ...]]
    ocr: Any  # metrics.PageOcr or None
    scored: list[tuple[float, bool]]
    row: dict[str, Any]


def _score(example: Example) -> _TaskScore:
    predicted = tuple(example.model_regions or ())
    reference = tuple(example.regions)
    by_label: dict[str, tuple[list[Region], list[Region]]] = defaultdict(lambda: ([], []))
    for region in predicted:
        by_label[_label(region)][0].append(region)
    for region in reference:
        by_label[_label(region)][1].append(region)
    labels: dict[str, _Counts] = {}
    correct: set[int] = set()  # ids of predicted regions that were true positives
    for label, (pred, ref) in by_label.items():
        matching = match_regions(pred, ref)
        labels[label] = _Counts(
            tp=len(matching.matches),
            fp=len(matching.unmatched_predicted),
            fn=len(matching.unmatched_reference),
            iou_sum=sum(m.iou for m in matching.matches),
        )
        correct |= {id(pred[m.predicted]) for m in matching.matches}
    is_ocr = example.kind is Task.OCR or any(r.text for r in (*predicted, *reference))
    effort = review_effort(predicted, reference)
    total = _Counts()
    for counts in labels.values():
        total.add(counts)
    summary = total.as_dict()
    row = {
        "task_id": example.task_id,
        "project": example.project,
        "image": example.image,
        "f1": summary["f1"] if predicted or reference else 1.0,
        "tp": total.tp,
        "fp": total.fp,
        "fn": total.fn,
        "score": example.prediction_score,
        **{k: effort[k] for k in EFFORT_KINDS},
        # For the thumbnails of the tasks to review first.
        "predicted": [r.to_json() for r in predicted],
        "reference": [r.to_json() for r in reference],
    }
    return _TaskScore(
        labels=labels,
        effort=effort,
        page=(predicted, reference),
        ocr=page_ocr(predicted, reference) if is_ocr else None,
        scored=[(r.score, id(r) in correct) for r in predicted if r.score is not None],
        row=row,
    )


def _add(group: _Group, task: _TaskScore, lead_time: float | None) -> None:
    group.tasks += 1
    for label, counts in task.labels.items():
        group.labels[label].add(counts)
    group.effort.update(task.effort)
    group.pages.append(task.page)
    group.scored += task.scored
    if task.ocr is not None:
        group.edits += task.ocr.edits
        group.reference_chars += task.ocr.reference_chars
        group.neds.append(task.ocr.ned)
    if lead_time is not None:
        group.lead_times.append(lead_time)


def _time_dict(group: _Group, baseline: float | None) -> dict[str, Any]:
    assisted = mean(group.lead_times) if group.lead_times else None
    saved = baseline - assisted if baseline is not None and assisted is not None else None
    return {
        "tasks": len(group.lead_times),
        "mean_seconds": assisted,
        "saved_per_task_seconds": saved,
        "saved_total_seconds": saved * len(group.lead_times) if saved is not None else None,
    }


def _version_dict(group: _Group, baseline: float | None) -> dict[str, Any]:
    return {
        "tasks": group.tasks,
        "micro": group.micro(),
        "map": mean_average_precision(group.pages),
        "labels": {label: c.as_dict() for label, c in sorted(group.labels.items())},
        "confusion": confusion(group.pages),
        "ocr": group.ocr_dict(),
        "effort": group.effort_dict(),
        "time": _time_dict(group, baseline),
        "calibration": _calibration(group.scored),
    }


def _annotator_dict(group: _Group, baseline: float | None) -> dict[str, Any]:
    return {
        "tasks": group.tasks,
        "micro": group.micro(),
        "ocr": group.ocr_dict(),
        "effort": group.effort_dict(),
        "time": _time_dict(group, baseline),
    }


def review_effort(predicted: Sequence[Region], reference: Sequence[Region]) -> Counter[str]:
    """accepted / adjusted / deleted / added, following region ids, then overlap."""
    effort: Counter[str] = Counter()
    reference_ids = {r.id: r for r in reference if r.id}
    left_pred = [p for p in predicted if not (p.id and p.id in reference_ids)]
    followed = [(p, reference_ids[p.id]) for p in predicted if p.id and p.id in reference_ids]
    used = {id(r) for _, r in followed}
    left_ref = [r for r in reference if id(r) not in used]
    matching = match_regions(left_pred, left_ref, threshold=EFFORT_IOU)
    pairs = followed + [(left_pred[m.predicted], left_ref[m.reference]) for m in matching.matches]
    for p, r in pairs:
        effort["adjusted" if region_changed(p, r, p.box.iou(r.box)) else "accepted"] += 1
    effort["deleted"] += len(matching.unmatched_predicted)
    effort["added"] += len(matching.unmatched_reference)
    return effort


def _calibration(scored: list[tuple[float, bool]]) -> list[dict[str, Any]]:
    bins: list[list[tuple[float, bool]]] = [[] for _ in range(BINS)]
    for score, right in scored:
        bins[min(BINS - 1, max(0, int(score * BINS)))].append((score, right))
    return [
        {
            "low": i / BINS,
            "high": (i + 1) / BINS,
            "count": len(b),
            "mean_score": sum(s for s, _ in b) / len(b),
            "accuracy": sum(r for _, r in b) / len(b),
        }
        for i, b in enumerate(bins)
        if b
    ]


def _label(region: Region) -> str:
    return region.label or region.phrase or NO_LABEL


# -- rendering -------------------------------------------------------------------------------
def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def render_table(report: dict[str, Any]) -> str:
    """A plain-text summary for the terminal."""
    lines = [
        f"{report['examples']} example(s), {report['without_prediction']} without a prediction; "
        f"boxes match at IoU >= {report['match_iou']}"
    ]
    header = (
        f"{'label':<24} {'P%':>6} {'R%':>6} {'F1%':>6} {'mIoU':>6} {'TP':>5} {'FP':>5} {'FN':>5}"
    )
    for version, data in report["versions"].items():
        lines += ["", f"model version {version}: {data['tasks']} task(s)", header]
        rows = [*data["labels"].items(), ("ALL (micro)", data["micro"])]
        for label, m in rows:
            iou = "-" if m["mean_iou"] is None else f"{m['mean_iou']:.3f}"
            lines.append(
                f"{label[:24]:<24} {_pct(m['precision']):>6} {_pct(m['recall']):>6} "
                f"{_pct(m['f1']):>6} {iou:>6} {m['tp']:>5} {m['fp']:>5} {m['fn']:>5}"
            )
        lines.append(
            f"mAP@[.5:.95] {_number(data['map']['map'])}, mAP@.5 {_number(data['map']['map_50'])}"
        )
        lines += _effort_lines(data)
    baseline = report["time"]["unassisted_mean_seconds"]
    if baseline is not None:
        lines += [
            "",
            f"without a pre-label: {report['time']['unassisted_tasks']} task(s), "
            f"{baseline:.1f} s each on average",
        ]
    if report["annotators"]:
        lines += ["", "per annotator (the pre-labels each one corrected):"]
        for name, data in report["annotators"].items():
            lines.append(
                f"  {name}: {data['tasks']} task(s), F1 {_pct(data['micro']['f1'])}%, "
                f"acceptance {_pct(data['effort']['acceptance_rate'])}%, "
                f"{_seconds(data['time']['mean_seconds'])} per task"
            )
    if report.get("loop_rounds"):
        from varco_labeler.feedback.loop_records import round_line

        lines += ["", "active-learning rounds (varco-labeler loop), newest first:"]
        lines += [f"  {round_line(round_)}" for round_ in report["loop_rounds"][:10]]
    if report["worst_tasks"]:
        lines += ["", "review first (lowest F1):"]
        for task in report["worst_tasks"][:10]:
            lines.append(
                f"  task {task['task_id']} ({task['model_version']}): F1 {_pct(task['f1'])}%, "
                f"{task['adjusted']} adjusted, {task['deleted']} deleted, {task['added']} added"
                f"  {task['image']}"
            )
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def _effort_lines(data: dict[str, Any]) -> list[str]:
    ocr, effort, time = data["ocr"], data["effort"], data["time"]
    lines = []
    if ocr["pages"]:
        lines.append(
            f"OCR on {ocr['pages']} page(s), missed and made-up text included: "
            f"CER {_pct(ocr['cer'])}%, NED {_pct(ocr['ned'])}%"
        )
    lines.append(
        f"review: {effort['accepted']} accepted, {effort['adjusted']} adjusted, "
        f"{effort['deleted']} deleted, {effort['added']} added; "
        f"acceptance {_pct(effort['acceptance_rate'])}%"
    )
    if time["tasks"]:
        saved = time["saved_per_task_seconds"]
        lines.append(
            f"time: {_seconds(time['mean_seconds'])} per task over {time['tasks']} task(s)"
            + ("" if saved is None else f"; {saved:.1f} s saved per task against none")
        )
    return lines
