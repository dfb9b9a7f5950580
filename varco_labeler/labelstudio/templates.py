"""Label configs that fit each VARCO task, for ``varco-labeler label-config``.

Every config offers Label Studio's smart (interactive) rectangle tool (``smart="true"``): with
"Auto-Annotation" switched on at the bottom of the editor, pick a label, then the smart tool, and
draw. Each printed config starts with a comment that says what the backend does for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from xml.sax.saxutils import quoteattr

# The backend knows a referring project by the name of its per-region TextArea.
from varco_labeler.labelstudio.config import REFERRING_TEXT_NAME

KINDS = ("grounding", "ocr", "referring")
DEFAULT_LABELS = {
    "grounding": ("Object",),
    "ocr": ("Text", "Handwriting"),
    "referring": ("Region",),
}

_WHAT_IT_DOES = {
    "grounding": (
        "Opening a task (or Retrieve predictions) boxes the objects the model names, under",
        "the label that matches each phrase. Smart tool: the model describes the box you draw;",
        "when the answer names a label the box takes it, else the answer shows in the region's",
        "meta.",
    ),
    "ocr": (
        "Opening a task (or Retrieve predictions) boxes each piece of text, with its",
        "transcription in the region's text box. Smart tool: the model reads the text inside",
        "the box you draw.",
    ),
    "referring": (
        "Nothing is pre-labelled when a task opens. Smart tool: the box you draw becomes a",
        'question (the model\'s Extra params "question", default "Describe {region} in',
        "detail.\") and the answer lands in the region's text box. To pre-label such a",
        'project in bulk, set Extra params {"task": "grounding"} (or "ocr").',
    ),
}
_PROMPT_BOX = ("Prompt box: a phrase typed there (smart mode) is found and boxed.",)
_SMART_TOOL = (
    'Smart tool: switch on "Auto-Annotation" below the image, pick a label, then the smart',
    "rectangle tool, and draw.",
)


def label_config(kind: str, labels: Sequence[str] = (), prompt_box: bool = False) -> str:
    """The label config for a task kind.

    grounding: labelled boxes (phrases map to labels); ocr: boxes with a per-region transcription;
    referring: boxes you draw get the model's answer in a per-region text box (interactive mode).
    ``prompt_box`` adds a text box where a phrase typed in interactive mode is grounded.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}: choose one of {', '.join(KINDS)}")
    names = list(labels) or list(DEFAULT_LABELS[kind])
    said = (*_WHAT_IT_DOES[kind], *(_PROMPT_BOX if prompt_box else ()), *_SMART_TOOL)
    lines = ["<View>", f"  <!-- varco-labeler, {kind} project:"]
    lines += [f"    {line}" for line in said]
    lines += ["  -->", '  <Image name="image" value="$image" zoom="true"/>']
    if prompt_box:
        lines.append('  <TextArea name="prompt" toName="image" placeholder="Phrase to find"/>')
    lines.append('  <RectangleLabels name="label" toName="image" smart="true">')
    lines += [f"    <Label value={quoteattr(name)}/>" for name in names]
    lines.append("  </RectangleLabels>")
    if kind == "ocr":
        lines.append(
            '  <TextArea name="transcription" toName="image" editable="true" perRegion="true" '
            'required="false" maxSubmissions="1" rows="3" displayMode="region-list"/>'
        )
    if kind == "referring":
        lines.append(
            f'  <TextArea name="{REFERRING_TEXT_NAME}" toName="image" editable="true" '
            'perRegion="true" required="false" rows="3" displayMode="region-list"/>'
        )
    lines.append("</View>")
    return "\n".join(lines) + "\n"
