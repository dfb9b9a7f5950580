"""Fixtures for the feedback tests: a fresh store and an image reader that needs no server."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from varco_labeler.feedback.store import FeedbackStore

# The colours the tiny model was taught on (engine.tiny.RED / BLUE), without importing torch here.
RED, BLUE = (220, 30, 30), (30, 30, 220)


class PngImages:
    """Serves image references as small PNGs: red for ``a.png``, blue for anything else (the
    colours the tiny model was taught on)."""

    def read_bytes(self, ref: str) -> bytes:
        buffer = io.BytesIO()
        Image.new("RGB", (48, 40), RED if "a.png" in ref else BLUE).save(buffer, "PNG")
        return buffer.getvalue()


@pytest.fixture
def png_images() -> PngImages:
    return PngImages()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FeedbackStore]:
    store = FeedbackStore(model_dir=tmp_path / "model-dir")
    yield store
    store.close()
