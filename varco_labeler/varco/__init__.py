"""The model's language: prompts per task, the tag grammar, normalised boxes. No I/O."""

from varco_labeler.varco.boxes import Box, format_coordinate
from varco_labeler.varco.grammar import (
    Grounded,
    Item,
    OcrItem,
    Parsed,
    Phrase,
    Problem,
    Text,
    clean_model_text,
    format_items,
    parse,
)
from varco_labeler.varco.prompts import Task, prompt_for, referring_prompt, region_reference

__all__ = [
    "Box",
    "Grounded",
    "Item",
    "OcrItem",
    "Parsed",
    "Phrase",
    "Problem",
    "Task",
    "Text",
    "clean_model_text",
    "format_coordinate",
    "format_items",
    "parse",
    "prompt_for",
    "referring_prompt",
    "region_reference",
]
