"""A model that cannot be had ends serve, varco-worker and predict with one paragraph and exit
status 3, never a traceback; and the checks behind it (engine/availability.py) on real
directories, a real hub cache layout and a hub that cannot be reached."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from processes import BIN, RedisProcess, free_port

from varco_labeler.engine.availability import (
    CPU_WEIGHTS_LIMIT,
    EXIT_MODEL_UNAVAILABLE,
    ModelUnavailable,
    check_model,
    locate,
    report,
)
from varco_labeler.engine.profiles import DEFAULT_MODEL
from varco_labeler.settings import Settings

WAYS_FORWARD = (
    "VARCO_MODEL",
    "NCSOFT/VARCO-VISION-2.0-1.7B",
    "varco-worker",
    "tiny-model /tmp/tiny",
)


def _clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """No setting of ours, an empty hub cache: a first run on a fresh machine."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("VARCO_", "HF_", "LABEL_STUDIO_", "TRANSFORMERS_"))
        and name not in ("REDIS_URL", "MODEL_DIR", "LOG_LEVEL", "PORT")
    }
    return env | {"HF_HOME": str(tmp_path / "hf-home"), "MODEL_DIR": str(tmp_path / "md")} | extra


def _run(tmp_path: Path, env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    # cwd: no .env file of the checkout's is read.
    return subprocess.run(
        [str(BIN / argv[0]), *argv[1:]],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _assert_paragraph(done: subprocess.CompletedProcess[str], command: str, what: str) -> None:
    assert done.returncode == EXIT_MODEL_UNAVAILABLE, done.stderr
    assert "Traceback" not in done.stderr
    text = " ".join(done.stderr.split())  # the paragraph is wrapped
    assert f"{command}: cannot load the model {DEFAULT_MODEL}: {what}" in text
    for way in WAYS_FORWARD:
        assert way in text


def test_serve_offline_without_a_local_copy_prints_the_paragraph(tmp_path: Path) -> None:
    env = _clean_env(tmp_path, HF_HUB_OFFLINE="1")
    done = _run(tmp_path, env, "varco-labeler", "serve", "--port", str(free_port()))
    _assert_paragraph(done, "varco-labeler serve", "HF_HUB_OFFLINE is set")


def test_run_sh_on_a_machine_without_hub_or_gpu_prints_the_paragraph(tmp_path: Path) -> None:
    """The README's first command, as a new user runs it here: setup (already done, so quick),
    then serve with the default 14B model, which cannot be had."""
    env = _clean_env(tmp_path, HF_ENDPOINT=f"http://127.0.0.1:{free_port()}")
    script = Path(__file__).resolve().parents[2] / "scripts" / "run.sh"
    done = subprocess.run(
        [str(script)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    _assert_paragraph(done, "./scripts/run.sh serve", "there is no local copy and the model hub")
    text = " ".join(done.stderr.split())
    assert "./scripts/run.sh tiny-model /tmp/tiny && VARCO_MODEL=/tmp/tiny ./scripts/run.sh" in text


def test_predict_with_an_unreachable_hub_prints_the_paragraph(tmp_path: Path) -> None:
    image = tmp_path / "red.png"
    from PIL import Image

    Image.new("RGB", (8, 8), (200, 0, 0)).save(image)
    env = _clean_env(tmp_path, HF_ENDPOINT=f"http://127.0.0.1:{free_port()}")
    done = _run(tmp_path, env, "varco-labeler", "predict", str(image))
    _assert_paragraph(done, "varco-labeler predict", "there is no local copy and the model hub")
    assert "cannot be reached (ConnectError" in " ".join(done.stderr.split())


def test_worker_without_the_model_prints_the_paragraph(tmp_path: Path) -> None:
    redis = RedisProcess(tmp_path)
    redis.start()
    try:
        env = _clean_env(tmp_path, HF_HUB_OFFLINE="1", REDIS_URL=redis.url)
        done = _run(tmp_path, env, "varco-worker", "--burst")
    finally:
        redis.stop()
    _assert_paragraph(done, "varco-worker", "HF_HUB_OFFLINE is set")


def test_a_load_failure_is_the_paragraph_and_its_trace_only_at_debug(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from varco_labeler.engine.load import load_engine

    broken = _checkpoint(tmp_path / "broken")
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelUnavailable) as failed:
        load_engine(Settings(model=str(broken)), device="cpu")
    assert "loading it failed" in failed.value.reason
    assert failed.value.cause and "\n" not in failed.value.cause
    assert report(failed.value, "varco-labeler predict") == EXIT_MODEL_UNAVAILABLE
    quiet = capsys.readouterr().err
    assert "Traceback" not in quiet and "Ways forward" in quiet
    report(failed.value, "varco-labeler predict", "DEBUG")
    assert "Traceback" in capsys.readouterr().err


# -- the checks, in this process -----------------------------------------------------------------


def _checkpoint(path: Path, weights: int = 1024, *, shards: int = 0) -> Path:
    """A checkpoint directory's files; the weights sparse (no disk used), never loaded."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "llava_onevision"}))
    names = [f"model-{i:05d}-of-{shards:05d}.safetensors" for i in range(1, shards + 1)]
    if shards:
        index = {"weight_map": {f"layer{i}": name for i, name in enumerate(names)}}
        (path / "model.safetensors.index.json").write_text(json.dumps(index))
    for name in names or ["model.safetensors"]:
        with open(path / name, "wb") as file:
            file.truncate(weights // max(shards, 1))
    return path


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda d: (d / "config.json").unlink(), "has no config.json"),
        (lambda d: (d / "model-00002-of-00002.safetensors").unlink(), "lacks 1 of its 2 weight"),
        (lambda d: (d / "config.json").write_text("{}"), "names no model_type"),
        (lambda d: (d / "config.json").write_text("{oops"), "config.json is unreadable"),
    ],
)
def test_a_broken_directory_is_named(tmp_path: Path, damage, reason: str) -> None:
    model = _checkpoint(tmp_path / "model", shards=2)
    assert locate(str(model)).weights_bytes == 1024
    damage(model)
    with pytest.raises(ModelUnavailable, match=reason):
        locate(str(model))


def test_a_missing_directory_or_weights_are_named(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="does not exist"):
        locate(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    with pytest.raises(ModelUnavailable, match="holds no weights"):
        locate(str(tmp_path / "empty"))


@pytest.mark.skipif(sys.platform != "linux", reason="sparse files and /proc/meminfo")
def test_a_large_checkpoint_without_a_gpu_is_refused_unless_allowed(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the CPU rule does not apply")
    large = _checkpoint(tmp_path / "large", weights=CPU_WEIGHTS_LIMIT + 1024**3)
    with pytest.raises(ModelUnavailable, match="there is no GPU here") as refused:
        check_model(Settings(model=str(large)))
    assert "--allow-cpu" in refused.value.hint
    assert check_model(Settings(model=str(large), allow_cpu=True)).device == "cpu"
    # More than any machine's memory: refused even when allowed.
    huge = _checkpoint(tmp_path / "huge", weights=1024**4 * 4)
    with pytest.raises(ModelUnavailable, match="of memory and this machine has"):
        check_model(Settings(model=str(huge), allow_cpu=True))


def test_a_complete_copy_in_the_hub_cache_is_used_without_the_hub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    repo = tmp_path / "models--NCSOFT--VARCO-VISION-2.0-1.7B"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    snapshot = _checkpoint(repo / "snapshots" / "abc123", weights=4096, shards=2)
    found = locate("NCSOFT/VARCO-VISION-2.0-1.7B")
    assert (found.local, found.weights_bytes) == (True, 4096)
    assert str(snapshot) in found.where
    # A partial download is no copy: offline, nothing else can be had.
    (snapshot / "model-00001-of-00002.safetensors").unlink()
    with pytest.raises(ModelUnavailable, match="HF_HUB_OFFLINE is set"):
        locate("NCSOFT/VARCO-VISION-2.0-1.7B")
