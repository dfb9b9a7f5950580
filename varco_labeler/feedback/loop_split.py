"""The loop's held-out set: corrected tasks it never trains on, only judges candidates by.

A task is assigned a side once, the first time a round sees its correction, and keeps it (the
store records it). Tasks that show the same image share a side, so a candidate is never judged on
a picture it trained on. New tasks are taken in the order of a hash of their image reference
(deterministic, unrelated to the order annotators worked in) and held out until the held-out set
is ``share`` of all assigned tasks (rounded up): it grows with the corrections.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping


def assign(
    images: Mapping[int, str], assigned: Mapping[int, bool], share: float, seed: int = 0
) -> dict[int, bool]:
    """Sides for the tasks of ``images`` (task id -> image reference) not in ``assigned`` (task
    id -> held out): True for held out."""
    if not 0.0 < share < 1.0:
        raise ValueError(f"the held-out share must be between 0 and 1, not {share}")
    side_of_image: dict[str, bool] = {}
    for task_id, held_out in assigned.items():
        if task_id in images:
            side_of_image.setdefault(images[task_id], held_out)
    new: dict[int, bool] = {}
    fresh: dict[str, list[int]] = {}
    for task_id, image in images.items():
        if task_id in assigned:
            continue
        if image in side_of_image:
            new[task_id] = side_of_image[image]
        else:
            fresh.setdefault(image, []).append(task_id)
    held = sum(assigned.values()) + sum(new.values())
    target = math.ceil(share * (len(assigned) + len(new) + sum(map(len, fresh.values()))))
    for image in sorted(fresh, key=lambda ref: _position(ref, seed)):
        held_out = held < target
        for task_id in fresh[image]:
            new[task_id] = held_out
        held += len(fresh[image]) if held_out else 0
    return new


def _position(image: str, seed: int) -> bytes:
    return hashlib.sha256(f"{seed}:{image}".encode()).digest()
