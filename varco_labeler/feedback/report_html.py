"""The report as one self-contained HTML page that people look at rather than read.

Charts are drawn by matplotlib into inline SVG (axes, ticks and labels included; text as paths,
so no font has to be installed where the page is opened). The tasks to review first come as
thumbnails with the pre-label (orange, dashed) and the correction (green) drawn on the image,
each linking to the task in Label Studio when its address is known. Images are embedded as data
URIs; nothing is fetched when the page opens.
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import json
from collections.abc import Sequence
from typing import Any, Protocol

from PIL import Image, ImageDraw, ImageOps

from varco_labeler.feedback.report import _pct
from varco_labeler.labelstudio.images import cloud_reference

PRE_LABEL = "#e8710a"
CORRECTION = "#1b9e4b"
THUMBNAIL = 240
_STYLE = (
    "body{font:14px sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;"
    "margin:0.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
    "td:first-child,th:first-child{text-align:left}.charts{display:flex;flex-wrap:wrap;gap:1em}"
    ".tasks{display:flex;flex-wrap:wrap;gap:1em}.task{width:250px;font-size:12px}"
    ".task img{border:1px solid #999}.key span{padding:0 6px;color:#fff}"
)


class ImageReader(Protocol):
    def read_bytes(self, ref: str) -> bytes: ...


def render_html(
    report: dict[str, Any],
    images: ImageReader | None = None,
    label_studio_url: str | None = None,
) -> str:
    """The page; ``images`` reads task images for the thumbnails (none: no thumbnails), and
    ``label_studio_url`` makes each task a link into its project's Data Manager."""
    e = html.escape
    versions = report["versions"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>VARCO pre-label report</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>VARCO pre-label report</h1>",
        f"<p>{report['examples']} examples, {report['without_prediction']} without a "
        f"prediction. Boxes match at IoU &ge; {report['match_iou']}.</p>",
    ]
    if versions:
        parts += ["<h2>Model versions side by side</h2>", _comparison_table(report)]
        parts.append(f"<div class='charts'>{_comparison_chart(versions)}</div>")
    for version, data in versions.items():
        parts.append(f"<h2>Model version {e(version)} ({data['tasks']} tasks)</h2>")
        parts.append(_label_table(data))
        parts.append("<div class='charts'>")
        parts.append(_f1_chart(data["labels"]) + _calibration_chart(data["calibration"]))
        parts.append("</div><h3>Label confusion (rows: human, columns: model)</h3>")
        parts.append(_confusion_table(data["confusion"]))
    if report["annotators"]:
        parts += ["<h2>Per annotator</h2>", _annotator_table(report)]
    if report["worst_tasks"]:
        parts += [
            "<h2>Review first (lowest F1)</h2>",
            f"<p class='key'><span style='background:{PRE_LABEL}'>pre-label</span> "
            f"<span style='background:{CORRECTION}'>correction</span></p>",
            "<div class='tasks'>",
            *(_task_card(t, images, label_studio_url) for t in report["worst_tasks"]),
            "</div>",
        ]
    parts.append(
        "<script type='application/json' id='report'>"
        + e(json.dumps(report, ensure_ascii=False))
        + "</script></body></html>"
    )
    return "\n".join(parts)


# -- tables ----------------------------------------------------------------------------------
def _row(cells: Sequence[Any], header: bool = False) -> str:
    tag = "th" if header else "td"
    return "<tr>" + "".join(f"<{tag}>{html.escape(str(c))}</{tag}>" for c in cells) + "</tr>"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _comparison_table(report: dict[str, Any]) -> str:
    versions = report["versions"]
    rows = [
        ("tasks", lambda d: d["tasks"]),
        ("precision %", lambda d: _pct(d["micro"]["precision"])),
        ("recall %", lambda d: _pct(d["micro"]["recall"])),
        ("F1 % (IoU 0.5)", lambda d: _pct(d["micro"]["f1"])),
        ("mAP@[.5:.95] %", lambda d: _pct(d["map"]["map"])),
        ("mAP@.5 %", lambda d: _pct(d["map"]["map_50"])),
        ("OCR CER % (pages)", lambda d: _pct(d["ocr"]["cer"])),
        ("acceptance %", lambda d: _pct(d["effort"]["acceptance_rate"])),
        ("seconds per task", lambda d: _seconds(d["time"]["mean_seconds"])),
        ("seconds saved per task", lambda d: _seconds(d["time"]["saved_per_task_seconds"])),
    ]
    out = ["<table>", _row(["", *versions], header=True)]
    out += [_row([name, *(get(d) for d in versions.values())]) for name, get in rows]
    baseline = report["time"]["unassisted_mean_seconds"]
    out.append("</table>")
    if baseline is not None:
        out.append(
            f"<p>Without a pre-label: {report['time']['unassisted_tasks']} tasks, "
            f"{baseline:.1f} s each on average (Label Studio's lead time).</p>"
        )
    return "".join(out)


def _label_table(data: dict[str, Any]) -> str:
    out = [
        "<table>",
        _row(
            [
                "label",
                "precision %",
                "recall %",
                "F1 %",
                "AP@[.5:.95] %",
                "mean IoU",
                "TP",
                "FP",
                "FN",
            ],
            header=True,
        ),
    ]
    ap = data["map"]["labels"]
    for label, m in [*data["labels"].items(), ("ALL (micro)", data["micro"])]:
        label_ap = data["map"]["map"] if label == "ALL (micro)" else ap.get(label)
        iou = "-" if m["mean_iou"] is None else f"{m['mean_iou']:.3f}"
        out.append(
            _row(
                [
                    label,
                    _pct(m["precision"]),
                    _pct(m["recall"]),
                    _pct(m["f1"]),
                    _pct(label_ap),
                    iou,
                    m["tp"],
                    m["fp"],
                    m["fn"],
                ]
            )
        )
    out.append("</table>")
    effort, ocr, time = data["effort"], data["ocr"], data["time"]
    out.append(
        f"<p>Review: {effort['accepted']} accepted, {effort['adjusted']} adjusted, "
        f"{effort['deleted']} deleted, {effort['added']} added; acceptance rate "
        f"{_pct(effort['acceptance_rate'])}%.</p>"
    )
    if ocr["pages"]:
        out.append(
            f"<p>OCR on {ocr['pages']} pages (missed and made-up text included): CER "
            f"{_pct(ocr['cer'])}%, NED {_pct(ocr['ned'])}%.</p>"
        )
    if time["tasks"]:
        out.append(
            f"<p>Time: {_seconds(time['mean_seconds'])} s per task over {time['tasks']} tasks; "
            f"saved per task against no pre-label: {_seconds(time['saved_per_task_seconds'])} s"
            "</p>"
        )
    return "".join(out)


def _confusion_table(matrix: dict[str, Any]) -> str:
    labels = matrix["labels"]
    peak = max((v for row in matrix["matrix"] for v in row), default=0) or 1
    out = ["<table>", _row(["human \\ model", *labels], header=True)]
    for label, row in zip(labels, matrix["matrix"], strict=True):
        cells = "".join(
            f"<td style='background:rgba(70,110,200,{0.8 * v / peak:.2f})'>{v}</td>" for v in row
        )
        out.append(f"<tr><td>{html.escape(label)}</td>{cells}</tr>")
    return "".join([*out, "</table>"])


def _annotator_table(report: dict[str, Any]) -> str:
    out = [
        "<table>",
        _row(
            [
                "annotator",
                "tasks",
                "F1 %",
                "acceptance %",
                "adjusted",
                "added",
                "seconds per task",
                "saved per task",
            ],
            header=True,
        ),
    ]
    for name, d in report["annotators"].items():
        out.append(
            _row(
                [
                    name,
                    d["tasks"],
                    _pct(d["micro"]["f1"]),
                    _pct(d["effort"]["acceptance_rate"]),
                    d["effort"]["adjusted"],
                    d["effort"]["added"],
                    _seconds(d["time"]["mean_seconds"]),
                    _seconds(d["time"]["saved_per_task_seconds"]),
                ]
            )
        )
    return "".join([*out, "</table>"])


# -- charts (matplotlib -> inline SVG) -------------------------------------------------------
def _svg(figure: Any) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight")
    text = buffer.getvalue()
    return text[text.index("<svg") :]  # inline: no XML declaration or DOCTYPE


def _figure(width: float, height: float) -> Any:
    # Figure, not pyplot: no global state, no GUI backend, safe in any thread.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=96, layout="constrained")


def _f1_chart(labels: dict[str, dict[str, Any]]) -> str:
    names = list(labels)
    figure = _figure(4.5, 0.9 + 0.3 * max(1, len(names)))
    axes = figure.subplots()
    axes.barh(range(len(names)), [labels[n]["f1"] for n in names], color="#4a7")
    axes.set_yticks(range(len(names)), [n[:24] for n in names])
    axes.invert_yaxis()
    axes.set_xlim(0, 1)
    axes.set_xlabel("F1 at IoU 0.5")
    axes.set_title("F1 per label")
    axes.grid(axis="x", alpha=0.3)
    return _svg(figure)


def _calibration_chart(bins: list[dict[str, Any]]) -> str:
    """Reliability diagram: mean score (x) against the share right (y); the diagonal is ideal."""
    figure = _figure(3.6, 3.4)
    axes = figure.subplots()
    axes.plot([0, 1], [0, 1], linestyle="--", color="#bbb", label="calibrated")
    if bins:
        axes.scatter(
            [b["mean_score"] for b in bins],
            [b["accuracy"] for b in bins],
            s=[20 + 8 * b["count"] ** 0.5 for b in bins],
            color="#47a",
            label="regions (size: count)",
        )
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.02)
    axes.set_xlabel("region score")
    axes.set_ylabel("share right (TP at IoU 0.5)")
    axes.set_title("Score calibration")
    axes.legend(loc="upper left", fontsize=8)
    axes.grid(alpha=0.3)
    return _svg(figure)


def _comparison_chart(versions: dict[str, dict[str, Any]]) -> str:
    metrics = [
        ("F1", lambda d: d["micro"]["f1"]),
        ("mAP", lambda d: d["map"]["map"]),
        ("acceptance", lambda d: d["effort"]["acceptance_rate"]),
    ]
    names = list(versions)
    figure = _figure(1.8 + 1.2 * len(names), 3.2)
    axes = figure.subplots()
    width = 0.8 / len(metrics)
    for index, (metric, get) in enumerate(metrics):
        values = [get(versions[v]) or 0.0 for v in names]
        positions = [i + (index - (len(metrics) - 1) / 2) * width for i in range(len(names))]
        axes.bar(positions, values, width, label=metric)
    axes.set_xticks(range(len(names)), [_short(n) for n in names], rotation=15, ha="right")
    axes.set_ylim(0, 1)
    axes.set_ylabel("share")
    axes.set_title("Model versions")
    axes.legend(fontsize=8)
    axes.grid(axis="y", alpha=0.3)
    return _svg(figure)


def _short(name: str) -> str:
    return name if len(name) <= 28 else "..." + name[-25:]


# -- thumbnails ------------------------------------------------------------------------------
def _task_card(task: dict[str, Any], images: ImageReader | None, url: str | None) -> str:
    e = html.escape
    picture = _thumbnail(task, images) if images is not None else None
    body = (
        f"<img src='{picture}' alt='task {task['task_id']}'>"
        if picture
        else f"<div>{e(str(task['image']))}</div>"
    )
    link = task_link(url, task.get("project"), task.get("task_id"))
    if link:
        body = f"<a href='{e(link)}' target='_blank'>{body}</a>"
    return (
        f"<div class='task'>{body}<div>task {task['task_id']} ({e(task['model_version'])}): "
        f"F1 {_pct(task['f1'])}%, {task['adjusted']} adjusted, {task['deleted']} deleted, "
        f"{task['added']} added</div></div>"
    )


def task_link(url: str | None, project: int | None, task_id: int | None) -> str | None:
    """The task opened in its project's Data Manager (Label Studio's ``?task=`` deep link)."""
    if not url or project is None or task_id is None:
        return None
    return f"{url.rstrip('/')}/projects/{project}/data?task={task_id}"


def _thumbnail(task: dict[str, Any], images: ImageReader) -> str | None:
    try:
        ref = cloud_reference(str(task["image"]), task.get("task_id"))
        with Image.open(io.BytesIO(images.read_bytes(ref))) as opened:
            # Boxes are in the upright frame Label Studio shows.
            image = ImageOps.exif_transpose(opened).convert("RGB")
    except (OSError, ValueError):  # unreadable or not allowed: the card keeps the path
        return None
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    draw = ImageDraw.Draw(image)
    for key, colour, dashed in (("reference", CORRECTION, False), ("predicted", PRE_LABEL, True)):
        for region in task.get(key) or []:
            _draw_box(draw, region["box"], image.size, colour, dashed)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _draw_box(
    draw: ImageDraw.ImageDraw,
    box: Sequence[float],
    size: tuple[int, int],
    colour: str,
    dashed: bool,
) -> None:
    width, height = size
    x1, y1, x2, y2 = box[0] * width, box[1] * height, box[2] * width, box[3] * height
    if not dashed:
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=2)
        return
    # PIL has no dashed lines: 5 px on, 3 px off along each side.
    corners = [(x1, y1), (x2, y1), (x2, y2), (x1, y2), (x1, y1)]
    for (ax, ay), (bx, by) in itertools.pairwise(corners):
        length = max(abs(bx - ax), abs(by - ay), 1.0)
        step = 0.0
        while step < length:
            end = min(step + 5, length)
            draw.line(
                (
                    ax + (bx - ax) * step / length,
                    ay + (by - ay) * step / length,
                    ax + (bx - ax) * end / length,
                    ay + (by - ay) * end / length,
                ),
                fill=colour,
                width=2,
            )
            step += 8
