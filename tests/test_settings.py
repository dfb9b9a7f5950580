import subprocess
import sys
from pathlib import Path

import pytest

from varco_labeler.settings import Settings, SettingsError


def test_defaults_and_environment_names():
    settings = Settings.from_env({})
    assert settings.embedded and settings.port == 9090 and settings.version == "VARCO-VISION-14B-HF"
    env = {
        "VARCO_MODEL": "/models/my-finetune/",
        "REDIS_URL": "redis://gpu-box:6379/1",
        "LABEL_STUDIO_URL": "http://ls:8080",
        "VARCO_ALLOWED_IMAGE_HOSTS": "images.example.com, CDN.example.com",
        "VARCO_LOCAL_IMAGE_ROOTS": "/srv/a:/srv/b",
        "PORT": "9191",
        "LOG_LEVEL": "debug",
    }
    settings = Settings.from_env(env)
    assert not settings.embedded
    assert settings.version == "my-finetune"
    assert settings.allowed_image_hosts == ("images.example.com", "cdn.example.com")
    assert settings.local_image_roots == (Path("/srv/a"), Path("/srv/b"))
    assert (settings.port, settings.log_level) == (9191, "DEBUG")
    assert Settings.from_env(env, port=1234).port == 1234  # flags win


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PORT": "http"}, "PORT='http' is not a number"),
        ({"REDIS_URL": "localhost:6379"}, "REDIS_URL='localhost:6379' must start with redis://"),
        ({"LABEL_STUDIO_URL": "ls:8080"}, "LABEL_STUDIO_URL='ls:8080' must be an http(s) URL"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL='LOUD' must be one of"),
        ({"BASIC_AUTH_USER": "ann"}, "set both BASIC_AUTH_USER and BASIC_AUTH_PASS"),
        ({"VARCO_BATCH_SIZE": "0"}, "VARCO_BATCH_SIZE must be positive"),
        ({"VARCO_TASK": "segment"}, "VARCO_TASK='segment' must be grounding or ocr"),
    ],
)
def test_wrong_values_name_the_variable(env, message):
    with pytest.raises(SettingsError) as error:
        Settings.from_env(env)
    assert message in str(error.value)


def test_secrets_stay_out_of_the_repr():
    settings = Settings.from_env(
        {"LABEL_STUDIO_API_KEY": "tok-123", "BASIC_AUTH_USER": "a", "BASIC_AUTH_PASS": "pw-456"}
    )
    assert "tok-123" not in repr(settings) and "pw-456" not in repr(settings)


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_commands_refuse_to_start_with_a_wrong_value(command):
    args = ["varco-worker"] if command == "worker" else ["varco-labeler", "serve"]
    done = subprocess.run(
        [str(Path(sys.executable).parent / args[0]), *args[1:]],
        env={"PORT": "nine", "REDIS_URL": "redis://127.0.0.1:1/0", "PATH": "/usr/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "PORT='nine' is not a number" in done.stderr


def test_a_trained_model_reports_the_version_train_gave_it(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    assert Settings(model=str(model)).version == "model"
    (model / "train_summary.json").write_text('{"model_version": "tiny+sft-1a2b3c4d"}')
    assert Settings(model=str(model)).version == "tiny+sft-1a2b3c4d"
    assert Settings(model=str(model), model_version="pinned").version == "pinned"
