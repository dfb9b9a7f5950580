"""What the backend asks the model for each kind of request, and how it answers Label Studio.

The dispatcher here is an in-memory one that answers with model text we choose, turned into a
job's output (regions and notes) as the job does, so each rule can be checked on its own; the real
queue and engine are exercised in tests/backend.
"""

from __future__ import annotations

from helpers import CAT_DOG_CONFIG, CATS_CONFIG, labelstudio_fixture

from varco_labeler.backend import Backend
from varco_labeler.policy import PHRASE_PROMPT
from varco_labeler.regions import model_output
from varco_labeler.settings import Settings
from varco_labeler.varco import parse

PROMPT_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <TextArea name="prompt" toName="image"/>
  <RectangleLabels name="label" toName="image">
    <Label value="Cat"/><Label value="Dog"/>
  </RectangleLabels>
</View>"""


class ScriptedDispatcher:
    """Answers every item with the given raw text (None: the item did not finish)."""

    def __init__(self, raw: str | None, scores: list[float] | None = None) -> None:
        self.raw, self.scores = raw, scores
        self.items: list[dict] = []
        self.priorities: list = []

    def run(self, items, deadline, priority=None):
        self.items.extend(items)
        self.priorities.append(priority)
        if self.raw is None:
            return [None for _ in items]
        return [
            {
                "key": i["key"],
                "raw": self.raw,
                "width": 640,
                "height": 480,
                "model_version": "scripted",
                **model_output(parse(self.raw), self.scores),
            }
            for i in items
        ]

    def status(self):
        return {}

    def model_versions(self):
        return {}


def _backend(raw: str | None, scores=None, **settings) -> tuple[Backend, ScriptedDispatcher]:
    dispatcher = ScriptedDispatcher(raw, scores)
    return Backend(Settings(model="NCSOFT/VARCO-VISION-14B-HF", **settings), dispatcher), dispatcher


def test_task_comes_from_the_config_then_extra_params_then_environment(ocr_config_xml):
    backend, dispatcher = _backend("<char>A</char><bbox>0.1, 0.1, 0.2, 0.2</bbox>")
    tasks = [{"id": 1, "data": {"image": "x.png"}}]
    backend.predict(tasks, ocr_config_xml, project="3.99")
    backend.setup("3.1234", ocr_config_xml, '{"task": "grounding"}')
    backend.predict(tasks, ocr_config_xml, project="3.5678")
    backend.predict(tasks, ocr_config_xml, project="4.1")  # another project: its own options
    assert [i["prompt"] for i in dispatcher.items] == [
        "<ocr>",
        "<gro>\nDescribe the image in detail.",
        "<ocr>",
    ]
    env_backend, env_dispatcher = _backend("", default_task="grounding")
    env_backend.predict(tasks, ocr_config_xml)
    assert env_dispatcher.items[0]["task"] == "grounding"


def test_drawn_rectangle_becomes_a_referring_question_answered_in_its_textarea():
    body = labelstudio_fixture("predict_interactive")
    backend, dispatcher = _backend("HELLO WORLD<|im_end|>")
    (prediction,) = backend.predict(
        body["tasks"], body["label_config"], body["project"], body["params"]["context"]
    )["results"]
    assert dispatcher.items[0]["prompt"] == (
        "What text is written in <obj>this object</obj><bbox>0.1, 0.2, 0.4, 0.25</bbox>? "
        "Answer with the text only."
    )
    text = next(i for i in prediction["result"] if i["type"] == "textarea")
    assert text["id"] == "abc123" and text["value"]["text"] == ["HELLO WORLD"]


def test_drawn_rectangle_without_a_textarea_takes_the_label_the_answer_names():
    context = {
        "result": [
            {
                "id": "r9",
                "type": "rectanglelabels",
                "from_name": "label",
                "to_name": "image",
                "original_width": 640,
                "original_height": 480,
                "value": {"x": 10, "y": 10, "width": 20, "height": 20, "rectanglelabels": ["Cat"]},
            }
        ]
    }
    backend, _ = _backend("This is a small brown dog.")
    config = CAT_DOG_CONFIG
    (prediction,) = backend.predict([{"id": 1, "data": {"image": "x.png"}}], config, None, context)[
        "results"
    ]
    (item,) = prediction["result"]
    assert item["id"] == "r9" and item["value"]["rectanglelabels"] == ["Dog"]


def test_typed_phrase_is_grounded():
    context = {
        "result": [
            {
                "id": "t1",
                "type": "textarea",
                "from_name": "prompt",
                "to_name": "image",
                "value": {"text": ["black cat"]},
            }
        ]
    }
    backend, dispatcher = _backend("<obj>black cat</obj><bbox>0.1, 0.1, 0.5, 0.5</bbox>")
    (prediction,) = backend.predict(
        [{"id": 1, "data": {"image": "x.png"}}], PROMPT_CONFIG, None, context
    )["results"]
    assert dispatcher.items[0]["prompt"] == PHRASE_PROMPT.format(phrase="black cat")
    assert [i["value"]["rectanglelabels"] for i in prediction["result"]] == [["Cat"]]


def test_min_score_and_fallback_label_from_extra_params():
    raw = (
        "<obj>a cat</obj><bbox>0.1, 0.1, 0.5, 0.5</bbox> on "
        "<obj>a sofa</obj><bbox>0.0, 0.0, 1.0, 1.0</bbox>"
    )
    config = CATS_CONFIG.replace('<Label value="Remote"/>', '<Label value="Other"/>')
    backend, _ = _backend(raw, scores=[0.9, 0.3])
    task = [{"id": 1, "data": {"image": "x"}}]
    backend.setup("1.1", config, {"fallback_label": "Other"})
    (prediction,) = backend.predict(task, config, "1.2")["results"]
    assert [i["value"]["rectanglelabels"][0] for i in prediction["result"]] == ["Cat", "Other"]
    backend.setup("1.3", config, {"fallback_label": "Other", "min_score": 0.5})
    (prediction,) = backend.predict(task, config, "1.4")["results"]
    assert [i["value"]["rectanglelabels"][0] for i in prediction["result"]] == ["Cat"]
    assert prediction["score"] == 0.9


def test_unfinished_tasks_get_an_item_label_studio_skips():
    backend, _ = _backend(None)
    results = backend.predict([{"id": 1, "data": {"image": "x"}}] * 3, CATS_CONFIG)["results"]
    assert results == [[], [], []]
    assert backend.health()["tasks"] == {"unfinished": 3}
