"""One path from task to prediction, against a real Label Studio 1.23.2.

- ``prelabel --project`` through the queue, with a worker running the OCR specialist's profile,
  pushes word regions; a command that would pre-label under another version than the workers'
  is refused.
- With ``extra_params`` set on the connected model, ``prelabel --project`` and "Retrieve
  predictions" store the same results for the same tasks.
- After ``prelabel --project`` and an annotation, the store gives the DPO pair and the report
  counts it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from helpers import GREEN, OCR_PROFILE
from processes import Processes, RedisProcess
from projects import connect, make_project, varco

from varco_labeler.feedback.store import FeedbackStore
from varco_labeler.labelstudio.templates import label_config

OCR_CONFIG = label_config("ocr", ["Text", "Handwriting"])
# An OCR project (its regions have text) that the model settings turn into grounding, with a
# fallback label for phrases that match none ("red cat") and a minimum score.
POLICY_CONFIG = label_config("ocr", ["Dog", "Other"])
EXTRA_PARAMS = {"task": "grounding", "fallback_label": "Other", "min_score": 0.5}


def results_by_image(ls_client: Any, project: int) -> dict[str, list[list[tuple]]]:
    """Each image's predictions as (type, labels or text, geometry, score) per result item,
    without the ids (they are seeded by the image reference, which differs between projects)."""
    tasks = {
        t.id: t.data["image"].rsplit("/", 1)[-1] for t in ls_client.tasks.list(project=project)
    }
    by_image: dict[str, list[list[tuple]]] = {}
    for prediction in ls_client.predictions.list(project=project):
        items = []
        for item in prediction.result:
            value = dict(item["value"])
            geometry = tuple(round(value.pop(k), 4) for k in ("x", "y", "width", "height"))
            value.pop("rotation", None)
            items.append((item["type"], json.dumps(value), geometry, round(item["score"], 4)))
        by_image.setdefault(tasks[prediction.task], []).append(sorted(items))
    return by_image


def test_prelabel_project_on_the_ocr_specialist_pushes_words(
    label_studio, ls_client, our_env, ocr_specialist_dir, tmp_path
) -> None:
    project = make_project(label_studio, ls_client, "OCR specialist", 3, OCR_CONFIG, {"g": GREEN})
    redis = RedisProcess(tmp_path)
    redis.start()
    processes = Processes(our_env | {"MODEL_DIR": str(tmp_path / "worker-dir")}, tmp_path)
    try:
        specialist = {"VARCO_MODEL": str(ocr_specialist_dir), "VARCO_PROFILE": OCR_PROFILE}
        processes.worker(redis.url, "ocr-gpu", **specialist)
        env = our_env | {"REDIS_URL": redis.url, "MODEL_DIR": str(tmp_path / "cli-dir")}

        refused = varco(env, "prelabel", "--project", str(project))  # VARCO_MODEL: another model
        assert refused.returncode == 2, refused.stderr
        assert "pre-label as 'varco-tiny-e2e' but the workers run 'tiny-ocr'" in refused.stderr
        assert not list(ls_client.predictions.list(project=project))

        del env["VARCO_MODEL"]  # the workers' version is the run's
        done = varco(env, "prelabel", "--project", str(project))
        assert done.returncode == 0, done.stderr
        assert "done 3, skipped 0 (already predicted), failed 0" in done.stderr
    finally:
        processes.stop_all()
        redis.stop()
    predictions = list(ls_client.predictions.list(project=project))
    assert len(predictions) == 3
    for prediction in predictions:
        assert prediction.model_version == "tiny-ocr"
        texts = sorted(r["value"]["text"][0] for r in prediction.result if r["type"] == "textarea")
        assert texts == ["GO", "HI"]
        assert all(0 < r["score"] <= 1 for r in prediction.result)
    # The prelabel process recorded what its workers predicted; the workers have no database.
    store = FeedbackStore(model_dir=tmp_path / "cli-dir")
    recorded = store.predictions()
    store.close()
    assert sorted(p["task"] for p in recorded) == sorted(p.task for p in predictions)
    assert {p["model_version"] for p in recorded} == {"tiny-ocr"}
    assert all(sorted(r["text"] for r in p["regions"]) == ["GO", "HI"] for p in recorded)
    assert not (tmp_path / "worker-dir").exists()


@pytest.fixture(scope="module")
def twin_projects(label_studio, ls_client, backend, our_env) -> Iterator[tuple[int, int]]:
    """Two projects with the same tasks and model settings: one pre-labelled by "Retrieve
    predictions", the other by ``prelabel --project`` into the backend's own store."""
    retrieved = make_project(label_studio, ls_client, "policy: retrieve", 4, POLICY_CONFIG)
    prelabelled = make_project(label_studio, ls_client, "policy: prelabel", 4, POLICY_CONFIG)
    for project in (retrieved, prelabelled):
        connect(ls_client, project, backend.url, extra_params=EXTRA_PARAMS)
    answer = label_studio.api().post(
        "/api/dm/actions",
        params={"id": "retrieve_tasks_predictions", "project": retrieved},
        json={"selectedItems": {"all": True, "excluded": []}, "project": str(retrieved)},
    )
    assert answer.status_code == 200, answer.text
    env = our_env | {"MODEL_DIR": str(backend.model_dir)}
    done = varco(env, "prelabel", "--project", str(prelabelled))
    assert done.returncode == 0, done.stderr
    assert "done 4, skipped 0 (already predicted), failed 0" in done.stderr
    yield retrieved, prelabelled


def test_prelabel_and_retrieve_predictions_store_the_same_results(
    twin_projects, ls_client, backend
) -> None:
    retrieved, prelabelled = twin_projects
    by_retrieve = results_by_image(ls_client, retrieved)
    assert by_retrieve == results_by_image(ls_client, prelabelled)
    # The project's model settings were applied: grounding, with the fallback label.
    expected = {"red.png": [["Other"]], "blue.png": [["Dog"], ["Dog"]]}
    assert by_retrieve.keys() == expected.keys()
    for image, predictions in by_retrieve.items():
        assert len(predictions) == 2  # two tasks of each colour
        for prediction in predictions:
            labels = [json.loads(item[1])["rectanglelabels"] for item in prediction]
            assert labels == expected[image], (image, prediction)
    # One model version, named the same by the backend and by prelabel.
    version = httpx.get(f"{backend.url}/health", timeout=5).json()["model_version"]
    for project in (retrieved, prelabelled):
        assert {p.model_version for p in ls_client.predictions.list(project=project)} == {version}
    store = FeedbackStore(model_dir=backend.model_dir)
    recorded = store.predictions()
    store.close()
    projects = {p["project"] for p in recorded}
    assert {retrieved, prelabelled} <= projects
    for project in (retrieved, prelabelled):
        mine = [p for p in recorded if p["project"] == project]
        assert len(mine) == 4 and {p["task_kind"] for p in mine} == {"grounding"}


def test_an_annotation_on_a_prelabelled_task_gives_a_dpo_pair_and_counts_in_the_report(
    twin_projects, ls_client, backend, our_env, tmp_path
) -> None:
    _, project = twin_projects
    blue = next(t for t in ls_client.tasks.list(project=project) if "blue" in t.data["image"])
    (prediction,) = [p for p in ls_client.predictions.list(project=project) if p.task == blue.id]
    kept = [item for item in prediction.result if item["type"] == "rectanglelabels"][:1]
    annotation = ls_client.annotations.create(blue.id, result=kept, lead_time=2.0)  # one dog
    store = FeedbackStore(model_dir=backend.model_dir)
    deadline = time.monotonic() + 10
    while annotation.id not in {a["id"] for t in store.tasks(project) for a in t.annotations}:
        assert time.monotonic() < deadline, "the annotation's webhook did not reach the backend"
        time.sleep(0.2)
    store.close()

    env = our_env | {"MODEL_DIR": str(backend.model_dir)}
    out = tmp_path / "dpo"
    exported = varco(
        env, "export", "store", "--project", str(project), "--format", "trl-dpo",
        "--out", str(out), "--val-fraction", "0",
    )  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    assert json.loads(exported.stdout)["written"]["train"] == 1
    datasets = pytest.importorskip("datasets")
    (pair,) = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "cache"))["train"]
    chosen, rejected = (pair[k][0]["content"][0]["text"] for k in ("chosen", "rejected"))
    assert chosen.count("<bbox>") == 1 and chosen.count("<delim>") == 0  # the annotation
    assert rejected.count("<delim>") == 1  # the pre-label: two dogs

    report = varco(env, "report", "store", "--project", str(project), "--json", str(tmp_path / "r"))
    assert report.returncode == 0, report.stderr
    version = json.loads((tmp_path / "r").read_text())["versions"]["varco-tiny-e2e"]
    assert version["tasks"] == 1
    assert version["effort"]["accepted"] == 1 and version["effort"]["deleted"] == 1
