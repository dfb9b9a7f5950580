"""How the model is loaded is one setting for every process that loads it: VARCO_LOAD_* in the
environment, or the same flags on serve, varco-worker and predict."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from varco_labeler.engine.load import add_loading_arguments, load_engine, loading_flags
from varco_labeler.settings import Settings, SettingsError


def test_loading_settings_come_from_the_environment_and_flags_win() -> None:
    env = {"VARCO_LOAD_DTYPE": "bfloat16", "VARCO_LOAD_ATTN_IMPLEMENTATION": "sdpa"}
    settings = Settings.from_env(env)
    assert (settings.load_dtype, settings.attn_implementation) == ("bfloat16", "sdpa")
    assert Settings.from_env({"VARCO_LOAD_IN_4BIT": "true"}).load_in_4bit is True
    parser = argparse.ArgumentParser()
    add_loading_arguments(parser)
    flags = loading_flags(parser.parse_args(["--dtype", "float32"]))
    assert Settings.from_env(env, **flags).load_dtype == "float32"
    assert Settings.from_env(env, **loading_flags(parser.parse_args([]))).load_dtype == "bfloat16"
    with pytest.raises(SystemExit):
        parser.parse_args(["--load-in-4bit", "--load-in-8bit"])


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"VARCO_LOAD_DTYPE": "fp8"}, "VARCO_LOAD_DTYPE='fp8' must be one of auto, bfloat16"),
        ({"VARCO_LOAD_IN_4BIT": "1", "VARCO_LOAD_IN_8BIT": "1"}, "not both"),
    ],
)
def test_wrong_loading_settings_are_named(env, message) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_engine_loads_as_the_settings_say(tiny_model_dir: Path, dtype) -> None:
    name = str(dtype).removeprefix("torch.")
    settings = Settings(model=str(tiny_model_dir), load_dtype=name, batch_size=2)
    engine = load_engine(settings, device="cpu")
    assert engine.model.dtype == dtype


def test_the_worker_and_predict_take_the_loading_flags() -> None:
    for command in (["varco-worker"], ["varco-labeler", "predict"], ["varco-labeler", "serve"]):
        done = subprocess.run(
            [str(Path(sys.executable).parent / command[0]), *command[1:], "--help"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        for flag in ("--dtype", "--attn-implementation", "--load-in-4bit", "--load-in-8bit"):
            assert flag in done.stdout, (command, flag)
