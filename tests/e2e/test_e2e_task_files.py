"""The task file reader on what a real Label Studio 1.23.2 writes for one OCR project.

One project (RectangleLabels + per-region TextArea) with two local-file tasks: the red one gets an
annotation of two regions and a prediction (model_version "v1"), the blue one an annotation of one
region and a cancelled annotation. Label Studio then writes the project three ways: the ``JSON``
export, the ``JSON_MIN`` export, and a target Local Storage synced into a folder. Each is read
with :func:`read_task_file` and must give the same annotation records per task (boxes within
1e-6, labels, texts). tests/fixtures/task_files holds the same two tasks, captured this way.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from projects import make_project

from varco_labeler.feedback.pairing import PairingStats, pair_tasks
from varco_labeler.feedback.task_files import TaskFile, read_task_file
from varco_labeler.labelstudio.config import read_label_config
from varco_labeler.labelstudio.templates import label_config

XML = label_config("ocr", ["Text", "Handwriting"])
CONFIG = read_label_config(XML)
COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220)}

# (region id, x, y, width, height in percent, label, text)
RED_REGIONS = [
    ("a1", 10, 20, 30, 15, "Text", "STOP"),
    ("a2", 50.5, 60.25, 40, 12.125, "Handwriting", "GO"),
]
BLUE_REGIONS = [("b1", 5, 10, 80, 30, "Text", "EXIT")]
PREDICTED = [("p1", 10, 20, 30, 15, "Text", "STPO")]

Regions = list[tuple[tuple[float, float, float, float], str | None, str | None]]


def result(regions: list[tuple[str, float, float, float, float, str, str]]) -> list[dict[str, Any]]:
    """Each region as Label Studio's editor saves it: a rectanglelabels item and a textarea item
    that share the region's id and geometry."""
    items = []
    for region_id, x, y, width, height, label, text in regions:
        common = {
            "id": region_id,
            "to_name": "image",
            "original_width": 48,
            "original_height": 40,
            "image_rotation": 0,
        }
        geometry = {"x": x, "y": y, "width": width, "height": height, "rotation": 0}
        items.append(
            {
                **common,
                "from_name": "label",
                "type": "rectanglelabels",
                "value": {**geometry, "rectanglelabels": [label]},
            }
        )
        items.append(
            {
                **common,
                "from_name": "transcription",
                "type": "textarea",
                "value": {**geometry, "text": [text]},
            }
        )
    return items


def expected(regions: list[tuple[str, float, float, float, float, str, str]]) -> Regions:
    return [
        ((x / 100, y / 100, (x + w) / 100, (y + h) / 100), label, text)
        for _, x, y, w, h, label, text in regions
    ]


@dataclass
class Written:
    """The project as Label Studio wrote it."""

    project: int
    tasks: dict[str, int]  # colour -> task id
    annotations: dict[str, list[int]]  # colour -> annotation ids, cancelled last
    prediction: int
    json_export: Path
    json_min_export: Path
    storage: Path


@pytest.fixture(scope="module")
def written(label_studio: Any, ls_client: Any) -> Iterator[Written]:
    project = make_project(label_studio, ls_client, "task files", 2, XML, COLOURS)
    api = label_studio.api()
    listed = api.get("/api/tasks", params={"project": project, "page_size": 100})
    assert listed.status_code == 200, listed.text
    tasks = {
        ("red" if "red.png" in t["data"]["image"] else "blue"): t["id"]
        for t in listed.json()["tasks"]
    }
    assert sorted(tasks) == ["blue", "red"], tasks
    prediction = ls_client.predictions.create(
        task=tasks["red"], result=result(PREDICTED), model_version="v1", score=0.5
    )
    red = ls_client.annotations.create(tasks["red"], result=result(RED_REGIONS))
    blue = ls_client.annotations.create(tasks["blue"], result=result(BLUE_REGIONS))
    cancelled = ls_client.annotations.create(tasks["blue"], result=[], was_cancelled=True)

    out = Path(tempfile.mkdtemp(prefix="task-files-", dir=label_studio.document_root))
    exports = {}
    for kind in ("JSON", "JSON_MIN"):
        response = api.get(
            f"/api/projects/{project}/export",
            params={"exportType": kind, "download_all_tasks": "true"},
        )
        assert response.status_code == 200, (kind, response.text[:500])
        exports[kind] = out / f"{kind.lower()}.json"
        exports[kind].write_bytes(response.content)

    storage = out / "storage"
    storage.mkdir()
    created = api.post(
        "/api/storages/export/localfiles",
        json={"project": project, "path": str(storage), "title": "task files"},
    )
    assert created.status_code == 201, created.text
    synced = api.post(f"/api/storages/export/localfiles/{created.json()['id']}/sync")
    assert synced.status_code == 200, synced.text
    assert synced.json()["status"] == "completed", synced.json()
    api.close()
    yield Written(
        project=project,
        tasks=tasks,
        annotations={"red": [red.id], "blue": [blue.id, cancelled.id]},
        prediction=prediction.id,
        json_export=exports["JSON"],
        json_min_export=exports["JSON_MIN"],
        storage=storage,
    )


def annotation_records(read: TaskFile) -> dict[int, tuple[int | None, Regions]]:
    """Task id -> (the annotation pairing chose, its regions)."""
    examples = pair_tasks(read.tasks, CONFIG, "e2e", PairingStats())
    return {
        example.task_id: (
            example.annotation_id,
            [(region.box.as_tuple(), region.label, region.text) for region in example.regions],
        )
        for example in examples
        if example.task_id is not None
    }


def assert_records(read: TaskFile, written: Written) -> None:
    got = annotation_records(read)
    want = {
        written.tasks["red"]: (written.annotations["red"][0], expected(RED_REGIONS)),
        written.tasks["blue"]: (written.annotations["blue"][0], expected(BLUE_REGIONS)),
    }
    assert sorted(got) == sorted(want), (read.path, got)
    for task_id, (annotation_id, regions) in want.items():
        got_annotation, got_regions = got[task_id]
        assert got_annotation == annotation_id, (read.path, task_id)
        assert len(got_regions) == len(regions), (read.path, got_regions)
        for (box, label, text), (want_box, want_label, want_text) in zip(
            got_regions, regions, strict=True
        ):
            assert box == pytest.approx(want_box, abs=1e-6), (read.path, box, want_box)
            assert (label, text) == (want_label, want_text), read.path


def test_json_export(written: Written) -> None:
    read = read_task_file(written.json_export, CONFIG)
    assert read.shape == "json" and read.has_predictions
    assert not read.skipped_results
    by_id = {task["id"]: task for task in read.tasks}
    assert sorted(by_id) == sorted(written.tasks.values())
    # The plain export lists predictions by id; the cancelled annotation is kept (and not paired).
    assert by_id[written.tasks["red"]]["predictions"] == [written.prediction]
    blue = [a["id"] for a in by_id[written.tasks["blue"]]["annotations"]]
    assert blue == written.annotations["blue"]
    assert_records(read, written)


def test_json_min_export(written: Written) -> None:
    read = read_task_file(written.json_min_export, CONFIG)
    assert read.shape == "json-min" and read.has_predictions is False
    assert not read.skipped_results
    assert_records(read, written)


def test_json_min_is_what_the_sdk_converter_writes(written: Written, tmp_path: Path) -> None:
    """tests/fixtures/task_files/tasks_min.json was made with the SDK's converter: the same as
    Label Studio's own JSON_MIN export."""
    from label_studio_sdk.converter import Converter

    converter = Converter(XML, project_dir=None, download_resources=False)
    converter.convert_to_json_min(str(written.json_export), str(tmp_path), is_dir=False)
    ours = json.loads((tmp_path / "result.json").read_text(encoding="utf-8"))
    assert ours == json.loads(written.json_min_export.read_text(encoding="utf-8"))


def test_target_storage_layout(written: Written) -> None:
    """What Label Studio 1.23.2 writes by default: one file per annotation (cancelled included),
    named by the annotation's id without a suffix, the task nested under "task" without its
    annotations or predictions (tests/fixtures/task_files/storage mirrors it)."""
    files = {path.name: path for path in written.storage.iterdir()}
    annotation_ids = written.annotations["red"] + written.annotations["blue"]
    assert sorted(files) == sorted(str(i) for i in annotation_ids)
    for annotation_id in annotation_ids:
        record = json.loads(files[str(annotation_id)].read_text(encoding="utf-8"))
        assert record["id"] == annotation_id
        assert "data" not in record and isinstance(record["result"], list)
        assert set(record["task"]) >= {"id", "data"}
        assert not {"annotations", "predictions"} & set(record["task"])
        assert record["task"]["id"] in written.tasks.values()


def test_target_storage(written: Written) -> None:
    """A folder of per-annotation files reads as the tasks they belong to, each with all its
    annotations (as the JSON export gives them), and pairs into the same records."""
    read = read_task_file(written.storage, CONFIG)
    assert read.shape == "folder"
    assert not read.skipped_results
    by_id = {task["id"]: task for task in read.tasks}
    assert sorted(by_id) == sorted(written.tasks.values())
    for colour, task_id in written.tasks.items():
        task = by_id[task_id]
        assert task["data"]["image"].endswith(f"/{colour}.png")
        assert [a["id"] for a in task["annotations"]] == written.annotations[colour]
    assert_records(read, written)
