"""Who annotated, when, how long it took, and whether it was reviewed: read from the annotation
objects of the tasks a source gives, indexed by annotation id.

Examples carry the annotation's id; the report (per annotator, time saved) and the export filters
(``--annotator``, ``--since``, ``--reviewed-only``) look the rest up here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from varco_labeler.feedback.pairing import Example, as_int
from varco_labeler.feedback.store import parse_timestamp


@dataclass(frozen=True)
class AnnotationInfo:
    """``annotator``: the e-mail when the source names it, else the user id as text;
    ``names``: every way a filter may name the annotator (id and e-mail). ``lead_time``: seconds
    Label Studio measured between opening the task and submitting. ``reviewed``: marked ground
    truth, or accepted in a review (Label Studio Enterprise exports carry ``reviews``)."""

    annotator: str | None
    names: frozenset[str]
    lead_time: float | None
    annotated_at: datetime | None
    reviewed: bool


def annotation_info(annotation: Mapping[str, Any]) -> AnnotationInfo:
    user = annotation.get("completed_by")
    names: set[str] = set()
    annotator = None
    if isinstance(user, Mapping):
        user_id, email = as_int(user.get("id")), user.get("email")
        names = {str(user_id)} if user_id is not None else set()
        if isinstance(email, str) and email:
            names.add(email)
            annotator = email
        elif user_id is not None:
            annotator = str(user_id)
    elif as_int(user) is not None:
        annotator = str(as_int(user))
        names = {annotator}
    lead_time = annotation.get("lead_time")
    reviews = annotation.get("reviews") or []
    accepted = any(isinstance(r, Mapping) and r.get("accepted") for r in reviews)
    return AnnotationInfo(
        annotator=annotator,
        names=frozenset(names),
        lead_time=float(lead_time)
        if isinstance(lead_time, int | float) and lead_time > 0
        else None,
        annotated_at=_aware(
            parse_timestamp(annotation.get("updated_at") or annotation.get("created_at"))
        ),
        reviewed=bool(annotation.get("ground_truth")) or accepted,
    )


def index_annotations(tasks: Iterable[Mapping[str, Any]]) -> dict[int, AnnotationInfo]:
    """Annotation id -> what is known about it, for tasks in Label Studio's export shape."""
    index = {}
    for task in tasks:
        for annotation in task.get("annotations") or []:
            if isinstance(annotation, Mapping) and as_int(annotation.get("id")) is not None:
                index[as_int(annotation["id"])] = annotation_info(annotation)
    return index


def _aware(moment: datetime | None) -> datetime | None:
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)  # Label Studio writes UTC
    return moment


@dataclass(frozen=True)
class AnnotationFilter:
    """Keep examples whose annotation was made by one of ``annotators`` (id or e-mail), at or
    after ``since``, and reviewed when ``reviewed_only``; an unset criterion keeps everything."""

    annotators: frozenset[str] = frozenset()
    since: datetime | None = None
    reviewed_only: bool = False

    @property
    def active(self) -> bool:
        return bool(self.annotators or self.since or self.reviewed_only)

    def keeps(self, info: AnnotationInfo | None) -> bool:
        if not self.active:
            return True
        if info is None:  # nothing known about the annotation: it cannot pass a criterion
            return False
        if self.annotators and not (info.names & self.annotators):
            return False
        if self.since and (info.annotated_at is None or info.annotated_at < self.since):
            return False
        return info.reviewed or not self.reviewed_only

    def apply(
        self, examples: Iterable[Example], index: Mapping[int, AnnotationInfo]
    ) -> list[Example]:
        return [e for e in examples if self.keeps(info_of(e, index))]


def info_of(example: Example, index: Mapping[int, AnnotationInfo]) -> AnnotationInfo | None:
    return index.get(example.annotation_id) if example.annotation_id is not None else None


def parse_since(text: str) -> datetime:
    """``2026-11-01`` or a full ISO time; without a zone, UTC."""
    moment = _aware(datetime.fromisoformat(text))
    assert moment is not None
    return moment
