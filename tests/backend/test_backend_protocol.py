"""Label Studio's ML backend protocol, with the requests Label Studio 1.23.2 really sent.

Every test runs twice: in the queue mode (backend + redis-server + one varco-worker process) and in
the embedded mode (the engine inside the backend process).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import CAT_DOG_CONFIG, CATS_CONFIG, labelstudio_fixture
from label_studio_sdk.label_interface import LabelInterface
from processes import TOKEN, Processes, RedisProcess

from varco_labeler.feedback.store import EventState, FeedbackStore


@pytest.fixture(scope="module", params=["queue", "embedded"])
def deployment(request, process_env, tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """(backend URL, MODEL_DIR) of a running deployment."""
    directory = tmp_path_factory.mktemp(request.param)
    model_dir = directory / "model-dir"
    processes = Processes({**process_env, "MODEL_DIR": str(model_dir)}, directory)
    redis = None
    try:
        if request.param == "queue":
            redis = RedisProcess(directory)
            redis.start()
            processes.worker(redis.url, "protocol-worker")
            yield processes.backend(redis.url), model_dir
        else:
            yield processes.backend(), model_dir
    finally:
        processes.stop_all()
        if redis:
            redis.stop()


def post(url: str, path: str, body: object, **kwargs) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, timeout=120, **kwargs)


def test_health_reports_model_and_mode(deployment):
    url, _ = deployment
    health = httpx.get(f"{url}/health", timeout=5).json()
    assert health["status"] == "UP"
    assert health["model_version"] == "tiny-varco0"
    if health["mode"] == "queue":
        assert health["queue"]["redis"] == "ok" and health["queue"]["workers"] == 1


def test_setup_returns_the_model_version(deployment):
    url, _ = deployment
    reply = post(url, "/setup", labelstudio_fixture("setup"))
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"model_version": "tiny-varco0"}
    assert httpx.get(f"{url}/versions").json() == {"versions": ["tiny-varco0"]}


def test_captured_batch_predict_gives_ocr_regions_in_task_order(deployment):
    url, _ = deployment
    body = labelstudio_fixture("predict_batch")
    reply = post(url, "/predict", body)
    assert reply.status_code == 200, reply.text
    results = reply.json()["results"]
    assert len(results) == len(body["tasks"]) == 3
    interface = LabelInterface(body["label_config"])
    texts = []
    for prediction in results:
        assert prediction["model_version"] == "tiny-varco0"
        assert interface.validate_prediction(prediction)
        box, text = prediction["result"]
        assert (box["type"], text["type"]) == ("rectanglelabels", "textarea")
        assert box["id"] == text["id"] and box["value"]["rectanglelabels"] == ["Text"]
        assert (box["original_width"], box["original_height"]) == (48, 40)
        assert 0 < box["score"] <= 1 and prediction["score"] == box["score"]
        texts.append(text["value"]["text"])
    # Tasks 1 and 2 show the red image, task 3 the blue upload: the order must be kept.
    assert texts == [["STOP"], ["STOP"], ["EXIT"]]
    red_box = results[0]["result"][0]["value"]
    assert [red_box[k] for k in ("x", "y", "width", "height")] == [20.0, 30.0, 60.0, 30.0]


def test_grounding_config_maps_phrases_to_labels(deployment):
    url, _ = deployment
    config = CAT_DOG_CONFIG
    tasks = [
        {"id": 7, "data": {"image": "/data/local-files/?d=images/red.png"}},
        {"id": 8, "data": {"image": "/data/local-files/?d=images/blue.png"}},
    ]
    results = post(url, "/predict", {"tasks": tasks, "label_config": config}).json()["results"]
    labels = [[item["value"]["rectanglelabels"][0] for item in r["result"]] for r in results]
    assert labels == [["Cat"], ["Dog", "Dog"]]


def test_interactive_rectangle_gets_the_answer_in_its_own_region(deployment):
    url, _ = deployment
    body = labelstudio_fixture("predict_interactive")
    reply = post(url, "/predict", body)
    assert reply.status_code == 200, reply.text
    (prediction,) = reply.json()["results"]
    items = prediction["result"]
    assert {item["id"] for item in items} == {"abc123"}, "the answer must join the drawn region"
    rectangle = next(item for item in items if item["type"] == "rectanglelabels")
    assert rectangle["value"]["rectanglelabels"] == ["Text"]
    assert [rectangle["value"][k] for k in ("x", "y", "width", "height")] == [10, 20, 30, 5]


def test_task_whose_image_cannot_be_used_gets_a_skipped_item(deployment):
    url, _ = deployment
    tasks = [
        {"id": 1, "data": {"image": "/data/local-files/?d=images/red.png"}},
        {"id": 2, "data": {"image": "/data/local-files/?d=images/not-an-image.png"}},
        {"id": 3, "data": {"image": "http://169.254.169.254/latest/meta-data"}},
        {"id": 4, "data": {"image": "/data/local-files/?d=../../etc/passwd"}},
        {"id": 5, "data": {"text": "no image"}},
    ]
    reply = post(url, "/predict", {"tasks": tasks, "label_config": CATS_CONFIG})
    results = reply.json()["results"]
    assert len(results) == 5
    assert results[0]["result"] and results[1:] == [[], [], [], []]
    health = httpx.get(f"{url}/health").json()
    assert health["tasks"]["failed"] >= 4 and health["last_problem"]


def test_captured_webhooks_are_kept_within_a_second_each_and_never_taken_as_true(deployment):
    """Each webhook is answered and kept; what it names is read back from Label Studio (here a
    stand-in that serves images only, so none of it is stored: see tests/e2e/test_e2e_sync.py
    for the real one)."""
    url, model_dir = deployment
    task = {"id": 11, "data": {"image": "/data/local-files/?d=images/red.png"}}
    assert post(url, "/predict", {"tasks": [task], "label_config": CATS_CONFIG}).status_code == 200
    names = [
        "webhook_annotation_created",
        "webhook_annotation_updated",
        "webhook_annotation_cancelled",
        "webhook_annotations_deleted",
        "webhook_start_training",
    ]
    for _ in range(2):  # Label Studio may deliver twice
        for name in names:
            started = time.perf_counter()
            reply = post(url, "/webhook", labelstudio_fixture(name))
            assert reply.status_code == 200, reply.text
            assert time.perf_counter() - started < 1.0
    store = FeedbackStore(model_dir=model_dir)
    try:
        deadline = time.monotonic() + 30
        while store.event_states().get(EventState.PENDING):
            assert time.monotonic() < deadline, store.event_states()
            time.sleep(0.2)
        counts, states = store.counts(), store.event_states()
    finally:
        store.close()
    assert counts["events"] == 10
    assert states == {EventState.NOT_IN_LABEL_STUDIO: 8, EventState.KEPT: 2}
    assert counts["annotations"] == 0  # the bodies' claims were never stored
    # The backend also kept every prediction it made, for training data and reports.
    assert counts["predictions"] > 0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("{not json", "invalid request"),
        ({"tasks": [], "label_config": CATS_CONFIG}, "tasks"),
        ({"tasks": [{"id": 1, "data": {}}]}, "label_config: Field required"),
        (
            {
                "tasks": [{"id": 1, "data": {}}],
                "label_config": "<View><Text name='t' value='$t'/></View>",
            },
            "label config: the label config has no <Image> tag",
        ),
    ],
)
def test_bad_requests_get_a_clear_4xx(deployment, body, message):
    url, _ = deployment
    if isinstance(body, str):
        reply = httpx.post(
            f"{url}/predict", content=body, headers={"content-type": "application/json"}
        )
    else:
        reply = post(url, "/predict", body)
    assert reply.status_code == 422
    assert message in reply.json()["error"]


def test_bad_extra_params_are_refused_at_setup(deployment):
    url, _ = deployment
    body = {**labelstudio_fixture("setup"), "extra_params": '{"task": "segment"}'}
    reply = post(url, "/setup", body)
    assert reply.status_code == 422 and "task" in reply.json()["error"]


def test_basic_auth(processes: Processes):
    url = processes.backend(BASIC_AUTH_USER="ann", BASIC_AUTH_PASS="s3cret")
    body = labelstudio_fixture("setup")
    assert post(url, "/setup", body).status_code == 401
    assert post(url, "/setup", body, auth=("ann", "wrong")).status_code == 401
    assert post(url, "/setup", body, auth=("ann", "s3cret")).status_code == 200
    assert httpx.get(f"{url}/health").status_code == 200  # probes need no credentials
    assert TOKEN not in "".join(processes.log(p) for p in processes.running)
