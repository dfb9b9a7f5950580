"""Fixtures shared by all tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import CHARACTER_OCR, GREEN, labelstudio_fixture


@pytest.fixture
def ocr_config_xml() -> str:
    """The OCR label config Label Studio sent in the captured /setup request."""
    return labelstudio_fixture("setup")["schema"]


@pytest.fixture(scope="session")
def single_thread_torch() -> Iterator[None]:
    """Tiny-model work is faster on one thread: with two on a busy 2-core machine, the OpenMP
    threads spin against other processes (measured: engine tests 9 s vs 36 s)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model_dir(single_thread_torch: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from varco_labeler.engine.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-varco"))


@pytest.fixture(scope="session")
def ocr_specialist_dir(single_thread_torch: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model taught, through a lessons file, to answer like the OCR specialist."""
    import json

    from PIL import Image

    from varco_labeler.engine.tiny import build_tiny_model, read_lessons

    root = tmp_path_factory.mktemp("ocr-specialist")
    Image.new("RGB", (48, 40), GREEN).save(root / "green.png")
    lesson = {"image": "green.png", "prompt": "<ocr>", "answer": CHARACTER_OCR}
    (root / "lessons.jsonl").write_text(json.dumps(lesson) + "\n", encoding="utf-8")
    return build_tiny_model(root / "tiny-ocr", lessons=read_lessons(root / "lessons.jsonl"))
