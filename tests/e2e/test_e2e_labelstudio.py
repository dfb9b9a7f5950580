"""Our backend against a real Label Studio 1.23.2, driven only through Label Studio's own API.

A grounding project (Cat, Dog) and an OCR project (Text + per-region TextArea) get image tasks
both as uploads (/data/upload/...) and as local files (/data/local-files/?d=..., through a Local
Storage + sync); our backend is connected as the projects' ML backend; "Retrieve predictions" is
triggered the way the Data Manager does it (POST /api/dm/actions?id=retrieve_tasks_predictions);
then the predictions Label Studio STORED are checked. The tiny model answers RED grounding with
"red cat" (0.1, 0.2, 0.5, 0.9), BLUE with "two dogs" (two boxes), RED OCR with STOP and BLUE OCR
with EXIT (varco_labeler.engine.tiny).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import CAT_DOG_CONFIG
from PIL import Image

# The fixtures' types (conftest.LabelStudioServer, conftest.BackendServer) are annotated as Any:
# a conftest outside a package cannot be imported by name.
BackendServer = LabelStudioServer = Any

BIN = Path(sys.executable).parent

# The colours engine.tiny taught the model (copied so the helpers need not import torch).
RED, BLUE = (220, 30, 30), (30, 30, 220)
SIZE = (48, 40)  # engine.tiny.solid_image's default

GROUNDING_CONFIG = CAT_DOG_CONFIG

OCR_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <RectangleLabels name="bbox" toName="image">
    <Label value="Text"/>
  </RectangleLabels>
  <TextArea name="transcription" toName="image" editable="true" perRegion="true"/>
</View>"""

# Expected regions in percent of the image: (label, x, y, width, height[, text]).
EXPECTED_GROUNDING = {
    "red": [("Cat", 10, 20, 40, 70)],
    "blue": [("Dog", 5, 10, 35, 70), ("Dog", 60, 10, 35, 70)],
}
EXPECTED_OCR = {
    "red": [("Text", 20, 30, 60, 30, "STOP")],
    "blue": [("Text", 10, 10, 80, 30, "EXIT")],
}


def test_tiny_model_colours_match_engine() -> None:
    """The colours above are the ones the tiny model was taught (cheap to check, no model)."""
    from varco_labeler.engine import tiny

    assert (tiny.RED, tiny.BLUE, tiny.solid_image(tiny.RED).size) == (RED, BLUE, SIZE)


def png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", SIZE, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def colour_of(task: dict[str, Any]) -> str:
    """Tasks are named after their colour: .../1a2b3c4d-red.png or ?d=<dir>/blue.png."""
    image = task["data"]["image"]
    return "red" if "red" in image.rsplit("/", 1)[-1] else "blue"


class Project:
    """A Label Studio project with tasks from uploads and local files, connected to our backend."""

    def __init__(
        self,
        ls: LabelStudioServer,
        client: Any,
        backend: BackendServer,
        title: str,
        config: str,
        uploads: dict[str, tuple[int, int, int]],
        local_files: dict[str, tuple[int, int, int]],
    ) -> None:
        self.ls, self.client, self.api = ls, client, ls.api()
        self.config = config
        self.project = client.projects.create(title=title, label_config=config)
        self.id = self.project.id
        # Uploads, as the import dialog sends them: multipart files -> /data/upload/<id>/...
        files = [
            (f"file{i}", (name, png(c), "image/png")) for i, (name, c) in enumerate(uploads.items())
        ]
        response = self.api.post(f"/api/projects/{self.id}/import", files=files)
        assert response.status_code == 201, response.text
        assert response.json()["task_count"] == len(uploads)
        # Local files: a folder under the document root, a Local Storage on it, then sync.
        folder = ls.document_root / f"project-{self.id}"
        folder.mkdir()
        for name, colour in local_files.items():
            (folder / name).write_bytes(png(colour))
        storage = client.import_storage.local.create(
            project=self.id,
            path=str(folder),
            regex_filter=r".*\.png",
            use_blob_urls=True,  # one task per file, data.image = /data/local-files/?d=...
            title="local images",
        )
        synced = client.import_storage.local.sync(id=storage.id)
        assert synced.status == "completed", synced
        self.tasks = self.all_tasks()
        assert len(self.tasks) == len(uploads) + len(local_files)
        kinds = sorted(t["data"]["image"].split("?")[0].split("/")[2] for t in self.tasks)
        assert kinds == sorted(["upload"] * len(uploads) + ["local-files"] * len(local_files))
        # Connect our backend, as Settings > Model > Connect model does.
        self.ml = client.ml.create(
            project=self.id, url=backend.url, title="VARCO-VISION", is_interactive=True
        )

    def all_tasks(self) -> list[dict[str, Any]]:
        response = self.api.get("/api/tasks", params={"project": self.id, "page_size": 1000})
        assert response.status_code == 200, response.text
        body = response.json()
        return body["tasks"] if isinstance(body, dict) else body

    def retrieve_predictions(self) -> dict[str, Any]:
        """Data Manager > select all > Actions > Retrieve predictions (one blocking request)."""
        response = self.api.post(
            "/api/dm/actions",
            params={"id": "retrieve_tasks_predictions", "project": self.id},
            json={"selectedItems": {"all": True, "excluded": []}, "project": str(self.id)},
        )
        assert response.status_code == 200, response.text
        return response.json()

    def predictions_by_task(self) -> dict[int, list[Any]]:
        by_task: dict[int, list[Any]] = {}
        for prediction in self.client.predictions.list(project=self.id):
            by_task.setdefault(prediction.task, []).append(prediction)
        return by_task


@pytest.fixture(scope="module")
def our_version(backend: BackendServer) -> str:
    """What our /setup answers, as Label Studio sees it."""
    response = httpx.post(
        f"{backend.url}/setup", json={"project": "1.0", "schema": GROUNDING_CONFIG}, timeout=10
    )
    assert response.status_code == 200, response.text
    return response.json()["model_version"]


@pytest.fixture(scope="module")
def grounding(label_studio, ls_client, backend) -> Project:
    return Project(
        label_studio,
        ls_client,
        backend,
        "VARCO grounding e2e",
        GROUNDING_CONFIG,
        uploads={"red.png": RED, "blue.png": BLUE},
        local_files={"red.png": RED, "blue.png": BLUE},
    )


@pytest.fixture(scope="module")
def ocr(label_studio, ls_client, backend) -> Project:
    return Project(
        label_studio,
        ls_client,
        backend,
        "VARCO OCR e2e",
        OCR_CONFIG,
        uploads={"red.png": RED},
        local_files={"blue.png": BLUE},
    )


def test_backend_connects_with_its_webhook(grounding: Project, our_version: str, backend) -> None:
    ml = grounding.client.ml.get(id=grounding.ml.id)
    assert ml.state == "CO", (ml.state, ml.error_message, ml.readable_state)
    assert ml.is_interactive
    # Label Studio asked /setup on connect and kept the version it returned.
    assert ml.model_version == our_version
    hooks = grounding.api.get("/api/webhooks/", params={"project": grounding.id}).json()
    ours = [h for h in hooks if h["url"] == f"{backend.url}/webhook"]
    assert ours, hooks
    assert ours[0]["send_for_all_actions"] and ours[0]["send_payload"] and ours[0]["is_active"]


def _check_predictions(project: Project, expected: dict[str, list[tuple]], version: str) -> None:
    by_task = project.predictions_by_task()
    assert set(by_task) == {t["id"] for t in project.tasks}, "every task got a prediction"
    for task in project.tasks:
        colour = colour_of(task)
        (prediction,) = by_task[task["id"]]
        assert prediction.model_version == version
        assert prediction.score is not None and 0 < prediction.score <= 1
        boxes = [r for r in prediction.result if r["type"] == "rectanglelabels"]
        texts = {r["id"]: r for r in prediction.result if r["type"] == "textarea"}
        got = []
        for box in boxes:
            value = box["value"]
            assert (box["original_width"], box["original_height"]) == SIZE
            assert box["to_name"] == "image" and value["rotation"] == 0
            assert box["score"] is not None and 0 < box["score"] <= 1
            region = (value["rectanglelabels"][0], value["x"], value["y"])
            region += (value["width"], value["height"])
            if expected[colour][0][5:]:  # OCR: the text item shares the rectangle's id
                text = texts.pop(box["id"])
                assert text["from_name"] == "transcription" and text["to_name"] == "image"
                assert {k: text["value"][k] for k in ("x", "y", "width", "height")} == {
                    k: value[k] for k in ("x", "y", "width", "height")
                }
                region += (text["value"]["text"][0],)
            got.append(region)
        assert not texts, f"textarea items without a rectangle: {texts}"
        want = sorted(expected[colour])
        assert len(got) == len(want), (task["data"], prediction.result)
        for have, wanted in zip(sorted(got), want, strict=True):
            assert have[0] == wanted[0] and have[5:] == wanted[5:], (task["data"], have)
            assert have[1:5] == pytest.approx(wanted[1:5], abs=1e-6), (task["data"], have)


def test_retrieve_predictions_grounding(grounding: Project, our_version: str) -> None:
    started = time.monotonic()
    answer = grounding.retrieve_predictions()
    print(f"\n[e2e] retrieve predictions, 4 grounding tasks: {time.monotonic() - started:.2f} s")
    assert answer["processed_items"] == 4, answer
    _check_predictions(grounding, EXPECTED_GROUNDING, our_version)


def test_retrieve_predictions_ocr(ocr: Project, our_version: str) -> None:
    answer = ocr.retrieve_predictions()
    assert answer["processed_items"] == 2, answer
    _check_predictions(ocr, EXPECTED_OCR, our_version)


def test_a_failed_task_gets_no_prediction_and_the_rest_are_stored(
    label_studio, ls_client, backend, our_version: str
) -> None:
    """One task's image cannot be fetched (a host not allowed): we answer [] for it, Label Studio
    stores nothing for that task and keeps the others' predictions (the batch is not lost)."""
    mixed = Project(
        label_studio,
        ls_client,
        backend,
        "VARCO mixed e2e",
        GROUNDING_CONFIG,
        uploads={"red.png": RED},
        local_files={},
    )
    bad = mixed.client.projects.import_tasks(
        mixed.id, request=[{"image": "http://images.invalid/red.png"}], return_task_ids=True
    )
    (bad_id,) = bad.task_ids
    answer = mixed.retrieve_predictions()
    assert answer["processed_items"] == 2, answer
    by_task = mixed.predictions_by_task()
    assert bad_id not in by_task
    (good,) = [t for t in mixed.all_tasks() if t["id"] != bad_id]
    (prediction,) = by_task[good["id"]]
    assert prediction.model_version == our_version
    assert prediction.result[0]["value"]["rectanglelabels"] == ["Cat"]
    health = httpx.get(f"{backend.url}/health", timeout=5).json()
    assert "images.invalid" in (health["last_problem"] or ""), health


def _drawn_rectangle(**value: Any) -> dict[str, Any]:
    return {
        "id": "drawnByUser1",
        "from_name": "bbox",
        "to_name": "image",
        "type": "rectanglelabels",
        "original_width": SIZE[0],
        "original_height": SIZE[1],
        "image_rotation": 0,
        "origin": "manual",
        "value": {"rotation": 0, "rectanglelabels": ["Text"], **value},
    }


def test_interactive_prediction_for_a_drawn_rectangle(ocr: Project, our_version: str) -> None:
    """The editor's smart tool: LS posts the drawn region to /api/ml/{id}/interactive-annotating,
    forwards it to our /predict as params.context, and hands results[0] back to the editor."""
    task = ocr.tasks[0]
    drawn = _drawn_rectangle(x=20.0, y=30.0, width=60.0, height=30.0)
    response = ocr.api.post(
        f"/api/ml/{ocr.ml.id}/interactive-annotating",
        json={"task": task["id"], "context": {"result": [drawn]}},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert "errors" not in body, body
    data = body["data"]
    assert data["model_version"] == our_version
    by_type = {r["type"]: r for r in data["result"]}
    assert set(by_type) == {"rectanglelabels", "textarea"}, data
    box, text = by_type["rectanglelabels"], by_type["textarea"]
    # The answer is attached to the region the user drew: same id, same place, same label.
    assert box["id"] == text["id"] == drawn["id"]
    for key in ("x", "y", "width", "height"):
        assert box["value"][key] == pytest.approx(drawn["value"][key])
        assert text["value"][key] == pytest.approx(drawn["value"][key])
    assert box["value"]["rectanglelabels"] == ["Text"]
    assert text["from_name"] == "transcription"
    assert isinstance(text["value"]["text"], list) and len(text["value"]["text"]) == 1


def test_interactive_is_refused_when_the_backend_is_not_interactive(ocr: Project) -> None:
    """Label Studio answers 200 with ``errors`` (never reaching us) when interactive is off."""
    # LS 1.23.2 re-runs /health and /setup with only the PATCH's own fields: a PATCH without
    # "url" and "project" answers 500 ("MLBackend.healthcheck_() missing 1 required positional
    # argument: 'url'"). The UI always sends the whole object.
    ocr.client.ml.update(id=ocr.ml.id, url=ocr.ml.url, project=ocr.id, is_interactive=False)
    try:
        response = ocr.api.post(
            f"/api/ml/{ocr.ml.id}/interactive-annotating",
            json={
                "task": ocr.tasks[0]["id"],
                "context": {"result": [_drawn_rectangle(x=1.0, y=1.0, width=10.0, height=10.0)]},
            },
        )
        assert response.status_code == 200
        assert response.json()["errors"], response.json()
    finally:
        ocr.client.ml.update(id=ocr.ml.id, url=ocr.ml.url, project=ocr.id, is_interactive=True)


class Received:
    """What our backend kept of Label Studio's webhooks: the feedback store under MODEL_DIR."""

    def __init__(self, backend: BackendServer) -> None:
        from varco_labeler.feedback.store import FeedbackStore

        self.store = FeedbackStore(model_dir=backend.model_dir)

    def events(self) -> list[tuple[str, list[int]]]:
        """(action, annotation ids) of every webhook read back, in order."""
        from sqlalchemy import select

        from varco_labeler.feedback.store import EventRow, EventState

        query = (
            select(EventRow.action, EventRow.annotation_ids)
            .where(EventRow.state == EventState.APPLIED)
            .order_by(EventRow.id)
        )
        with self.store.engine.connect() as conn:
            return [(action, ids or []) for action, ids in conn.execute(query)]

    def wait_for(self, action: str, annotation_id: int, timeout: float = 10.0) -> None:
        """Until the webhook came and what it names was read back from Label Studio."""
        deadline = time.monotonic() + timeout
        while (action, annotation_id) not in {(a, i) for a, ids in self.events() for i in ids}:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no {action} webhook for annotation {annotation_id} within {timeout} s; "
                    f"received: {self.events()}"
                )
            time.sleep(0.2)

    def annotations(self, project: int) -> dict[int, dict[str, Any]]:
        """The stored annotations (not deleted) of a project, by id, with their task's data."""
        return {
            annotation["id"]: {**annotation, "task_data": task.data, "config": task.label_config}
            for task in self.store.tasks(project)
            for annotation in task.annotations
        }


def test_annotation_webhooks_reach_the_backend(ocr: Project, backend: BackendServer) -> None:
    """Submit, update, skip and delete annotations: each webhook reaches our backend, which keeps
    the latest version of every annotation (with its task and label config) for training data."""
    received = Received(backend)
    red = next(t for t in ocr.tasks if colour_of(t) == "red")
    blue = next(t for t in ocr.tasks if colour_of(t) == "blue")
    box = _drawn_rectangle(x=20.0, y=30.0, width=60.0, height=30.0)
    value = {"x": 20.0, "y": 30.0, "width": 60.0, "height": 30.0, "rotation": 0}
    text = {**box, "from_name": "transcription", "type": "textarea"}
    text["value"] = {**value, "text": ["STOP"]}

    created = ocr.client.annotations.create(red["id"], result=[box, text], lead_time=3.5)
    received.wait_for("ANNOTATION_CREATED", created.id)
    stored = received.annotations(ocr.id)[created.id]
    assert stored["result"] == [box, text]
    assert stored["task"] == red["id"] and stored["task_data"] == red["data"]
    assert "TextArea" in (stored["config"] or "")
    assert not stored["was_cancelled"] and stored["lead_time"] == pytest.approx(3.5)

    corrected = {**text, "value": {**value, "text": ["STOP!"]}}
    ocr.client.annotations.update(created.id, result=[box, corrected])
    received.wait_for("ANNOTATION_UPDATED", created.id)
    stored = received.annotations(ocr.id)[created.id]
    assert [r["value"]["text"] for r in stored["result"] if r["type"] == "textarea"] == [["STOP!"]]

    skipped = ocr.client.annotations.create(blue["id"], result=[], was_cancelled=True)
    received.wait_for("ANNOTATION_CREATED", skipped.id)
    assert received.annotations(ocr.id)[skipped.id]["was_cancelled"] is True

    ocr.client.annotations.delete(id=skipped.id)
    received.wait_for("ANNOTATIONS_DELETED", skipped.id)
    assert skipped.id not in received.annotations(ocr.id)
    assert created.id in received.annotations(ocr.id)
    received.store.close()


def test_corrections_export_from_the_live_project_and_from_the_store(
    ocr: Project, backend: BackendServer, our_env: dict[str, str], tmp_path
) -> None:
    """The correction above ("STOP" -> "STOP!") becomes one preference pair, whether read from
    Label Studio's snapshot export (full prediction objects) or from the backend's own store."""
    env = our_env | {"MODEL_DIR": str(backend.model_dir)}
    sources = {"live": ["label-studio", "--project", str(ocr.id)], "store": ["store"]}
    for name, source in sources.items():
        out = tmp_path / name
        done = subprocess.run(
            [
                str(BIN / "varco-labeler"),
                "export",
                *source,
                "--format",
                "llava-dpo",
                "--out",
                str(out),
                "--val-fraction",
                "0",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        (record,) = json.loads((out / "train.json").read_text())
        assert record["chosen"].startswith("<char>STOP!</char><bbox>0.2, 0.3, 0.8, 0.6</bbox>")
        assert record["rejected"].startswith("<char>STOP</char><bbox>0.2, 0.3, 0.8, 0.6</bbox>")
        assert (out / record["image"]).is_file(), "the export must carry its image"
    report = subprocess.run(
        [str(BIN / "varco-labeler"), "report", "--project", str(ocr.id)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert report.returncode == 0, report.stderr
    assert "varco-tiny-e2e" in report.stdout


def test_backend_kept_the_predictions_label_studio_stored(
    grounding: Project, ocr: Project, backend: BackendServer
) -> None:
    """Training pairs need our own record of each prediction under Label Studio's task id."""
    received = Received(backend)
    ours = received.store.predictions_by_task()
    received.store.close()
    for project in (grounding, ocr):
        for task_id, (prediction,) in project.predictions_by_task().items():
            kept = [p for p in ours.get(task_id, []) if p["result"] == prediction.result]
            assert kept, f"task {task_id}: ours {ours.get(task_id)}, LS {prediction.result}"
            assert kept[0]["model_version"] == prediction.model_version
            assert kept[0]["project"] == project.id and kept[0]["raw"]


def test_backend_health_after_the_session(backend: BackendServer, grounding, ocr) -> None:
    """Nothing else went wrong on our side: only the one deliberate failure, all else predicted."""
    health = httpx.get(f"{backend.url}/health", timeout=5).json()
    assert health["status"] == "UP", health
    assert health["mode"] == "embedded"
    assert health["tasks"].get("failed", 0) == 1, health  # the images.invalid task
    assert "images.invalid" in (health["last_problem"] or ""), health
    # 4 grounding + 2 OCR + 1 mixed batch predictions and one interactive prediction.
    assert health["tasks"].get("predicted", 0) >= 8, health
    log = backend.service.log_text()
    assert "Traceback" not in log, log[-3000:]
