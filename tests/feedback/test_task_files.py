"""The task file reader on files Label Studio 1.23.2 wrote: the same two tasks in every shape.

tests/fixtures/task_files/README.md says where each file comes from. Every shape must read and
pair into the same annotation records (task ids, boxes within 1e-6, labels, texts); result items
this project cannot use are skipped and counted; a file that is not a task file is refused in one
line naming the file, the task and what was expected, by the reader and by ``export``/``report``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from varco_labeler import cli
from varco_labeler.feedback.pairing import Example, PairingStats
from varco_labeler.feedback.sources import SourceError, examples_from_export
from varco_labeler.feedback.task_files import TaskFile, TaskFileError, read_task_file
from varco_labeler.labelstudio.config import read_label_config
from varco_labeler.labelstudio.templates import label_config

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "task_files"
XML = label_config("ocr", ["Text", "Handwriting"])
CONFIG = read_label_config(XML)

# The truth every shape must give: task id -> (annotation id, regions), each region a
# (normalised box, label, text); box = (x, y, x + width, y + height) of the percent values / 100.
Record = tuple[int | None, list[tuple[tuple[float, float, float, float], str | None, str | None]]]
EXPECTED: dict[int, Record] = {
    1: (
        1,
        [
            ((0.10, 0.20, 0.40, 0.35), "Text", "STOP"),
            ((0.505, 0.6025, 0.905, 0.72375), "Handwriting", "GO"),
        ],
    ),
    2: (2, [((0.05, 0.10, 0.85, 0.40), "Text", "EXIT")]),
}
# file -> (shape, task ids, the model version paired with task 1, or None without predictions)
SHAPES: dict[str, tuple[str, list[int], str | None]] = {
    "tasks.json": ("json", [1, 2], "v1"),
    "task_1.json": ("task", [1], "v1"),
    "tasks.jsonl": ("jsonl", [1, 2], "v1"),
    "storage": ("folder", [1, 2], None),  # one file per annotation: LS 1.23.2's default
    "storage_tasks": ("folder", [1, 2], None),  # one file per task: FUTURE_SAVE_TASK_TO_STORAGE
    "tasks_min.json": ("json-min", [1, 2], None),
    "tasks_completions.json": ("json", [1, 2], "v1"),
}
# The annotations each task holds (ids), cancelled ones included; JSON_MIN leaves those out.
ANNOTATIONS = {1: [1], 2: [2, 3]}


def records(examples: list[Example]) -> dict[int | None, Record]:
    return {
        example.task_id: (
            example.annotation_id,
            [(region.box.as_tuple(), region.label, region.text) for region in example.regions],
        )
        for example in examples
    }


def assert_same_records(got: dict[int | None, Record], want: dict[int, Record]) -> None:
    assert sorted(got, key=str) == sorted(want), (got, want)
    for task_id, (annotation_id, regions) in want.items():
        got_annotation, got_regions = got[task_id]
        assert got_annotation == annotation_id, (task_id, got_annotation)
        assert len(got_regions) == len(regions), (task_id, got_regions)
        for (box, label, text), (want_box, want_label, want_text) in zip(
            got_regions, regions, strict=True
        ):
            assert box == pytest.approx(want_box, abs=1e-6), (task_id, box, want_box)
            assert (label, text) == (want_label, want_text), task_id


def read(name: str) -> TaskFile:
    return read_task_file(FIXTURES / name, CONFIG)


# -- every shape -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(SHAPES))
def test_every_shape_reads_the_same_tasks(name: str) -> None:
    shape, task_ids, _ = SHAPES[name]
    read_file = read(name)
    assert read_file.shape == shape
    assert [task["id"] for task in read_file.tasks] == task_ids
    assert not read_file.skipped_results
    for task in read_file.tasks:
        assert task["data"]["image"].startswith("/data/local-files/?d=images/")
        assert isinstance(task["annotations"], list)
        assert isinstance(task.get("predictions") or [], list)
        kept = [a["id"] for a in task["annotations"]]
        want = ANNOTATIONS[task["id"]]
        assert kept == (want[:1] if shape == "json-min" else want), (name, task["id"], kept)
        for annotation in task["annotations"]:
            assert not isinstance(annotation.get("task"), dict), "the nested task stays nested"


@pytest.mark.parametrize("name", list(SHAPES))
def test_every_shape_pairs_into_the_same_records(name: str) -> None:
    _, task_ids, model_version = SHAPES[name]
    stats = PairingStats()
    examples = examples_from_export(FIXTURES / name, XML, stats=stats)
    assert_same_records(records(examples), {i: EXPECTED[i] for i in task_ids})
    by_task = {example.task_id: example for example in examples}
    assert by_task[1].model_version == model_version
    assert by_task[1].has_prediction == (model_version is not None)
    if 2 in by_task:
        assert by_task[2].model_version is None  # task 2 has no prediction in any shape
    assert by_task[1].answer == (
        "<char>STOP</char><bbox>0.1, 0.2, 0.4, 0.35</bbox>\n"
        "<char>GO</char><bbox>0.505, 0.603, 0.905, 0.724</bbox>"
    )
    assert stats.tasks == len(task_ids) and stats.paired == len(task_ids)
    assert not stats.skipped_results


def test_json_min_has_no_predictions_and_the_others_keep_theirs() -> None:
    assert read("tasks_min.json").has_predictions is False
    for name in ("tasks.json", "task_1.json", "tasks.jsonl", "tasks_completions.json"):
        read_file = read(name)
        assert read_file.has_predictions is True, name
        prediction = read_file.tasks[0]["predictions"][0]
        assert (prediction["model_version"], prediction["score"]) == ("v1", 0.5), name


def test_json_min_is_refused_where_the_model_side_is_needed() -> None:
    with pytest.raises(SourceError, match=r"JSON_MIN.*no predictions"):
        examples_from_export(FIXTURES / "tasks_min.json", XML, needs_model_side="a report")


def test_json_min_keeps_one_line_texts_beside_multi_line_ones(tmp_path: Path) -> None:
    """The SDK's converter writes a one-line per-region text as a bare string (its geometry is
    lost) and a multi-line one as a value with its geometry, in the same list:
    ``"transcription": ["STOP", {"x": 50.5, ..., "text": ["GO", "NOW"]}]``."""
    from label_studio_sdk.converter import Converter

    tasks = json.loads((FIXTURES / "tasks.json").read_text(encoding="utf-8"))
    tasks[0]["annotations"][0]["result"][3]["value"]["text"] = ["GO", "NOW"]
    (tmp_path / "tasks.json").write_text(json.dumps(tasks), encoding="utf-8")
    converter = Converter(XML, project_dir=None, download_resources=False)
    converter.convert_to_json_min(str(tmp_path / "tasks.json"), str(tmp_path), is_dir=False)
    written = json.loads((tmp_path / "result.json").read_text(encoding="utf-8"))
    assert written[0]["transcription"][0] == "STOP"
    assert written[0]["transcription"][1]["text"] == ["GO", "NOW"]
    want = copy.deepcopy(EXPECTED)
    want[1][1][1] = (want[1][1][1][0], "Handwriting", "GO NOW")
    for name in ("tasks.json", "result.json"):
        assert_same_records(records(examples_from_export(tmp_path / name, XML)), want)


def test_the_completions_file_counts_its_legacy_tasks() -> None:
    assert read("tasks_completions.json").legacy_completions == 2
    assert read("tasks.json").legacy_completions == 0
    stats = PairingStats()
    examples_from_export(FIXTURES / "tasks_completions.json", XML, stats=stats)
    assert stats.legacy_completions == 2
    assert stats.cancelled_only == 0 and stats.paired == 2


# -- result items this project cannot use ----------------------------------------------------
UNUSABLE: list[Any] = [
    {"from_id": "a1", "to_id": "a2", "type": "relation", "direction": "right", "labels": []},
    {
        "id": "k1",
        "from_name": "point",
        "to_name": "image",
        "type": "keypointlabels",
        "value": {"x": 20.0, "y": 30.0, "width": 0.5, "keypointlabels": ["Text"]},
    },
    {
        "id": "g1",
        "from_name": "poly",
        "to_name": "image",
        "type": "polygonlabels",
        "value": {"points": [[10, 10], [30, 10], [20, 40]], "polygonlabels": ["Text"]},
    },
    "not an item",
    {"id": "m1", "from_name": "label", "to_name": "image", "type": "rectanglelabels"},
    {
        "id": "m2",
        "from_name": "label",
        "to_name": "image",
        "type": "rectanglelabels",
        "value": {"x": "ten", "y": 20, "width": 30, "height": 15, "rectanglelabels": ["Text"]},
    },
]
SKIPPED = {"relation": 1, "keypointlabels": 1, "polygonlabels": 1, "malformed": 3}


def with_unusable_items(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    tasks = copy.deepcopy(tasks)
    tasks[0]["annotations"][0]["result"] += copy.deepcopy(UNUSABLE)
    return tasks


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_unusable_items_are_skipped_and_counted(tmp_path: Path, suffix: str) -> None:
    tasks = with_unusable_items(json.loads((FIXTURES / "tasks.json").read_text(encoding="utf-8")))
    path = tmp_path / f"tasks{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(tasks), encoding="utf-8")
    else:
        path.write_text("".join(json.dumps(t) + "\n" for t in tasks), encoding="utf-8")
    read_file = read_task_file(path, CONFIG)
    assert dict(read_file.skipped_results) == SKIPPED
    assert len(read_file.tasks[0]["annotations"][0]["result"]) == 4  # the two regions' items
    stats = PairingStats()
    examples = examples_from_export(path, XML, stats=stats)
    assert dict(stats.skipped_results) == SKIPPED
    assert_same_records(records(examples), EXPECTED)


def test_unusable_items_in_a_storage_folder_are_skipped_and_counted(tmp_path: Path) -> None:
    folder = tmp_path / "storage"
    folder.mkdir()
    for file in (FIXTURES / "storage_tasks").iterdir():
        task = json.loads(file.read_text(encoding="utf-8"))
        if task["id"] == 1:
            task = with_unusable_items([task])[0]
        (folder / file.name).write_text(json.dumps(task, indent=2), encoding="utf-8")
    stats = PairingStats()
    examples = examples_from_export(folder, XML, stats=stats)
    assert dict(stats.skipped_results) == SKIPPED
    assert_same_records(records(examples), EXPECTED)


def test_an_annotation_result_that_is_not_a_list_is_skipped(tmp_path: Path) -> None:
    tasks = json.loads((FIXTURES / "tasks.json").read_text(encoding="utf-8"))
    tasks[1]["annotations"][0]["result"] = {"not": "a list"}
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps(tasks), encoding="utf-8")
    read_file = read_task_file(path, CONFIG)
    assert read_file.skipped_results == {"malformed": 1}
    assert read_file.tasks[1]["annotations"][0]["result"] == []


# -- files that are not task files ---------------------------------------------------------------
GOOD_TASK = {"id": 5, "data": {"image": "/data/local-files/?d=images/red.png"}, "annotations": []}
# name -> (file text, what the one-line message must say besides the file's path)
BAD_FILES: dict[str, tuple[str, list[str]]] = {
    "not_json": ('[{"id": 1, "data": ', ["not JSON", "expected"]),
    "a_number": ("42", ["JSON int", "expected"]),
    "strings": ('["a.png", "b.png"]', ["task 0", "JSON str", "not a task", "expected"]),
    "no_data": (
        json.dumps([GOOD_TASK, {"id": 8, "annotations": []}]),
        ["task 1 (id 8)", 'no "data"', "expected"],
    ),
    "image_not_string": (
        json.dumps([{"id": 9, "data": {"image": 5}}]),
        ["task 0 (id 9)", "data['image']", "int", "expected the image's URL or path"],
    ),
    "annotations_not_list": (
        json.dumps([GOOD_TASK, {"id": 10, "data": {"image": "a.png"}, "annotations": {"id": 1}}]),
        ["task 1 (id 10)", '"annotations" is a dict', "expected a list"],
    ),
    "bad_json_line": (
        json.dumps(GOOD_TASK) + "\n" + '{"id": 6, "data": \n',
        ["line 2", "not JSON", "expected"],
    ),
}


def bad_file(tmp_path: Path, name: str) -> tuple[Path, list[str]]:
    text, says = BAD_FILES[name]
    path = tmp_path / f"{name}.json"
    path.write_text(text, encoding="utf-8")
    return path, says


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_a_bad_file_is_refused_in_one_line(tmp_path: Path, name: str) -> None:
    path, says = bad_file(tmp_path, name)
    with pytest.raises(TaskFileError) as raised:
        read_task_file(path, CONFIG)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(str(path)), message
    for part in says:
        assert part in message, (part, message)
    with pytest.raises(TaskFileError):
        examples_from_export(path, XML)


def test_a_bad_file_in_a_folder_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "storage"
    folder.mkdir()
    (folder / "1").write_text(json.dumps(GOOD_TASK), encoding="utf-8")
    (folder / "2").write_text(json.dumps({"id": 7, "annotations": []}), encoding="utf-8")
    with pytest.raises(TaskFileError) as raised:
        read_task_file(folder, CONFIG)
    message = str(raised.value)
    assert "\n" not in message
    assert str(folder / "2") in message and "(id 7)" in message and 'no "data"' in message


# -- through the command line ------------------------------------------------------------------
@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A clean environment for ``varco-labeler``: its store under tmp_path, no Label Studio."""
    for name in ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "VARCO_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "model-dir"))
    config = tmp_path / "config.xml"
    config.write_text(XML, encoding="utf-8")
    return config


def error_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_export_and_report_refuse_a_bad_file(
    tmp_path: Path, cli_env: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    path, says = bad_file(tmp_path, name)
    out = tmp_path / "out"
    argv = ["export", str(path), "--label-config", str(cli_env), "--format", "trl-sft"]
    assert cli.main([*argv, "--out", str(out)]) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert str(path) in lines[0] and says[0] in lines[0], lines
    assert not out.exists() or not any(out.iterdir()), sorted(out.iterdir())

    assert cli.main(["report", str(path), "--label-config", str(cli_env)]) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert str(path) in lines[0] and says[0] in lines[0], lines


def test_report_refuses_json_min(
    cli_env: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    report = tmp_path / "report.json"
    argv = ["report", str(FIXTURES / "tasks_min.json"), "--label-config", str(cli_env)]
    assert cli.main([*argv, "--json", str(report)]) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "JSON_MIN" in lines[0] and "no predictions" in lines[0], lines
    assert not report.exists()


def test_a_preference_export_refuses_json_min(
    cli_env: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "dpo"
    argv = ["export", str(FIXTURES / "tasks_min.json"), "--label-config", str(cli_env)]
    assert cli.main([*argv, "--format", "trl-dpo", "--out", str(out)]) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and "JSON_MIN" in lines[0], lines
    assert not out.exists() or not any(out.iterdir())


def test_sft_export_reads_json_min(
    cli_env: Path,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The committed JSON_MIN file with its images made local files (no Label Studio to serve
    /data/local-files/ here)."""
    images = tmp_path / "images"
    images.mkdir()
    records = json.loads((FIXTURES / "tasks_min.json").read_text(encoding="utf-8"))
    for record in records:
        name = record["image"].rsplit("/", 1)[-1]
        colour = (220, 30, 30) if name == "red.png" else (30, 30, 220)
        Image.new("RGB", (48, 40), colour).save(images / name)
        record["image"] = str(images / name)
    path = tmp_path / "tasks_min.json"
    path.write_text(json.dumps(records, indent=2), encoding="utf-8")
    monkeypatch.setenv("VARCO_LOCAL_IMAGE_ROOTS", str(images))
    out = tmp_path / "sft"
    argv = ["export", str(path), "--label-config", str(cli_env), "--format", "trl-sft"]
    assert cli.main([*argv, "--out", str(out), "--val-fraction", "0"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["written"]["train"] == 2, summary
    assert summary["image_errors"] == [], summary
    assert summary["model_versions"] == {"none": 2}, summary
    assert (out / "README.md").exists()


@pytest.mark.parametrize(
    ("name", "like", "tasks"),
    [("task_1.json", "tasks.json", [1]), ("tasks_completions.json", "tasks.json", [1, 2])],
)
def test_a_single_task_and_a_completions_file_report_like_their_equivalents(
    name: str, like: str, tasks: list[int], tmp_path: Path
) -> None:
    from varco_labeler.feedback.commands import run_report
    from varco_labeler.settings import Settings

    config = tmp_path / "config.xml"
    config.write_text(XML, encoding="utf-8")
    settings = Settings(model_dir=tmp_path / "store")
    reports = {}
    for source in (name, like):
        path = FIXTURES / source
        if source == like and tasks != [1, 2]:  # the same tasks on both sides
            path = tmp_path / like
            kept = [t for t in json.loads((FIXTURES / like).read_text()) if t["id"] in tasks]
            path.write_text(json.dumps(kept), encoding="utf-8")
        reports[source], _ = run_report(str(path), label_config=config, settings=settings)
    # The same figures, but for the time: the completions fixture records lead times (12.5 s),
    # the JSON export's do not.
    figures = {
        source: {v: {k: x for k, x in d.items() if k != "time"} for v, d in r["versions"].items()}
        for source, r in reports.items()
    }
    assert figures[name] == figures[like]
    assert reports[name]["versions"]["v1"]["tasks"] == 1
