"""Shared fixtures: the tiny VARCO-shaped checkpoint, built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir: Path):
    from varco_labeler.engine.transformers_engine import TransformersEngine

    return TransformersEngine(tiny_model_dir, device="cpu", max_batch_size=8)
