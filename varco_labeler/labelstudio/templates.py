"""Label configs that fit each VARCO task, for ``varco-labeler label-config``."""

from __future__ import annotations

from collections.abc import Sequence
from xml.sax.saxutils import quoteattr

KINDS = ("grounding", "ocr", "referring")
DEFAULT_LABELS = {
    "grounding": ("Object",),
    "ocr": ("Text", "Handwriting"),
    "referring": ("Region",),
}


def label_config(kind: str, labels: Sequence[str] = (), prompt_box: bool = False) -> str:
    """The label config for a task kind.

    grounding: labelled boxes (phrases map to labels); ocr: boxes with a per-region transcription;
    referring: boxes you draw get the model's answer in a per-region text box (interactive mode).
    ``prompt_box`` adds a text box where a phrase typed in interactive mode is grounded.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}: choose one of {', '.join(KINDS)}")
    names = list(labels) or list(DEFAULT_LABELS[kind])
    lines = ["<View>", '  <Image name="image" value="$image" zoom="true"/>']
    if prompt_box:
        lines.append('  <TextArea name="prompt" toName="image" placeholder="Phrase to find"/>')
    lines.append('  <RectangleLabels name="label" toName="image">')
    lines += [f"    <Label value={quoteattr(name)}/>" for name in names]
    lines.append("  </RectangleLabels>")
    if kind == "ocr":
        lines.append(
            '  <TextArea name="transcription" toName="image" editable="true" perRegion="true" '
            'required="false" maxSubmissions="1" rows="3" displayMode="region-list"/>'
        )
    if kind == "referring":
        lines.append(
            '  <TextArea name="answer" toName="image" editable="true" perRegion="true" '
            'required="false" rows="3" displayMode="region-list"/>'
        )
    lines.append("</View>")
    return "\n".join(lines) + "\n"
