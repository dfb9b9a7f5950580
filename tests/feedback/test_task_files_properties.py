"""Property tests of the task file reader and the file source of ``export`` and ``report``.

Tasks of a RectangleLabels + per-region TextArea project are generated with hypothesis (several
annotators, cancelled and ground-truth annotations, out-of-range and zero-size boxes, rotated
boxes, missing and unknown keys), written in every shape Label Studio has written them, and read
back: every shape gives the same regions, the exports and the report never fail, and the SFT
answer holds the chosen annotation's boxes. Any JSON at all either reads or is refused with a
:class:`TaskFileError` in one line.
"""

from __future__ import annotations

import copy
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, Phase, assume, event, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from varco_labeler.feedback.commands import run_export, run_report
from varco_labeler.feedback.reading_order import reading_order
from varco_labeler.feedback.report import build_report, render_table
from varco_labeler.feedback.sources import SourceError, examples_from_export
from varco_labeler.feedback.task_files import TaskFileError, read_task_file
from varco_labeler.labelstudio import read_label_config, results_to_regions
from varco_labeler.settings import Settings
from varco_labeler.varco import parse

LABELS = ("Cat", "고양이", "Ünïcode", "a b")
XML = (
    '<View><Image name="image" value="$image"/>'
    '<RectangleLabels name="label" toName="image">'
    + "".join(f'<Label value="{label}"/>' for label in LABELS)
    + '</RectangleLabels><TextArea name="transcription" toName="image" perRegion="true" '
    'editable="true"/></View>'
)
CONFIG = read_label_config(XML)
# (name, size): a plain name, and one with a space and Hangul in it.
IMAGES = (("a.png", (48, 40)), ("b 고양이.png", (64, 32)))
# "storage": a target storage's files, one per annotation with its task nested (no predictions).
SHAPES = ("json", "jsonl", "folder", "single", "completions", "storage")
PROPERTY = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# Reading (and pairing) without exporting costs milliseconds an example: more of them.
CHEAP_PROPERTY = settings(PROPERTY, max_examples=200)
# Where one example costs an export (or a failure may hide several bugs), shrinking a failure
# would take minutes: it is reported as generated (a rerun replays it from .hypothesis/).
UNSHRUNK = (Phase.explicit, Phase.reuse, Phase.generate)
# An image's data value is its index into IMAGES until a test puts the real path in.
_IMAGE = "__image__"


# -- strategies --------------------------------------------------------------------------------
TIMES = st.sampled_from(
    [
        "2024-01-01T10:00:00.000000Z",
        "2024-01-02T09:30:00.123456Z",
        "2024-01-02T09:30:00+00:00",
        "2024-03-05T00:00:00Z",
        "2023-12-31T23:59:59.999999Z",
    ]
)
SMALL_JSON = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.text(max_size=4),
    st.lists(st.integers(0, 3), max_size=2),
    st.dictionaries(st.sampled_from(["k", "ключ"]), st.integers(0, 3), max_size=2),
)
# Text a per-region TextArea may hold: any printable text but the model's tag brackets, and the
# line separators a JSON encoder leaves unescaped (U+2028, U+2029, U+0085).
TEXT = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="<>"),
        st.sampled_from(["고", "양", "이", " ", "\u2028", "\u2029", "\x85", "\n", "\t"]),
    ),
    min_size=1,
    max_size=8,
)
COORD = st.one_of(
    st.sampled_from([0, 0.0, 12.5, 50, 99.5, 100, -5, 130]),
    st.floats(0, 100),
    st.integers(0, 100),
)
SIZE = st.one_of(
    st.sampled_from([0, 0.0, 0.3, 0.6, 10, 100, -5, 130]),
    st.floats(0, 100),
    st.integers(1, 100),
)
# Boxes mostly inside the image, else anything: zero-size, negative, past the edge.
WILD = st.fixed_dictionaries({"x": COORD, "y": COORD, "width": SIZE, "height": SIZE})


@st.composite
def _inside(draw: st.DrawFn) -> dict[str, float]:
    x, y = draw(st.floats(0, 99)), draw(st.floats(0, 99))
    width = draw(st.floats(0.6, 100 - x) | st.just(100 - x))
    height = draw(st.floats(0.6, 100 - y) | st.just(100 - y))
    return {"x": x, "y": y, "width": width, "height": height}


INSIDE = _inside()
ROTATION = st.sampled_from([0, 0, 0, 0, 0.0, 0.0, None, 90, 30, -45, 360, 12.5])


def _extras(names: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Unknown keys Label Studio (a newer version, a plugin) might add."""
    return st.dictionaries(st.sampled_from(names), SMALL_JSON, max_size=2)


def _optional(draw: st.DrawFn, item: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """``item`` with some of ``keys`` left out."""
    return {k: v for k, v in item.items() if k not in keys or draw(st.booleans())}


@st.composite
def regions(draw: st.DrawFn, prefix: str) -> list[dict[str, Any]]:
    """0-4 regions: a rectanglelabels item each and, often, a textarea item with the same id."""
    items = []
    for index in range(draw(st.integers(0, 4))):
        region_id = f"{prefix}{draw(st.sampled_from(['', 'r', '고', 'Ab_-']))}{index}"
        geometry = draw(INSIDE if draw(st.integers(0, 2)) else WILD)
        rotation = draw(ROTATION)
        if rotation is not None:
            geometry["rotation"] = rotation
        sizes = draw(
            st.sampled_from([{}, {"original_width": 48, "original_height": 40}])
            | st.fixed_dictionaries(
                {"original_width": st.integers(1, 4000), "original_height": st.integers(1, 4000)}
            )
        )
        common = {"id": region_id, "to_name": "image", **sizes}
        if draw(st.booleans()):
            common["image_rotation"] = 0
        if draw(st.booleans()):
            common["score"] = draw(st.floats(0, 1))
        labels = draw(st.lists(st.sampled_from([*LABELS, "Not in config"]), max_size=2))
        rect_value = {**geometry, "rectanglelabels": labels}
        if draw(st.booleans()) and not labels:
            del rect_value["rectanglelabels"]
        items.append(
            {
                **common,
                "from_name": "label",
                "type": "rectanglelabels",
                "value": rect_value,
                **draw(_extras(["origin", "readonly", "zz_unknown"])),
            }
        )
        if draw(st.integers(0, 3)):
            text = draw(st.lists(TEXT, min_size=1, max_size=2)) if draw(st.integers(0, 9)) else [""]
            items.append(
                {
                    **common,
                    "from_name": "transcription",
                    "type": "textarea",
                    "value": {**geometry, "text": text},
                }
            )
    return draw(st.permutations(items))


@st.composite
def annotation(draw: st.DrawFn, task_number: int, number: int) -> dict[str, Any]:
    """Annotation ``number`` of task ``task_number``; ids are unique, as Label Studio's are."""
    predictions = [None, 100 + 10 * task_number, 101 + 10 * task_number, 999]
    item = {
        "id": 10 * task_number + number,
        "completed_by": draw(st.sampled_from([1, 2, 3, {"id": 2, "email": "b@example.com"}])),
        "result": draw(regions(f"a{number}")),
        "was_cancelled": draw(st.sampled_from([False, False, False, True])),
        "ground_truth": draw(st.sampled_from([False, False, True])),
        "created_at": draw(TIMES),
        "updated_at": draw(TIMES),
        "lead_time": draw(st.floats(0, 1000)),
        "parent_prediction": draw(st.sampled_from(predictions)),
    }
    item = _optional(
        draw,
        item,
        ("completed_by", "was_cancelled", "ground_truth", "updated_at", "lead_time", "id"),
    )
    return {**item, **draw(_extras(["draft_created_at", "zz_unknown", "import_id"]))}


@st.composite
def prediction(draw: st.DrawFn, task_number: int, number: int) -> dict[str, Any]:
    item = {
        "id": 100 + 10 * task_number + number,
        "model_version": draw(st.sampled_from(["tiny-v1", "varco-1.7b", "v2 고"])),
        "created_at": draw(TIMES),
        "score": draw(st.floats(0, 1)),
        "result": draw(regions(f"p{number}")),
    }
    item = _optional(draw, item, ("created_at", "score", "id"))
    return {**item, **draw(_extras(["cluster", "zz_unknown", "mislabeling"]))}


@st.composite
def task(draw: st.DrawFn, number: int) -> dict[str, Any]:
    data = {"image": _IMAGE + str(draw(st.integers(0, len(IMAGES) - 1)))}
    data.update(draw(_extras(["caption", "meta_info", "zz_unknown"])))
    item: dict[str, Any] = {
        "id": number,
        "data": data,
        "annotations": [draw(annotation(number, k)) for k in range(draw(st.integers(0, 3)))],
        "predictions": [draw(prediction(number, k)) for k in range(draw(st.integers(0, 2)))],
        "project": 7,
        "created_at": draw(TIMES),
    }
    item = _optional(draw, item, ("annotations", "predictions", "project", "created_at"))
    return {**item, **draw(_extras(["meta", "drafts", "file_upload", "zz_unknown"]))}


@st.composite
def task_lists(draw: st.DrawFn) -> list[dict[str, Any]]:
    return [draw(task(number)) for number in range(1, draw(st.integers(1, 4)) + 1)]


# -- helpers -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    for name, size in IMAGES:
        Image.new("RGB", size, (200, 20, 20)).save(folder / name)
    return folder


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("config") / "label_config.xml"
    path.write_text(XML, encoding="utf-8")
    return path


def _placed(tasks: list[dict[str, Any]], images: Path) -> list[dict[str, Any]]:
    tasks = copy.deepcopy(tasks)
    for item in tasks:
        index = int(item["data"]["image"].removeprefix(_IMAGE))
        item["data"]["image"] = str(images / IMAGES[index][0])
    return tasks


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _write(shape: str, tasks: list[dict[str, Any]], folder: Path) -> Path:
    """``tasks`` as Label Studio writes them in ``shape``; ``single`` holds the first task."""
    if shape == "json":
        path = folder / "export.json"
        path.write_text(json.dumps(tasks, ensure_ascii=False, indent=2), encoding="utf-8")
    elif shape == "jsonl":
        path = folder / "export.jsonl"
        path.write_text("".join(_dump(t) + "\n" for t in tasks), encoding="utf-8")
    elif shape == "folder":
        path = folder / "tasks"
        path.mkdir()
        for number, item in enumerate(tasks, 1):
            (path / str(number)).write_text(_dump(item), encoding="utf-8")
    elif shape == "single":
        path = folder / "task.json"
        path.write_text(_dump(tasks[0]), encoding="utf-8")
    elif shape == "storage":
        path = folder / "storage"
        path.mkdir()
        annotations = [
            (a, {k: v for k, v in t.items() if k not in ("annotations", "predictions")})
            for t in tasks
            for a in t.get("annotations") or []
        ]
        for number, (item, nested) in enumerate(annotations, 1):
            (path / str(number)).write_text(
                json.dumps({**item, "task": nested}, ensure_ascii=False, indent=2), encoding="utf-8"
            )
    elif shape == "completions":
        old = [
            {("completions" if k == "annotations" else k): v for k, v in t.items()} for t in tasks
        ]
        path = folder / "completions.json"
        path.write_text(_dump(old), encoding="utf-8")
    else:
        raise AssertionError(shape)
    return path


def _sides(tasks: list[dict[str, Any]]) -> list[Any]:
    """What pairing sees of each task: its annotations' and predictions' regions."""

    def side(items: list[Any]) -> list[Any]:
        return [
            (a.get("id"), bool(a.get("was_cancelled")), bool(a.get("ground_truth")),
             results_to_regions(a.get("result") or [], CONFIG))
            for a in items
        ]  # fmt: skip

    return [
        (t.get("id"), t["data"], side(t.get("annotations") or []), side(t.get("predictions") or []))
        for t in tasks
    ]


def _chosen(item: dict[str, Any]) -> dict[str, Any] | None:
    """The annotation an example is made of: not cancelled; ground truth first, then the latest
    (updated_at, else created_at, as text), then the highest id; the first of equals."""
    kept = [a for a in item.get("annotations") or [] if not a.get("was_cancelled")]
    best = None
    for candidate in kept:
        key = (
            bool(candidate.get("ground_truth")),
            str(candidate.get("updated_at") or candidate.get("created_at") or ""),
            int(candidate.get("id") or 0),
        )
        if best is None or key > best[0]:
            best = (key, candidate)
    return best[1] if best else None


def _as_read(shape: str, tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The tasks a file of ``shape`` holds: the first for ``single``; for ``storage`` the
    annotated tasks in id order, without predictions."""
    if shape == "single":
        return tasks[:1]
    if shape == "storage":
        annotated = [{**t, "predictions": []} for t in tasks if t.get("annotations")]
        return sorted(annotated, key=lambda t: str(t["id"]).zfill(20))
    return tasks


def _in_range(result: dict[str, Any]) -> bool:
    value = result["value"]
    x, y, w, h = (value[k] for k in ("x", "y", "width", "height"))
    return (
        x >= 0 and y >= 0 and x + w <= 100 and y + h <= 100 and w > 0.5 and h > 0.5
        and not value.get("rotation")
    )  # fmt: skip


def _settings(folder: Path, images: Path) -> Settings:
    return Settings(model_dir=folder / "model", local_image_roots=(images,))


# -- 2. every shape reads the same ---------------------------------------------------------------
@PROPERTY
@given(generated=task_lists(), bom=st.booleans())
def test_every_shape_reads_the_same_tasks(images: Path, generated: list[dict], bom: bool) -> None:
    tasks = _placed(generated, images)
    with tempfile.TemporaryDirectory(prefix="shapes-") as scratch:
        folder = Path(scratch)
        with_annotations = sum("annotations" in t for t in tasks)
        for shape in SHAPES:
            if shape == "storage" and not any(t.get("annotations") for t in tasks):
                continue  # a target storage writes nothing
            path = _write(shape, tasks, folder)
            if bom and path.is_file():  # Windows tools write a byte order mark
                path.write_text("\ufeff" + path.read_text(encoding="utf-8"), encoding="utf-8")
            read = read_task_file(path, CONFIG)
            assert _sides(read.tasks) == _sides(_as_read(shape, tasks)), shape
            assert not read.skipped_results, (shape, read.skipped_results)
            assert read.legacy_completions == (with_annotations if shape == "completions" else 0)
            assert read.has_predictions == (shape != "storage")


# -- 3. exports and the report never fail; the SFT answer keeps the chosen boxes ---------------
@settings(PROPERTY, phases=UNSHRUNK)
@given(generated=task_lists(), shape=st.sampled_from(SHAPES))
def test_exports_and_report_read_every_file(
    images: Path,
    config_file: Path,
    generated: list[dict],
    shape: str,
) -> None:
    tasks = _placed(generated, images)
    assume(shape != "storage" or any(t.get("annotations") for t in tasks))
    with tempfile.TemporaryDirectory(prefix="export-") as scratch:
        _export_and_check(Path(scratch), tasks, shape, config_file, images)


def _export_and_check(
    folder: Path, tasks: list[dict[str, Any]], shape: str, config_file: Path, images: Path
) -> None:
    source = str(_write(shape, tasks, folder))
    options = {"label_config": config_file, "settings": _settings(folder, images)}

    sft = run_export(source, "trl-sft", folder / "sft", val_fraction=0, **options)
    if shape == "storage":  # annotations only: nothing to pair the model's side with
        with pytest.raises(SourceError, match="target storage"):
            run_export(source, "trl-dpo", folder / "dpo", val_fraction=0, **options)
        with pytest.raises(SourceError, match="target storage"):
            run_report(source, **options)
    else:
        run_export(source, "trl-dpo", folder / "dpo", val_fraction=0, **options)
        report, table = run_report(source, **options)
        assert isinstance(table, str) and isinstance(report["versions"], dict)

    answers = []  # per expected SFT row: the chosen annotation's regions with text
    for item in _as_read(shape, tasks):
        chosen = _chosen(item)
        if chosen is None:
            continue
        boxes = {r["id"]: r for r in chosen.get("result") or [] if r["type"] == "rectanglelabels"}
        with_text = [r for r in results_to_regions(chosen.get("result") or [], CONFIG) if r.text]
        if with_text:
            # OCR targets list the lines in reading order, whatever order they were drawn in.
            answers.append([(region, boxes[region.id]) for region in reading_order(with_text)])
    assert sft["written"] == {"train": len(answers), "validation": 0}
    assert sft["skipped"].get("image_error", 0) == 0
    rows = []
    if answers:
        rows = pq.read_table(folder / "sft" / "data" / "train-00000-of-00001.parquet").to_pylist()
    assert len(rows) == len(answers)
    compared = 0
    for row, regions_with_text in zip(rows, answers, strict=True):
        (turn,) = row["completion"]
        parsed = parse(turn["content"][0]["text"])
        assert not parsed.dropped
        got = [box for item in parsed.grounded for box in item.boxes]
        assert len(got) == len(regions_with_text)
        for box, (region, result) in zip(got, regions_with_text, strict=True):
            if _in_range(result):
                value = result["value"]
                want = (
                    value["x"] / 100,
                    value["y"] / 100,
                    (value["x"] + value["width"]) / 100,
                    (value["y"] + value["height"]) / 100,
                )
                close = [
                    math.isclose(g, w, abs_tol=0.001)
                    for g, w in zip(box.as_tuple(), want, strict=True)
                ]
                assert all(close), (region, box, want)
                compared += 1
    event("in-range boxes compared" if compared else "no in-range box with text")


# -- 4. any JSON reads or is refused in one line -----------------------------------------------
# Keys a task file uses, so that random JSON often looks like (part of) a task.
KEYS = st.sampled_from(
    [
        "id", "data", "image", "annotations", "completions", "predictions", "result", "type",
        "value", "from_name", "to_name", "x", "y", "width", "height", "rotation", "text",
        "rectanglelabels", "label", "transcription", "annotator", "annotation_id",
        "original_width", "original_height", "model_version", "was_cancelled", "ground_truth",
        "created_at", "score",
    ]
) | st.text(max_size=4)  # fmt: skip
LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=6),
    st.sampled_from(["image", "label", "transcription", "rectanglelabels", "textarea"]),
)
JSON = st.recursive(
    LEAVES,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=6),
    max_leaves=30,
)


def _one_line(error: TaskFileError) -> None:
    message = str(error)
    assert message and len(message.splitlines()) == 1, message


@CHEAP_PROPERTY
@given(value=JSON, lines=st.booleans())
@example(value={"id": "a\nb"}, lines=False)  # a task id is part of the message
@example(value=[{"id": [], "annotator": 1}], lines=False)  # JSON_MIN, an unhashable task id
@example(value=[{"data": {}, "annotations": [{"result": [{"type": []}]}]}], lines=False)
def test_any_json_reads_or_is_refused_in_one_line(value: Any, lines: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="any-") as scratch:
        _read_any(Path(scratch) / "export.json", value, lines)


def _read_any(path: Path, value: Any, lines: bool) -> None:
    if lines and isinstance(value, list) and len(value) > 1:
        path.write_text("".join(_dump(v) + "\n" for v in value), encoding="utf-8")
    else:
        path.write_text(_dump(value), encoding="utf-8")
    try:
        read_task_file(path, CONFIG)
    except TaskFileError as error:
        _one_line(error)


# -- 5. malformed parts of a task are left out, never fatal --------------------------------------
def _places(value: Any, out: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """(container, key) of every value nested in ``value``."""
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, child in items:
        out.append((value, key))
        if isinstance(child, dict | list):
            _places(child, out)
    return out


@settings(CHEAP_PROPERTY, phases=UNSHRUNK)
@given(generated=task_lists(), data=st.data(), shape=st.sampled_from(["json", "jsonl"]))
def test_a_task_with_any_part_replaced_is_read_and_paired_or_refused(
    images: Path,
    generated: list[dict],
    data: st.DataObject,
    shape: str,
) -> None:
    """Any value anywhere in a task (a type, a score, an id, the data) either reads, pairs and
    reports, or is refused with a one-line TaskFileError: never another exception."""
    tasks = _placed(generated, images)
    for _ in range(data.draw(st.integers(1, 3), label="replacements")):
        places = _places(tasks, [])
        container, key = places[data.draw(st.integers(0, len(places) - 1), label="place")]
        container[key] = data.draw(JSON, label="value")
    with tempfile.TemporaryDirectory(prefix="mutated-") as scratch:
        _read_and_pair(_write(shape, tasks, Path(scratch)))


def _read_and_pair(path: Path) -> None:
    for every_version in (False, True):  # an export pairs one version, a report every one
        try:
            examples = examples_from_export(
                path, XML, every_version=every_version, image_size=lambda ref: (48, 40)
            )
        except TaskFileError as error:
            _one_line(error)
            return
        report = build_report(examples)
        render_table(report)
        json.dumps(report)
