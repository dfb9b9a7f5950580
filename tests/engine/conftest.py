"""Shared fixtures: the tiny VARCO-shaped checkpoint, built once per test session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def single_thread_torch() -> Iterator[None]:
    """Tiny-model work is faster on one thread: with two on a busy 2-core machine, the OpenMP
    threads spin against other processes (measured: engine tests 9 s vs 36 s)."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model_dir(single_thread_torch: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from varco_labeler.engine.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-varco"))


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir: Path):
    from varco_labeler.engine.transformers_engine import TransformersEngine

    return TransformersEngine(tiny_model_dir, device="cpu", max_batch_size=8)
