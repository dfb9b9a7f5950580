"""The OCR specialist's per-character answer reaches Label Studio as words, on every path.

A tiny model taught to answer like VARCO-VISION-2.0-1.7B-OCR (one ``<char>`` per character) runs
under that checkpoint's profile (VARCO_PROFILE), which merges characters into words. Each path
(``/predict`` embedded and through the queue, ``prelabel --images``, ``predict | convert``) must
give the two words with one score each, and record what it predicted.
"""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import CHARACTER_OCR, GREEN, OCR_PROFILE
from PIL import Image
from processes import BIN, Processes, RedisProcess

from varco_labeler.feedback.store import FeedbackStore
from varco_labeler.labelstudio.templates import label_config

GREEN_PATH = "/data/local-files/?d=images/green.png"
OCR_CONFIG = label_config("ocr", ["Text", "Handwriting"])
# The word boxes: the union of each word's character boxes, in percent.
WORDS = {"HI": (10.0, 20.0, 11.0, 10.0), "GO": (40.0, 20.0, 11.0, 10.0)}


@pytest.fixture
def specialist_env(ocr_specialist_dir: Path, image_host) -> dict[str, str]:
    buffer = io.BytesIO()
    Image.new("RGB", (48, 40), GREEN).save(buffer, format="PNG")
    image_host.images[GREEN_PATH] = buffer.getvalue()
    return {"VARCO_MODEL": str(ocr_specialist_dir), "VARCO_PROFILE": OCR_PROFILE}


def words(result: list[dict[str, Any]]) -> dict[str, tuple[float, ...]]:
    """Text -> (x, y, width, height) of each region; each rectangle has one text, same id."""
    boxes = {r["id"]: r for r in result if r["type"] == "rectanglelabels"}
    texts = {r["id"]: r for r in result if r["type"] == "textarea"}
    assert boxes.keys() == texts.keys(), result
    found = {}
    for region_id, box in boxes.items():
        value = box["value"]
        assert value["rectanglelabels"] == ["Text"]
        assert 0 < box["score"] <= 1 and box["score"] == texts[region_id]["score"]
        (text,) = texts[region_id]["value"]["text"]
        found[text] = tuple(round(value[k], 4) for k in ("x", "y", "width", "height"))
    return found


def recorded(model_dir: Path) -> list[dict[str, Any]]:
    store = FeedbackStore(model_dir=model_dir)
    try:
        return store.predictions()
    finally:
        store.close()


def check_record(record: dict[str, Any]) -> None:
    """The record keeps the raw character-level text and the merged word regions."""
    assert record["raw"] == CHARACTER_OCR
    assert sorted(r["text"] for r in record["regions"]) == ["GO", "HI"]
    assert record["model_version"] == "tiny-ocr" and record["task_kind"] == "ocr"
    assert (record["width"], record["height"]) == (48, 40)


@pytest.mark.parametrize("mode", ["embedded", "queue"])
def test_predict_gives_word_regions(
    mode: str, processes: Processes, specialist_env, tmp_path: Path
) -> None:
    redis = None
    if mode == "queue":
        redis = RedisProcess(tmp_path)
        redis.start()
        processes.worker(redis.url, "ocr-gpu", **specialist_env)
    try:
        # In queue mode the backend has no model of its own: profile and version are the worker's.
        backend_env = specialist_env if mode == "embedded" else {}
        url = processes.backend(redis.url if redis else None, **backend_env)
        task = {"id": 41, "data": {"image": GREEN_PATH}}
        reply = httpx.post(
            f"{url}/predict",
            json={"tasks": [task], "label_config": OCR_CONFIG, "project": "5.1"},
            timeout=120,
        )
        assert reply.status_code == 200, reply.text
        (prediction,) = reply.json()["results"]
        assert prediction["model_version"] == "tiny-ocr"
        assert words(prediction["result"]) == WORDS
        health = httpx.get(f"{url}/health").json()
        assert health["model_version"] == "tiny-ocr"
        if mode == "queue":
            assert health["worker_versions"] == {"ocr-gpu": "tiny-ocr"}
    finally:
        if redis:
            redis.stop()
    (record,) = recorded(tmp_path / "model-dir")
    check_record(record)
    assert (record["task"], record["project"]) == (41, 5)


def run(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [str(BIN / "varco-labeler"), *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return done


def test_prelabel_images_and_predict_then_convert_give_word_regions(
    specialist_env, process_env, tmp_path: Path
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (48, 40), GREEN).save(folder / "green.png")
    config = tmp_path / "config.xml"
    config.write_text(OCR_CONFIG, encoding="utf-8")
    env = process_env | specialist_env | {"MODEL_DIR": str(tmp_path / "model-dir")}

    out = tmp_path / "import.json"
    run(env, "prelabel", "--images", str(folder), "--label-config", str(config), "--out", str(out),
        "--url-prefix", "/data/local-files/?d=photos/")  # fmt: skip
    (task,) = json.loads(out.read_text())
    assert task["data"] == {"image": "/data/local-files/?d=photos/green.png"}
    (prediction,) = task["predictions"]
    assert words(prediction["result"]) == WORDS and prediction["model_version"] == "tiny-ocr"
    (record,) = recorded(tmp_path / "model-dir")  # recorded under the image the import gives
    check_record(record)
    assert record["task"] is None and record["image"] == task["data"]["image"]

    # predict's lines go into convert as they are: the words, not the characters again.
    predicted = run(env, "predict", "--task", "ocr", str(folder / "green.png")).stdout
    line = json.loads(predicted)
    assert line["raw"] == CHARACTER_OCR and line["model_version"] == "tiny-ocr"
    assert sorted(region["text"] for region in line["regions"]) == ["GO", "HI"]
    converted = run(env, "convert", "--label-config", str(config), stdin=predicted).stdout
    (task,) = json.loads(converted)
    (prediction,) = task["predictions"]
    assert words(prediction["result"]) == WORDS and prediction["model_version"] == "tiny-ocr"
