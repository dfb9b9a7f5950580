"""Loading the engine a process runs: one function for workers, the embedded backend, `prelabel`
and `predict`, so they all load the same model under the same profile and version."""

from __future__ import annotations

import argparse
from typing import Any

from varco_labeler.engine.availability import (
    add_allow_cpu_argument,
    check_model,
    unavailable_from_load,
)
from varco_labeler.engine.base import Engine
from varco_labeler.engine.profiles import profile_for
from varco_labeler.settings import LOAD_DTYPES, Settings


def load_engine(settings: Settings, **options: Any) -> Engine:
    """The OpenAI-compatible engine with VARCO_OPENAI_URL, else the model loaded here with
    transformers (``options``: device, dtype, ... for ``TransformersEngine``). A model that cannot
    be had here (see ``availability.check_model``) or fails to load raises ``ModelUnavailable``."""
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
    device = options.get("device")
    found = check_model(settings, device=str(device) if device else None)
    from varco_labeler.engine.transformers_engine import TransformersEngine  # torch: only here

    loading = {
        "dtype": settings.load_dtype,
        "attn_implementation": settings.attn_implementation,
        "load_in_4bit": settings.load_in_4bit,
        "load_in_8bit": settings.load_in_8bit,
        # A directory or a complete copy in the hub cache loads without asking the hub (which
        # may hang offline).
        "local_files_only": found.local,
    }
    try:
        return TransformersEngine(
            settings.model,
            max_batch_size=settings.batch_size,
            model_version=settings.version,
            profile=profile,
            **(loading | options),
        )
    except Exception as error:  # missing or corrupt files, an unknown architecture, no memory
        raise unavailable_from_load(settings.model, error) from error


def add_loading_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that say how the model is loaded (each overrides its VARCO_LOAD_* variable)."""
    loading = parser.add_argument_group("loading the model (transformers)")
    loading.add_argument(
        "--dtype",
        dest="load_dtype",
        choices=LOAD_DTYPES,
        help="weights' dtype (env VARCO_LOAD_DTYPE; default auto: the checkpoint's)",
    )
    loading.add_argument(
        "--attn-implementation",
        help="sdpa, flash_attention_2, eager (env VARCO_LOAD_ATTN_IMPLEMENTATION)",
    )
    bits = loading.add_mutually_exclusive_group()
    bits.add_argument(
        "--load-in-4bit",
        action="store_const",
        const=True,
        help="4-bit weights with bitsandbytes, on a GPU (env VARCO_LOAD_IN_4BIT)",
    )
    bits.add_argument(
        "--load-in-8bit",
        action="store_const",
        const=True,
        help="8-bit weights with bitsandbytes, on a GPU (env VARCO_LOAD_IN_8BIT)",
    )
    add_allow_cpu_argument(loading)


def loading_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The loading flags given, as Settings overrides."""
    names = ("load_dtype", "attn_implementation", "load_in_4bit", "load_in_8bit", "allow_cpu")
    return {name: getattr(args, name, None) for name in names}
