"""Label Studio's editor in a real browser (Debian's chromium driven by Playwright), against the
real Label Studio 1.23.2 and our backend on the tiny model.

- A grounding project pre-labelled by "Retrieve predictions": the editor draws the boxes the model
  gave, with their labels and scores; a correction submitted in the editor reaches the feedback
  store through the webhook.
- A project printed by ``varco-labeler label-config referring``: opening its task pre-labels
  nothing; with Auto-Annotation on, a box drawn with the smart tool comes back as a suggestion
  whose text is the model's answer about that box, clean; accepted and submitted, it is stored.

The tiny model is taught one more answer for this (the referring question about the middle of the
red image). Screenshots of each step go to test-output/editor/ (VARCO_E2E_OUTPUT to change).
The browser is never downloaded: scripts/setup.sh installs Debian's chromium.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from projects import COLOURS, connect, make_project
from real_browser import chromium

from bench.common import spawn
from varco_labeler.feedback.store import FeedbackStore
from varco_labeler.policy import DEFAULT_QUESTIONS
from varco_labeler.varco import Box, Task, referring_prompt

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
OUTPUT = Path(os.environ.get("VARCO_E2E_OUTPUT", REPO / "test-output")) / "editor"
LS_USER, LS_PASSWORD = "e2e@example.com", "e2e-password-1234"  # conftest's first-start user

# The smart box drawn on the red image: its middle quarter, as fractions of the image.
DRAWN = Box(0.25, 0.25, 0.75, 0.75)
REFERRING_ANSWER = "A <obj>red square</obj><bbox>0.25, 0.25, 0.75, 0.75</bbox>."
CLEAN_ANSWER = "A red square."


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def output() -> Path:
    if OUTPUT.exists():
        shutil.rmtree(OUTPUT)
    OUTPUT.mkdir(parents=True)
    return OUTPUT


@pytest.fixture(scope="module")
def editor_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with its usual lessons and the referring answer about ``DRAWN``."""
    root = tmp_path_factory.mktemp("editor-model")
    red = root / "red.png"
    Image.new("RGB", (48, 40), COLOURS["red"]).save(red)
    prompt = referring_prompt(DRAWN, DEFAULT_QUESTIONS[Task.GROUNDING])
    lesson = {"image": str(red), "prompt": prompt, "answer": REFERRING_ANSWER}
    (root / "lessons.jsonl").write_text(json.dumps(lesson) + "\n")
    out = root / "model"
    argv = [str(BIN / "varco-labeler"), "tiny-model", str(out)]
    argv += ["--lessons", str(root / "lessons.jsonl"), "--keep-default-lessons"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def editor_backend(
    our_env: dict[str, str], editor_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    """(URL, MODEL_DIR) of ``varco-labeler serve`` (embedded) on the editor model."""
    root = tmp_path_factory.mktemp("editor-backend")
    port = _free_port()
    env = our_env | {"VARCO_MODEL": str(editor_model), "MODEL_DIR": str(root / "model-dir")}
    argv = [str(BIN / "varco-labeler"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    process = spawn(argv, env | {"LOG_LEVEL": "DEBUG"}, root, root / "backend.log")
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: _answers(f"{url}/health"), 90, "the backend to start", root / "backend.log")
        yield url, root / "model-dir"
    finally:
        process.terminate()
        process.wait(timeout=30)
        if OUTPUT.exists():  # beside the screenshots: what Label Studio asked and got
            shutil.copy(root / "backend.log", OUTPUT / "backend.log")


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _wait(check: Callable[[], Any], timeout: float, what: str, log: Path | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            pytest.fail(f"timed out waiting for {what}\n{tail}")
        time.sleep(0.3)


def _printed_config(kind: str, *labels: str) -> str:
    argv = [str(BIN / "varco-labeler"), "label-config", kind]
    if labels:
        argv += ["--labels", ",".join(labels)]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def _task_id(label_studio: Any, project: int) -> int:
    body = label_studio.api().get("/api/tasks", params={"project": project}).json()
    (task,) = body["tasks"] if isinstance(body, dict) else body
    return task["id"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


class Editor:
    """One Label Studio page, logged in; screenshots numbered in the order taken."""

    def __init__(
        self, browser: Any, url: str, output: Path, name: str, size: tuple[int, int] = (1280, 860)
    ) -> None:
        self.url, self.output, self.name = url, output, name
        self.page = browser.new_page(viewport={"width": size[0], "height": size[1]})
        self.shots = 0
        self.page.goto(f"{url}/user/login/")
        self.page.fill("input[name=email]", LS_USER)
        self.page.fill("input[name=password]", LS_PASSWORD)
        self.page.click("button[type=submit]")
        self.page.wait_for_load_state("networkidle")

    def open_task(self, project: int, task: int) -> None:
        self.page.goto(f"{self.url}/projects/{project}/data?task={task}")
        self.page.locator(".konvajs-content").first.wait_for(timeout=60_000)
        self.page.wait_for_load_state("networkidle")

    def shot(self, what: str) -> Path:
        self.shots += 1
        path = self.output / f"{self.name}-{self.shots}-{what}.png"
        self.page.screenshot(path=str(path))
        return path

    def regions(self) -> list[dict[str, Any]]:
        """The regions the editor holds for the open annotation, as it will save them (its
        store is ``window.Htx`` in Label Studio 1.23.2)."""
        return self.page.evaluate("() => window.Htx.annotationStore.selected.serializeAnnotation()")

    def image(self) -> dict[str, float]:
        """Where the image is on the screen (the editor may scale it past its stage)."""
        return self.page.locator("img[alt=image]").first.bounding_box()

    def at(self, x: float, y: float) -> tuple[float, float]:
        """The screen point at fractions of the image (fractional pixels keep them exact)."""
        image = self.image()
        return image["x"] + x * image["width"], image["y"] + y * image["height"]

    def click(self, x: float, y: float) -> None:
        self.page.mouse.click(*self.at(x, y))

    def draw(self, box: Box) -> None:
        """Drag from the box's top-left to its bottom-right corner."""
        image = self.image()
        assert min(image["width"], image["height"]) > 1000, f"too small to draw exactly: {image}"
        (x1, y1), (x2, y2) = self.at(box.x1, box.y1), self.at(box.x2, box.y2)
        mouse = self.page.mouse
        mouse.move(x1, y1)
        mouse.down()
        mouse.move((x1 + x2) / 2, (y1 + y2) / 2, steps=5)
        mouse.move(x2, y2, steps=5)
        mouse.up()


# -- the tests ---------------------------------------------------------------------------------


def _retrieve_predictions(label_studio: Any, project: int) -> None:
    """Data Manager > select all > Actions > Retrieve predictions."""
    answer = label_studio.api().post(
        "/api/dm/actions",
        params={"id": "retrieve_tasks_predictions", "project": project},
        json={"selectedItems": {"all": True, "excluded": []}, "project": str(project)},
    )
    assert answer.status_code == 200, answer.text


def _stored_annotations(model_dir: Path, project: int) -> list[dict[str, Any]]:
    store = FeedbackStore(model_dir=model_dir)
    try:
        return [a for task in store.tasks(project) for a in task.annotations]
    finally:
        store.close()


def _by_type(result: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [item for item in result if item["type"] == kind]


def test_prelabelled_task_shows_the_models_boxes_and_a_correction_reaches_the_store(
    browser, label_studio, ls_client, editor_backend, output
) -> None:
    url, model_dir = editor_backend
    config = _printed_config("grounding", "Cat", "Dog")
    assert 'smart="true"' in config
    project = make_project(
        label_studio, ls_client, "editor: grounding", 1, config, {"red": COLOURS["red"]}
    )
    connect(ls_client, project, url, is_interactive=True)
    _retrieve_predictions(label_studio, project)
    (prediction,) = ls_client.predictions.list(project=project)
    (stored_box,) = _by_type(prediction.result, "rectanglelabels")

    editor = Editor(browser, label_studio.url, output, "grounding")
    editor.open_task(project, _task_id(label_studio, project))
    editor.page.get_by_text(f"{stored_box['score']:.2f}").first.wait_for()
    editor.shot("prelabelled")
    # The editor draws the model's box where the model put it, labelled, with its score.
    (box,) = _by_type(editor.regions(), "rectanglelabels")
    assert box["value"]["rectanglelabels"] == ["Cat"]
    drawn = [box["value"][k] for k in ("x", "y", "width", "height")]
    assert drawn == pytest.approx([10, 20, 40, 70], abs=0.01)
    assert box["id"] == stored_box["id"]

    # The annotator corrects the label and submits: the webhook brings it to the store.
    editor.click(0.3, 0.55)  # on the box: selects the region
    editor.page.locator(".lsf-label", has_text="Dog").first.click()
    editor.shot("corrected")
    assert _by_type(editor.regions(), "rectanglelabels")[0]["value"]["rectanglelabels"] == ["Dog"]
    editor.page.locator("[data-testid=bottombar-submit-button]").click()
    annotations = _wait(
        lambda: _stored_annotations(model_dir, project), 20, "the annotation's webhook"
    )
    editor.shot("submitted")
    (annotation,) = annotations
    (kept,) = _by_type(annotation["result"], "rectanglelabels")
    assert kept["value"]["rectanglelabels"] == ["Dog"]
    assert kept["id"] == stored_box["id"]


def test_box_drawn_with_the_smart_tool_gets_the_models_clean_answer_in_its_text(
    browser, label_studio, ls_client, editor_backend, output
) -> None:
    url, model_dir = editor_backend
    config = _printed_config("referring")
    project = make_project(
        label_studio, ls_client, "editor: referring", 1, config, {"red": COLOURS["red"]}
    )
    connect(ls_client, project, url, is_interactive=True)
    task = _task_id(label_studio, project)

    # The editor takes whole pixels from the mouse: on an image shown over 1,000 px wide and
    # high, half a pixel is under the 0.0005 that the question's 3-decimal box can tell.
    editor = Editor(browser, label_studio.url, output, "referring", size=(2400, 1700))
    editor.open_task(project, task)
    editor.shot("opened")
    # Opening the task asked the backend, which pre-labels nothing for a referring project.
    assert list(ls_client.predictions.list(project=project)) == []
    assert editor.regions() == []

    # Auto-Annotation on, the label first, then the smart rectangle tool (DESIGN.md 10).
    page = editor.page
    page.locator("label:has([data-testid=bottombar-auto-annotation-toggle])").click()
    page.locator(".lsf-label", has_text="Region").first.click()
    page.locator(".lsf-toolbar__group > button.lsf-tool_smart").first.click()
    page.locator("button.lsf-tool_smart[aria-label=rectangle-tool]").click()
    editor.shot("smart-tool")
    editor.draw(DRAWN)
    accept = page.locator("[data-testid=bottombar-accept-suggestions-button]")
    accept.wait_for(timeout=60_000)
    editor.shot("suggestion")

    accept.click()
    result = _wait(lambda: _by_type(editor.regions(), "textarea") and editor.regions(), 10, "text")
    editor.shot("accepted")
    (box,) = _by_type(result, "rectanglelabels")
    (text,) = _by_type(result, "textarea")
    assert box["value"]["rectanglelabels"] == ["Region"]  # the label the user picked
    drawn = [box["value"][k] for k in ("x", "y", "width", "height")]
    assert drawn == pytest.approx([25, 25, 50, 50], abs=0.05)  # whole pixels of the mouse
    assert text["id"] == box["id"], "the answer must land in the drawn region"
    assert text["value"]["text"] == [CLEAN_ANSWER]

    page.locator("[data-testid=bottombar-submit-button]").click()
    (annotation,) = _wait(lambda: _stored_annotations(model_dir, project), 20, "the webhook")
    editor.shot("submitted")
    texts = _by_type(annotation["result"], "textarea")
    assert [t["value"]["text"] for t in texts] == [[CLEAN_ANSWER]]
    # Still nothing stored as a prediction: the answer became the annotator's own region.
    assert list(ls_client.predictions.list(project=project)) == []
