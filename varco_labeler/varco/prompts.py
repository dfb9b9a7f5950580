"""Task prompts in the form VARCO-VISION was trained on, and answers as people read them."""

from __future__ import annotations

import re
from enum import StrEnum

from varco_labeler.varco.boxes import Box


class Task(StrEnum):
    GROUNDING = "grounding"
    OCR = "ocr"
    REFERRING = "referring"
    QUESTION = "question"


GROUNDING_PROMPT = "<gro>\nDescribe the image in detail."
OCR_PROMPT = "<ocr>"
# Where a referring question names its region; without it the region leads the question.
REGION_PLACEHOLDER = "{region}"
DEFAULT_REFERRING_QUESTION = "Describe {region} in detail."


def grounding_prompt(instruction: str | None = None) -> str:
    """``<gro>`` and what to describe; ``instruction`` replaces the English default (a team that
    wants phrases in Korean: "이미지를 자세히 설명해 주세요.")."""
    if not instruction:
        return GROUNDING_PROMPT
    instruction = instruction.strip()
    return instruction if instruction.startswith("<gro>") else f"<gro>\n{instruction}"


def ocr_prompt() -> str:
    return OCR_PROMPT


def region_reference(box: Box, phrase: str = "this object") -> str:
    """``<obj>phrase</obj><bbox>x1, y1, x2, y2</bbox>``: how a question points at a region."""
    return f"<obj>{phrase}</obj><bbox>{box.to_text()}</bbox>"


def referring_prompt(
    box: Box, question: str = DEFAULT_REFERRING_QUESTION, phrase: str = "this object"
) -> str:
    """A question about one region, e.g. ``<obj>이 물건</obj><bbox>...</bbox>은 어떻게 쓰는거야?``.

    ``{region}`` in the question marks where the region goes; without it the region comes first.
    """
    reference = region_reference(box, phrase)
    if REGION_PLACEHOLDER in question:
        return question.replace(REGION_PLACEHOLDER, reference)
    return reference + question


def question_prompt(question: str) -> str:
    """A free question about the whole image, asked as it is."""
    if not question.strip():
        raise ValueError("a question prompt needs some text")
    return question


def prompt_for(task: Task | str, question: str | None = None, box: Box | None = None) -> str:
    """The prompt for a task; referring needs a box, a free question needs its text."""
    task = Task(task)
    if task is Task.GROUNDING:
        return grounding_prompt()
    if task is Task.OCR:
        return ocr_prompt()
    if task is Task.REFERRING:
        if box is None:
            raise ValueError("a referring prompt needs a region")
        return referring_prompt(box, question or DEFAULT_REFERRING_QUESTION)
    return question_prompt(question or "")


# A box with its coordinates (closed, or cut off by the token limit), then any other tag left.
_BOX_TEXT = re.compile(r"<bbox>.*?(?:</bbox>|$)", re.DOTALL)
_ANY_TAG = re.compile(r"</?(?:obj|char|bbox|ref|gro|ocr)>|<delim>|<\|[a-z_]+\|>|<pad>")
_END_OF_TURN = re.compile(r"<\|im_end\|>|<\|endoftext\|>|</s>")
_SPACE_BEFORE_PUNCTUATION = re.compile(r"\s+([.,;:!?])")


def answer_text(raw: str) -> str:
    """A model answer as a person reads it: tags and coordinates removed, phrases kept.

    ``A <obj>red square</obj><bbox>0.25, 0.25, 0.75, 0.75</bbox>.`` -> ``A red square.``
    """
    end = _END_OF_TURN.search(raw)
    text = raw[: end.start()] if end else raw
    text = _ANY_TAG.sub(" ", _BOX_TEXT.sub(" ", text))
    text = " ".join(text.split())
    return _SPACE_BEFORE_PUNCTUATION.sub(r"\1", text)
