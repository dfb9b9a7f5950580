"""Interactive labelling against the real backend process and the tiny model: which region was
drawn, what its answer says, which label it keeps; and on the queue, that interactive work goes
first and that asking again for unfinished tasks adds no jobs.

The tiny model is taught referring answers about the middle of the red and blue images (DRAWN);
the label configs are the ones ``varco-labeler label-config`` prints.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from processes import Processes, RedisProcess, wait_until
from redis import Redis
from rq import Queue
from rq.job import Job
from rq.registry import FinishedJobRegistry
from rq.serializers import JSONSerializer

from varco_labeler.backend import answer_region
from varco_labeler.labelstudio import read_label_config
from varco_labeler.labelstudio.templates import label_config
from varco_labeler.policy import DEFAULT_QUESTIONS
from varco_labeler.queue import Priority, RQDispatcher, queue_name
from varco_labeler.settings import Settings
from varco_labeler.varco import Box, Task, referring_prompt
from varco_labeler.varco.prompts import answer_text

RED = "/data/local-files/?d=images/red.png"
BLUE = "/data/local-files/?d=images/blue.png"
DRAWN = Box(0.25, 0.25, 0.75, 0.75)
RED_ANSWER = "A <obj>red square</obj><bbox>0.25, 0.25, 0.75, 0.75</bbox>."
BLUE_ANSWER = "<obj>A blue dog</obj><bbox>0.25, 0.25, 0.75, 0.75</bbox>"
REFERRING = label_config("referring")
GROUNDING = label_config("grounding", ["Cat", "Dog", "Other"])


@pytest.fixture(scope="module")
def interactive_model(single_thread_torch: None, tmp_path_factory) -> Path:
    from varco_labeler.engine.tiny import BLUE as BLUE_COLOUR
    from varco_labeler.engine.tiny import RED as RED_COLOUR
    from varco_labeler.engine.tiny import TEACHING, Lesson, build_tiny_model

    question = referring_prompt(DRAWN, DEFAULT_QUESTIONS[Task.GROUNDING])
    lessons = (
        *TEACHING,
        Lesson(RED_COLOUR, question, RED_ANSWER),
        Lesson(BLUE_COLOUR, question, BLUE_ANSWER),
    )
    return build_tiny_model(tmp_path_factory.mktemp("interactive") / "tiny", lessons=lessons)


@pytest.fixture(scope="module")
def backend(process_env, interactive_model, tmp_path_factory) -> Iterator[str]:
    """The embedded backend on the taught model."""
    directory = tmp_path_factory.mktemp("interactive-backend")
    env = {**process_env, "VARCO_MODEL": str(interactive_model)}
    processes = Processes({**env, "MODEL_DIR": str(directory / "model-dir")}, directory)
    try:
        yield processes.backend()
    finally:
        processes.stop_all()


def rectangle(region_id: str, label: str, box: Box = DRAWN) -> dict[str, Any]:
    """A rectanglelabels result as Label Studio sends it, in percent of a 48x40 image."""
    value = {
        "x": box.x1 * 100,
        "y": box.y1 * 100,
        "width": (box.x2 - box.x1) * 100,
        "height": (box.y2 - box.y1) * 100,
        "rotation": 0,
        "rectanglelabels": [label],
    }
    return {
        "id": region_id,
        "type": "rectanglelabels",
        "from_name": "label",
        "to_name": "image",
        "original_width": 48,
        "original_height": 40,
        "image_rotation": 0,
        "value": value,
    }


ELSEWHERE = Box(0.0, 0.0, 0.2, 0.2)


def predict(
    url: str,
    tasks: list[dict[str, Any]],
    config: str,
    context: dict[str, Any] | None = None,
    project: str = "5.1",
) -> list[Any]:
    body: dict[str, Any] = {"tasks": tasks, "label_config": config, "project": project}
    if context is not None:
        body["params"] = {"context": context}
    reply = httpx.post(f"{url}/predict", json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    return reply.json()["results"]


def answer_of(prediction: dict[str, Any]) -> tuple[str, list[str], list[str]]:
    """(region id, its labels, its text) of a one-region interactive answer."""
    ids = {item["id"] for item in prediction["result"]}
    assert len(ids) == 1, prediction
    box = next(i for i in prediction["result"] if i["type"] == "rectanglelabels")
    texts = [i["value"]["text"] for i in prediction["result"] if i["type"] == "textarea"]
    return box["id"], box["value"]["rectanglelabels"], texts[0] if texts else []


def test_the_drawn_region_is_found_whatever_the_order_of_the_context(backend: str) -> None:
    saved = {
        "annotations": [{"id": 1, "result": [rectangle("in-annotation", "Region", ELSEWHERE)]}],
        "drafts": [{"id": 2, "result": [rectangle("in-draft", "Region", ELSEWHERE)]}],
        "predictions": [{"id": 3, "result": [rectangle("in-prediction", "Region", ELSEWHERE)]}],
    }
    regions = [
        rectangle("in-annotation", "Region", ELSEWHERE),
        rectangle("in-draft", "Region", ELSEWHERE),
        rectangle("in-prediction", "Region", ELSEWHERE),
        rectangle("new", "Region"),
    ]
    for number, order in enumerate(itertools.permutations(regions)):
        task = {"id": 100 + number, "data": {"image": RED}, **saved}
        (prediction,) = predict(backend, [task], REFERRING, {"result": list(order)})
        assert answer_of(prediction) == ("new", ["Region"], ["A red square."]), order


def test_a_region_answered_before_is_told_from_the_new_one(backend: str) -> None:
    earlier = rectangle("earlier", "Region", ELSEWHERE)
    for task_id, later_first in ((200, True), (201, False)):
        task = {"id": task_id, "data": {"image": RED}}
        (first,) = predict(backend, [task], REFERRING, {"result": [earlier]})
        assert answer_of(first)[0] == "earlier"
        pair = [rectangle("new", "Region"), earlier]
        context = {"result": pair if later_first else pair[::-1]}
        (second,) = predict(backend, [task], REFERRING, context)
        assert answer_of(second) == ("new", ["Region"], ["A red square."])


def test_referring_project_asks_nothing_when_a_task_opens(backend: str) -> None:
    task = {"id": 300, "data": {"image": RED}}
    assert predict(backend, [task], REFERRING, project="6.1") == [[]]
    health = httpx.get(f"{backend}/health").json()
    assert health["tasks"].get("not_prelabelled", 0) >= 1
    # Unless the project asks for a task in its Extra params.
    setup = {"project": "7.1", "schema": REFERRING, "extra_params": {"task": "ocr"}}
    assert httpx.post(f"{backend}/setup", json=setup, timeout=10).status_code == 200
    (prediction,) = predict(backend, [task], REFERRING, project="7.2")
    assert answer_of(prediction)[1:] == (["Region"], ["STOP"])


def test_without_a_textarea_the_answer_picks_a_label_or_says_why_not(backend: str) -> None:
    # A fallback label is set: it must never replace the label the user chose.
    setup = {"project": "8.1", "schema": GROUNDING, "extra_params": {"fallback_label": "Other"}}
    assert httpx.post(f"{backend}/setup", json=setup, timeout=10).status_code == 200
    red = {"id": 400, "data": {"image": RED}}
    (prediction,) = predict(
        backend, [red], GROUNDING, {"result": [rectangle("r", "Cat")]}, project="8.2"
    )
    (item,) = prediction["result"]
    assert item["id"] == "r" and item["value"]["rectanglelabels"] == ["Cat"]
    assert item["meta"] == {"text": ["VARCO-VISION: A red square. (names no label)"]}
    # An answer that names a label gives the region that label.
    blue = {"id": 401, "data": {"image": BLUE}}
    (prediction,) = predict(
        backend, [blue], GROUNDING, {"result": [rectangle("b", "Cat")]}, project="8.3"
    )
    (item,) = prediction["result"]
    assert item["id"] == "b" and item["value"]["rectanglelabels"] == ["Dog"]
    assert "meta" not in item


# -- on the queue ------------------------------------------------------------------------------


@pytest.fixture
def queue(redis_server: RedisProcess, processes: Processes, interactive_model: Path):
    """A queue-mode backend with no worker yet (start one with ``processes.worker``), whose
    /predict gives up after 1 s."""
    url = processes.backend(
        redis_server.url, VARCO_MODEL=str(interactive_model), VARCO_PREDICT_DEADLINE="1"
    )
    return url, redis_server.url, str(interactive_model)


def _finished(redis: Redis, priority: Priority) -> list[Job]:
    queue = Queue(queue_name("varco", priority), connection=redis, serializer=JSONSerializer)
    ids = FinishedJobRegistry(queue=queue).get_job_ids()
    return [job for job in Job.fetch_many(ids, redis, serializer=JSONSerializer) if job]


def test_asking_again_for_unfinished_tasks_enqueues_nothing_new(queue, processes) -> None:
    url, redis_url, model = queue
    tasks = [{"id": i, "data": {"image": RED if i % 2 else BLUE}} for i in range(1, 13)]
    assert predict(url, tasks, GROUNDING) == [[]] * 12  # no worker: nothing finished
    queued = httpx.get(f"{url}/health").json()["queue"]
    assert queued["queued_by_priority"] == {"high": 0, "normal": 2, "low": 0}  # 8 a job
    assert predict(url, tasks, GROUNDING) == [[]] * 12  # "Retrieve predictions" again
    assert httpx.get(f"{url}/health").json()["queue"]["queued_jobs"] == queued["queued_jobs"]

    processes.worker(redis_url, "late-worker", VARCO_MODEL=model)
    results = predict(url, tasks, GROUNDING)
    labels = [[i["value"]["rectanglelabels"][0] for i in r["result"]] for r in results]
    assert labels == [["Cat"] if i % 2 else ["Dog", "Dog"] for i in range(1, 13)]


def test_interactive_work_goes_before_queued_bulk_work(queue, processes) -> None:
    url, redis_url, model = queue
    redis = Redis.from_url(redis_url)
    # Queued first: a "Retrieve predictions" batch, then a prelabel-like bulk run.
    predict(url, [{"id": i, "data": {"image": RED}} for i in range(1, 4)], GROUNDING)
    bulk = RQDispatcher(Settings(redis_url=redis_url), redis)
    items = [{"key": str(i), "image": BLUE, "task": "ocr", "prompt": f"<ocr>{i}"} for i in range(4)]
    bulk.submit("varco_labeler.jobs.predict_batch", [([item],) for item in items], Priority.LOW)
    # Then a box drawn in the editor (its request gives up after 1 s: no worker yet).
    drawn = {"result": [rectangle("new", "Region")]}
    assert predict(url, [{"id": 9, "data": {"image": RED}}], REFERRING, drawn) == [[]]
    assert bulk.status()["queued_by_priority"] == {"high": 1, "normal": 1, "low": 4}

    processes.worker(redis_url, "one-worker", VARCO_MODEL=model)
    wait_until(lambda: len(_finished(redis, Priority.LOW)) == 4, 60, "the queue to drain")
    started = {p: [job.started_at for job in _finished(redis, p)] for p in Priority}
    assert [len(started[p]) for p in Priority] == [1, 1, 4]
    # One worker, everything queued before it started: it took the queues in priority order.
    assert started[Priority.HIGH][0] < min(started[Priority.NORMAL] + started[Priority.LOW])
    assert started[Priority.NORMAL][0] < min(started[Priority.LOW])
    # Asked again, the drawn box is answered from the job's cached output.
    (prediction,) = predict(url, [{"id": 9, "data": {"image": RED}}], REFERRING, drawn)
    assert answer_of(prediction) == ("new", ["Region"], ["A red square."])


# -- the rules on their own (no process) -------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        (RED_ANSWER + "<|im_end|>", "A red square."),
        ("<obj>two dogs</obj><bbox>0.05, 0.1, 0.4, 0.8<delim>0.6, 0.1, 0.9, 0.8</bbox> play.",
         "two dogs play."),
        ("<char>STOP</char><bbox>0.2, 0.3, 0.8, 0.6</bbox>\n<char>GO</char><bbox>0.1, 0.1",
         "STOP GO"),
        ("It is a cat.", "It is a cat."),
        ("<|im_end|>", ""),
    ],
)  # fmt: skip
def test_answers_lose_tags_and_coordinates_and_keep_phrases(raw: str, clean: str) -> None:
    assert answer_text(raw) == clean


def test_the_label_the_user_chose_is_kept_even_with_a_fallback() -> None:
    config = read_label_config(GROUNDING)
    drawn = rectangle("r", "Cat")
    region, note = answer_region(drawn, "Something odd.", config, ("Cat", "Dog", "Other"))
    assert (region.id, region.label, note) == (
        "r",
        "Cat",
        "VARCO-VISION: Something odd. (names no label)",
    )
    region, note = answer_region(drawn, "", config, ("Cat", "Dog", "Other"))
    assert (region.label, note) == ("Cat", "VARCO-VISION gave no answer")
    text_config = read_label_config(REFERRING)
    region, note = answer_region(rectangle("t", "Region"), RED_ANSWER, text_config, ("Region",))
    assert (region.label, region.text, note) == ("Region", "A red square.", None)
