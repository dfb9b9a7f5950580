import pytest
from helpers import labelstudio_fixture, varco_fixture

from varco_labeler.labelstudio.results import referring_prompt_for
from varco_labeler.varco import Box, Task, prompt_for, referring_prompt


def test_task_prompts():
    assert prompt_for(Task.GROUNDING) == "<gro>\nDescribe the image in detail."
    assert prompt_for("ocr") == "<ocr>"
    assert prompt_for("question", question="What is on the sign?") == "What is on the sign?"


def test_referring_prompt_reproduces_the_model_card_question():
    box = Box(0.039, 0.138, 0.283, 0.257)
    prompt = referring_prompt(box, "{region}은 어떻게 쓰는거야?", phrase="이 물건")
    assert prompt == varco_fixture("referring_prompt").strip()


def test_referring_prompt_without_placeholder_puts_the_region_first():
    prompt = referring_prompt(Box(0.1, 0.2, 0.3, 0.4), " What colour is it?")
    assert prompt == "<obj>this object</obj><bbox>0.1, 0.2, 0.3, 0.4</bbox> What colour is it?"


def test_referring_prompt_from_the_rectangle_a_user_drew():
    drawn = labelstudio_fixture("predict_interactive")["params"]["context"]["result"][0]
    # x=10, y=20, width=30, height=5 percent
    assert referring_prompt_for(drawn, "What does {region} say?") == (
        "What does <obj>this object</obj><bbox>0.1, 0.2, 0.4, 0.25</bbox> say?"
    )


@pytest.mark.parametrize(("task", "kwargs"), [("referring", {}), ("question", {"question": " "})])
def test_prompts_that_lack_their_input_fail_clearly(task, kwargs):
    with pytest.raises(ValueError, match="needs"):
        prompt_for(task, **kwargs)
