"""Reading a Label Studio label config: which tags our regions go into.

Parsed with label-studio-sdk's label interface, not by hand: we read configs as Label Studio does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from label_studio_sdk.label_interface import LabelInterface

from varco_labeler.varco import Task

_DATA_VARIABLE = re.compile(r"^\$([A-Za-z_][\w.-]*)$")
_BOX_TAGS = ("RectangleLabels", "Rectangle")
# A per-region TextArea of this name holds answers about drawn regions: a referring project
# (``varco-labeler label-config referring``), which is not pre-labelled when a task opens.
REFERRING_TEXT_NAME = "answer"


class LabelConfigError(ValueError):
    """The label config cannot hold our regions; the message names what is missing."""


@dataclass(frozen=True)
class LabelConfig:
    """The parts of a label config that pre-labelling writes to.

    ``box_control`` is a RectangleLabels tag, or a Rectangle tag with its labels in a separate
    ``labels_control`` (a Labels tag). ``text_control`` is a per-region TextArea (OCR text,
    answers);
    ``prompt_control`` a TextArea that is not per-region, where a user types a phrase to ground.
    ``referring``: the per-region TextArea is named "answer": regions are drawn to be asked
    about, nothing is pre-labelled unless the project asks for it.
    """

    image: str
    data_key: str
    box_control: str
    box_type: str
    labels: tuple[str, ...] = ()
    labels_control: str | None = None
    aliases: Mapping[str, str] = field(default_factory=dict)
    text_control: str | None = None
    prompt_control: str | None = None
    # The task field that holds the labels when the control has none of its own
    # (``<RectangleLabels value="$labels"/>``: Label Studio's dynamic labels).
    labels_data_key: str | None = None
    referring: bool = False

    @property
    def default_task(self) -> Task:
        """OCR when regions carry text, grounding otherwise (and for a referring project, whose
        drawn regions are asked a referring question, "Describe {region} in detail.")."""
        return Task.OCR if self.text_control and not self.referring else Task.GROUNDING

    @property
    def labels_type(self) -> str | None:
        """The result type that carries the label: rectanglelabels, labels, or none."""
        if self.box_type == "rectanglelabels":
            return "rectanglelabels"
        return "labels" if self.labels_control else None


def read_label_config(xml: str) -> LabelConfig:
    """Find the image and the output tags in a label config, or raise :class:`LabelConfigError`."""
    if not xml or not xml.strip():
        raise LabelConfigError("the label config is empty")
    try:
        interface = LabelInterface(xml)
    except Exception as error:  # the SDK raises its own XML error types
        raise LabelConfigError(f"the label config is not valid XML: {error}") from error

    images = {obj.name: obj for obj in interface.objects if obj.tag == "Image"}
    if not images:
        raise LabelConfigError(
            "the label config has no <Image> tag; add one, e.g. "
            '<Image name="image" value="$image"/>'
        )
    box = next(
        (
            c
            for tag in _BOX_TAGS
            for c in interface.controls
            if c.tag == tag and any(name in images for name in c.to_name)
        ),
        None,
    )
    if box is None:
        found = ", ".join(f"<{c.tag} name={c.name!r}>" for c in interface.controls) or "no controls"
        raise LabelConfigError(
            "the label config has no <RectangleLabels> (or <Rectangle> with <Labels>) pointing at "
            f"an <Image>; found {found}"
        )
    image_name = next(name for name in box.to_name if name in images)
    value = images[image_name].value or ""
    variable = _DATA_VARIABLE.match(value)
    if not variable:
        raise LabelConfigError(
            f"<Image name={image_name!r}> has value={value!r}; it must name one task field, "
            'e.g. value="$image"'
        )

    def controls_on_image(tag: str) -> list[Any]:
        return [c for c in interface.controls if c.tag == tag and image_name in c.to_name]

    labels_control = None
    label_source = box
    if box.tag == "Rectangle":
        labels_controls = controls_on_image("Labels")
        if labels_controls:
            labels_control = labels_controls[0].name
            label_source = labels_controls[0]
    labels = tuple(label_source.labels_attrs)
    labels_data_key = None
    if label_source.tag != "Rectangle" and not labels:
        dynamic = _DATA_VARIABLE.match(str(label_source.attr.get("value") or ""))
        if dynamic is None:
            raise LabelConfigError(
                f"<{label_source.tag} name={label_source.name!r}> has no <Label> children and no "
                'value="$field" to take its labels from the task data; add labels, e.g. '
                '<Label value="Object"/>'
            )
        labels_data_key = dynamic.group(1)
    text_areas = controls_on_image("TextArea")
    per_region = [c for c in text_areas if _truthy(c.attr.get("perRegion"))]
    prompt_areas = [c for c in text_areas if c not in per_region]

    return LabelConfig(
        image=image_name,
        data_key=variable.group(1),
        box_control=box.name,
        box_type=box.tag.lower(),
        labels=labels,
        labels_control=labels_control,
        aliases=_aliases(label_source.labels_attrs),
        text_control=per_region[0].name if per_region else None,
        prompt_control=prompt_areas[0].name if prompt_areas else None,
        labels_data_key=labels_data_key,
        referring=bool(per_region) and per_region[0].name == REFERRING_TEXT_NAME,
    )


def labels_from_task(config: LabelConfig, data: Mapping[str, Any]) -> tuple[str, ...]:
    """The labels a task offers: the config's own, or for dynamic labels the task's list
    (``[{"value": "Cat"}, ...]`` as Label Studio takes it, or plain strings)."""
    if config.labels_data_key is None:
        return config.labels
    options = data.get(config.labels_data_key)
    names = [o.get("value") if isinstance(o, Mapping) else o for o in options or ()]
    labels = tuple(name.strip() for name in names if isinstance(name, str) and name.strip())
    if not isinstance(options, list) or not labels:
        raise LabelConfigError(
            f"the labels come from the task's data[{config.labels_data_key!r}], which holds no "
            'labels; give it a list like [{"value": "Cat"}, {"value": "Dog"}]'
        )
    return labels


def _aliases(labels_attrs: Mapping[str, Any]) -> dict[str, str]:
    """``<Label value="Cat" predicted_values="kitty,feline"/>``: the names a model may use."""
    aliases: dict[str, str] = {}
    for label, tag in labels_attrs.items():
        for alias in str(tag.attr.get("predicted_values") or "").split(","):
            if alias.strip():
                aliases[alias.strip()] = label
    return aliases


def _truthy(value: object) -> bool:
    return str(value).strip().lower() in {"true", "1", "yes"}
