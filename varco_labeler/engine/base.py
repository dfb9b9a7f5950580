"""The engine interface: batches of (image, prompt) in, raw text, parse and region scores out.

Pure Python: the light backend may import this module; the engines that need torch or an HTTP
client live in their own modules and are imported only by whoever runs them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from varco_labeler.regions import model_output
from varco_labeler.varco import Parsed, Task


@dataclass(frozen=True)
class Request:
    """One image and the prompt to ask about it; ``max_new_tokens=None`` uses the profile's."""

    image: Image.Image
    prompt: str
    task: Task
    max_new_tokens: int | None = None


@dataclass(frozen=True)
class Result:
    """What the model said about one request.

    ``raw`` is the generated text with the VARCO tags kept and end-of-turn/padding removed.
    ``region_scores`` holds one confidence in (0, 1] per item of ``parsed.grounded``, or ``None``
    where it could not be computed. ``seconds`` is the wall time of the batch (or call) that
    carried the request: requests generated together share it.
    """

    raw: str
    parsed: Parsed
    region_scores: list[float | None]
    prompt_tokens: int
    completion_tokens: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        """Regions (after the checkpoint's post-processing), parser notes, the raw text for the
        record, and token counts: plain JSON for the queue, the cache and ``predict``."""
        return {
            **model_output(self.parsed, self.region_scores),
            "raw": self.raw,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "seconds": round(self.seconds, 4),
        }


class Engine(ABC):
    """Turns batches of requests into results, in the same order. Load once, call many times."""

    #: Identifies the weights (and profile) that produced a result, for Label Studio's
    #: ``model_version`` and for training-data provenance.
    model_version: str

    @abstractmethod
    def generate(self, requests: Sequence[Request]) -> list[Result]:
        """One result per request, in order. Implementations batch as they see fit."""
