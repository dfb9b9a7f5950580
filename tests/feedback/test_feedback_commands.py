"""The CLI functions end to end on the store, and the live-project source on a stand-in client."""

from __future__ import annotations

import json
from copy import deepcopy
from pathlib import Path
from types import SimpleNamespace

from helpers import labelstudio_fixture
from PIL import Image

from varco_labeler.feedback.commands import run_export, run_report
from varco_labeler.feedback.sources import snapshot_export
from varco_labeler.feedback.store import FeedbackStore
from varco_labeler.settings import Settings


def test_export_and_report_from_the_store(tmp_path: Path) -> None:
    image = tmp_path / "images" / "a.png"
    image.parent.mkdir()
    Image.new("RGB", (64, 48), (200, 10, 10)).save(image)
    settings = Settings(model_dir=tmp_path / "model", local_image_roots=(tmp_path / "images",))
    store = FeedbackStore(model_dir=settings.model_dir)
    body = labelstudio_fixture("webhook_annotation_updated")
    body["task"]["data"]["image"] = str(image)
    store.append(body)
    prediction = deepcopy(body["annotation"]["result"])
    prediction[1]["value"]["text"] = ["HELL0"]
    store.record_prediction(
        task_id=1,
        project=1,
        image=str(image),
        prompt="<ocr>",
        task_kind="ocr",
        raw="",
        result=prediction,
        model_version="tiny-v1",
        created_at="2026-11-21T22:40:00Z",
    )  # fmt: skip  (made before the captured annotation)
    store.close()

    summary = run_export(
        "store", "llava-dpo", tmp_path / "out", val_fraction=0.0, settings=settings
    )
    assert summary["written"]["train"] == 1 and summary["pairing"]["with_prediction"] == 1
    (record,) = json.loads((tmp_path / "out" / "train.json").read_text())
    assert "HELL0" in record["rejected"] and "HELLO" in record["chosen"]
    assert (tmp_path / "out" / record["image"]).read_bytes() == image.read_bytes()

    report, table = run_report(
        "store", out_json=tmp_path / "r.json", out_html=tmp_path / "r.html", settings=settings
    )
    effort = report["versions"]["tiny-v1"]["effort"]
    assert effort["adjusted"] == 1 and effort["acceptance_rate"] == 0.0  # retyped text
    assert report["versions"]["tiny-v1"]["ocr"]["cer"] == 0.2  # HELL0 vs HELLO
    assert json.loads((tmp_path / "r.json").read_text()) == report
    assert "<svg" in (tmp_path / "r.html").read_text() and "tiny-v1" in table


class _Exports:
    """Stands in for ``LabelStudio().projects.exports``: in progress once, then completed."""

    def __init__(self, tasks: list[dict]) -> None:
        self.tasks, self.calls, self.polls = tasks, [], 0

    def create(self, id: int, **kwargs):
        self.calls.append(("create", id, kwargs))
        return SimpleNamespace(id=42)

    def get(self, id: int, export_pk: int):
        self.polls += 1
        return SimpleNamespace(status="in_progress" if self.polls == 1 else "completed")

    def download(self, id: int, export_pk: int, export_type: str):
        self.calls.append(("download", id, export_pk, export_type))
        data = json.dumps(self.tasks).encode()
        yield from (data[:10], data[10:])


def test_snapshot_export_asks_for_full_predictions() -> None:
    tasks = labelstudio_fixture("predict_interactive")["tasks"]
    exports = _Exports(tasks)
    xml = labelstudio_fixture("setup")["schema"]
    client = SimpleNamespace(
        projects=SimpleNamespace(get=lambda id: SimpleNamespace(label_config=xml), exports=exports)
    )
    got, config = snapshot_export(client, 1, sleep=lambda _: None)
    assert got == tasks and config == xml and exports.polls == 2
    options = exports.calls[0][2]["serialization_options"]
    assert options["predictions"] == {"only_id": False}
    assert exports.calls[1] == ("download", 1, 42, "JSON")
