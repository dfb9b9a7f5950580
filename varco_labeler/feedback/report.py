"""How good were the pre-labels? Metrics per model version and label, from paired examples.

- Boxes: per label, Hungarian matching on 1 - IoU, a true positive at IoU >= 0.5; precision,
  recall and F1 per label and micro over labels; mean IoU of the true positives.
- OCR: on box-matched pairs, CER (total edits / total reference characters) and mean NED.
- Review effort: a pre-label the annotator kept unchanged is *accepted*; kept but moved,
  relabelled or retyped is *adjusted*; removed is *deleted*; a region only the human drew is
  *added*. Regions are followed by their Label Studio id (an edited pre-label keeps its id), and
  matched by overlap where ids do not say. Acceptance rate = accepted / predicted.
- Calibration: predicted region scores in ten bins against the share of them that were right.
"""

from __future__ import annotations

import html
import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from varco_labeler.feedback.metrics import (
    MATCH_IOU,
    edit_distance,
    match_regions,
    ned,
    nfc,
    region_changed,
)
from varco_labeler.feedback.pairing import Example
from varco_labeler.regions import Region

NO_LABEL = "(none)"
# Overlap enough to call a moved box the same region when ids do not say.
EFFORT_IOU = 0.1
BINS = 10


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
class _VersionStats:
    tasks: int = 0
    labels: dict[str, _Counts] = field(default_factory=lambda: defaultdict(_Counts))
    effort: Counter[str] = field(default_factory=Counter)
    edits: int = 0
    reference_chars: int = 0
    neds: list[float] = field(default_factory=list)
    scored: list[tuple[float, bool]] = field(default_factory=list)
    per_task: list[dict[str, Any]] = field(default_factory=list)


def build_report(examples: Sequence[Example], worst: int = 20) -> dict[str, Any]:
    """The report as plain data (JSON-ready): ``versions`` by model version, and the
    ``worst_tasks`` (lowest F1 first) across versions, to review first."""
    versions: dict[str, _VersionStats] = defaultdict(_VersionStats)
    unpaired = 0
    for example in examples:
        if example.model_regions is None:
            unpaired += 1
            continue
        stats = versions[example.model_version or "unknown"]
        stats.tasks += 1
        _add_example(stats, example)
    out_versions = {}
    all_tasks = []
    for version, stats in sorted(versions.items()):
        micro = _Counts()
        for counts in stats.labels.values():
            micro.add(counts)
        predicted = sum(stats.effort[k] for k in ("accepted", "adjusted", "deleted"))
        out_versions[version] = {
            "tasks": stats.tasks,
            "micro": micro.as_dict(),
            "labels": {label: c.as_dict() for label, c in sorted(stats.labels.items())},
            "ocr": {
                "pairs": len(stats.neds),
                "cer": stats.edits / stats.reference_chars if stats.reference_chars else None,
                "ned": sum(stats.neds) / len(stats.neds) if stats.neds else None,
            },
            "effort": {
                **{k: stats.effort[k] for k in ("accepted", "adjusted", "deleted", "added")},
                "predicted": predicted,
                "acceptance_rate": stats.effort["accepted"] / predicted if predicted else None,
            },
            "calibration": _calibration(stats.scored),
        }
        all_tasks += [{"model_version": version, **task} for task in stats.per_task]
    all_tasks.sort(key=lambda t: (t["f1"], t["task_id"] or 0))
    return {
        "examples": len(examples),
        "without_prediction": unpaired,
        "match_iou": MATCH_IOU,
        "versions": out_versions,
        "worst_tasks": all_tasks[:worst],
    }


def _add_example(stats: _VersionStats, example: Example) -> None:
    predicted = list(example.model_regions or ())
    reference = list(example.regions)
    task = _Counts()
    by_label: dict[str, tuple[list[Region], list[Region]]] = defaultdict(lambda: ([], []))
    for region in predicted:
        by_label[_label(region)][0].append(region)
    for region in reference:
        by_label[_label(region)][1].append(region)
    correct: set[int] = set()  # ids of predicted regions that were true positives
    for label, (pred, ref) in by_label.items():
        matching = match_regions(pred, ref)
        counts = _Counts(
            tp=len(matching.matches),
            fp=len(matching.unmatched_predicted),
            fn=len(matching.unmatched_reference),
            iou_sum=sum(m.iou for m in matching.matches),
        )
        stats.labels[label].add(counts)
        task.add(counts)
        for m in matching.matches:
            correct.add(id(pred[m.predicted]))
            if pred[m.predicted].text is not None or ref[m.reference].text is not None:
                p, r = nfc(pred[m.predicted].text), nfc(ref[m.reference].text)
                stats.edits += edit_distance(p, r)
                stats.reference_chars += len(r)
                stats.neds.append(ned(p, r))
    for region in predicted:
        if region.score is not None:
            stats.scored.append((region.score, id(region) in correct))
    effort = review_effort(predicted, reference)
    stats.effort.update(effort)
    summary = task.as_dict()
    stats.per_task.append(
        {
            "task_id": example.task_id,
            "project": example.project,
            "image": example.image,
            "f1": summary["f1"] if predicted or reference else 1.0,
            "tp": task.tp,
            "fp": task.fp,
            "fn": task.fn,
            "score": example.prediction_score,
            **{k: effort[k] for k in ("accepted", "adjusted", "deleted", "added")},
        }
    )


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
        ocr, effort = data["ocr"], data["effort"]
        if ocr["pairs"]:
            lines.append(
                f"OCR on {ocr['pairs']} matched region(s): CER {_pct(ocr['cer'])}%, "
                f"NED {_pct(ocr['ned'])}%"
            )
        lines.append(
            f"review: {effort['accepted']} accepted, {effort['adjusted']} adjusted, "
            f"{effort['deleted']} deleted, {effort['added']} added; "
            f"acceptance {_pct(effort['acceptance_rate'])}%"
        )
    if report["worst_tasks"]:
        lines += ["", "review first (lowest F1):"]
        for task in report["worst_tasks"][:10]:
            lines.append(
                f"  task {task['task_id']} ({task['model_version']}): F1 {_pct(task['f1'])}%, "
                f"{task['adjusted']} adjusted, {task['deleted']} deleted, {task['added']} added"
                f"  {task['image']}"
            )
    return "\n".join(lines)


def render_html(report: dict[str, Any]) -> str:
    """One self-contained page: tables, per-label F1 bars and a calibration diagram (SVG)."""
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>VARCO pre-label report</title>",
        "<style>body{font:14px sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}</style></head><body>",
        "<h1>VARCO pre-label report</h1>",
        f"<p>{report['examples']} examples, {report['without_prediction']} without a "
        f"prediction. Boxes match at IoU &ge; {report['match_iou']}.</p>",
    ]
    for version, data in report["versions"].items():
        parts.append(f"<h2>Model version {e(version)} ({data['tasks']} tasks)</h2>")
        parts.append(
            "<table><tr><th>label</th><th>precision %</th><th>recall %</th><th>F1 %</th>"
            "<th>mean IoU</th><th>TP</th><th>FP</th><th>FN</th></tr>"
        )
        for label, m in [*data["labels"].items(), ("ALL (micro)", data["micro"])]:
            iou = "-" if m["mean_iou"] is None else f"{m['mean_iou']:.3f}"
            parts.append(
                f"<tr><td>{e(label)}</td><td>{_pct(m['precision'])}</td>"
                f"<td>{_pct(m['recall'])}</td><td>{_pct(m['f1'])}</td><td>{iou}</td>"
                f"<td>{m['tp']}</td><td>{m['fp']}</td><td>{m['fn']}</td></tr>"
            )
        parts.append("</table>")
        effort, ocr = data["effort"], data["ocr"]
        parts.append(
            f"<p>Review: {effort['accepted']} accepted, {effort['adjusted']} adjusted, "
            f"{effort['deleted']} deleted, {effort['added']} added; acceptance rate "
            f"{_pct(effort['acceptance_rate'])}%.</p>"
        )
        if ocr["pairs"]:
            parts.append(
                f"<p>OCR on {ocr['pairs']} matched regions: CER {_pct(ocr['cer'])}%, "
                f"NED {_pct(ocr['ned'])}%.</p>"
            )
        parts.append("<h3>F1 per label</h3>" + _bars_svg(data["labels"]))
        parts.append("<h3>Score calibration</h3>" + _calibration_svg(data["calibration"]))
    if report["worst_tasks"]:
        parts.append("<h2>Review first (lowest F1)</h2><table><tr><th>task</th><th>version</th>")
        parts.append(
            "<th>F1 %</th><th>adjusted</th><th>deleted</th><th>added</th><th>image</th></tr>"
        )
        for t in report["worst_tasks"]:
            parts.append(
                f"<tr><td>{t['task_id']}</td><td>{e(t['model_version'])}</td>"
                f"<td>{_pct(t['f1'])}</td><td>{t['adjusted']}</td><td>{t['deleted']}</td>"
                f"<td>{t['added']}</td><td>{e(str(t['image']))}</td></tr>"
            )
        parts.append("</table>")
    parts.append(
        "<script type='application/json' id='report'>"
        + e(json.dumps(report, ensure_ascii=False))
        + "</script></body></html>"
    )
    return "\n".join(parts)


def _bars_svg(labels: dict[str, dict[str, Any]]) -> str:
    row, width = 22, 300
    height = row * len(labels) + 10
    bars = []
    for i, (label, m) in enumerate(labels.items()):
        y = 5 + i * row
        bars.append(
            f"<text x='0' y='{y + 15}'>{html.escape(label[:20])}</text>"
            f"<rect x='150' y='{y}' width='{width * m['f1']:.1f}' height='{row - 6}' "
            f"fill='#4a7'/><text x='{155 + width * m['f1']:.1f}' y='{y + 15}'>"
            f"{_pct(m['f1'])}%</text>"
        )
    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width + 220}' height='{height}' "
        f"font-size='12'>{''.join(bars)}</svg>"
    )


def _calibration_svg(bins: list[dict[str, Any]]) -> str:
    """Reliability diagram: mean score (x) against the share right (y); the diagonal is ideal."""
    size, pad = 240, 30

    dots = "".join(
        f"<circle cx='{pad + b['mean_score'] * size:.1f}' "
        f"cy='{pad + (1 - b['accuracy']) * size:.1f}' r='{3 + min(6, b['count'] ** 0.5):.1f}' "
        f"fill='#47a'><title>{b['count']} regions, score {b['mean_score']:.2f}, "
        f"right {b['accuracy']:.2f}</title></circle>"
        for b in bins
    )
    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{size + 2 * pad}' "
        f"height='{size + 2 * pad}' font-size='11'>"
        f"<rect x='{pad}' y='{pad}' width='{size}' height='{size}' fill='none' stroke='#999'/>"
        f"<line x1='{pad}' y1='{pad + size}' x2='{pad + size}' y2='{pad}' stroke='#ccc' "
        f"stroke-dasharray='4'/>{dots}"
        f"<text x='{pad}' y='{2 * pad + size - 5}'>region score</text>"
        f"<text x='2' y='{pad - 8}'>share right (TP at IoU {MATCH_IOU})</text></svg>"
    )
