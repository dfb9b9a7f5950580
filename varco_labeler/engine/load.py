"""Loading the engine a process runs: one function for workers, the embedded backend, `prelabel`
and `predict`, so they all load the same model under the same profile and version."""

from __future__ import annotations

from typing import Any

from varco_labeler.engine.base import Engine
from varco_labeler.engine.profiles import profile_for
from varco_labeler.settings import Settings


def load_engine(settings: Settings, **options: Any) -> Engine:
    """The OpenAI-compatible engine with VARCO_OPENAI_URL, else the model loaded here with
    transformers (``options``: device, dtype, ... for ``TransformersEngine``)."""
    profile = profile_for(settings.model, settings.profile)
    if settings.openai_url:
        from varco_labeler.engine.openai_engine import OpenAIEngine

        return OpenAIEngine(
            settings.openai_url,
            settings.model,
            max_concurrency=settings.batch_size,
            model_version=settings.version,
            profile=profile,
        )
    from varco_labeler.engine.transformers_engine import TransformersEngine  # torch: only here

    return TransformersEngine(
        settings.model,
        max_batch_size=settings.batch_size,
        model_version=settings.version,
        profile=profile,
        **options,
    )
