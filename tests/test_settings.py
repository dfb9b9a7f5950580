import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from varco_labeler.engine.profiles import GENERIC, PROFILE_FILE, PROFILES, profile_for
from varco_labeler.settings import Settings, SettingsError, reveal


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


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("PORT", "0", "PORT must be a TCP port (1-65535), got 0"),
        ("PORT", "65536", "PORT must be a TCP port (1-65535), got 65536"),
        ("VARCO_BATCH_SIZE", "0", "VARCO_BATCH_SIZE must be positive, got 0"),
        ("VARCO_PRELABEL_JOB_SIZE", "0", "VARCO_PRELABEL_JOB_SIZE must be positive, got 0"),
        ("VARCO_PRELABEL_JOB_SIZE", "-5", "VARCO_PRELABEL_JOB_SIZE must be positive, got -5"),
        ("VARCO_PREDICT_DEADLINE", "0", "VARCO_PREDICT_DEADLINE must be positive, got 0.0"),
        ("VARCO_PREDICT_DEADLINE", "nan", "VARCO_PREDICT_DEADLINE must be positive, got nan"),
        ("VARCO_MAX_PENDING_TASKS", "0", "VARCO_MAX_PENDING_TASKS must be positive, got 0"),
        ("VARCO_JOB_TIMEOUT", "-1", "VARCO_JOB_TIMEOUT must be positive, got -1"),
        ("VARCO_JOB_RETRIES", "-1", "VARCO_JOB_RETRIES must be 0 or more, got -1"),
        ("VARCO_RESULT_TTL", "0", "VARCO_RESULT_TTL must be positive, got 0"),
        ("VARCO_RESULT_TTL", "-60", "VARCO_RESULT_TTL must be positive, got -60"),
        ("VARCO_CACHE_TTL", "0", "VARCO_CACHE_TTL must be positive, got 0"),
        ("VARCO_CACHE_TTL", "-1", "VARCO_CACHE_TTL must be positive, got -1"),
        ("VARCO_MAX_IMAGE_BYTES", "0", "VARCO_MAX_IMAGE_BYTES must be positive, got 0"),
        ("VARCO_MAX_IMAGE_PIXELS", "0", "VARCO_MAX_IMAGE_PIXELS must be positive, got 0"),
        ("VARCO_MAX_IMAGE_PIXELS", "-1", "VARCO_MAX_IMAGE_PIXELS must be positive, got -1"),
        ("VARCO_DOWNLOAD_THREADS", "0", "VARCO_DOWNLOAD_THREADS must be positive, got 0"),
        ("VARCO_IMAGE_TIMEOUT", "0", "VARCO_IMAGE_TIMEOUT must be positive, got 0.0"),
        ("VARCO_IMAGE_TIMEOUT", "-2.5", "VARCO_IMAGE_TIMEOUT must be positive, got -2.5"),
        ("VARCO_IMAGE_TIMEOUT", "inf", "VARCO_IMAGE_TIMEOUT must be positive, got inf"),
    ],
)
def test_numbers_that_make_no_sense_fail_at_start_naming_the_variable(variable, value, message):
    with pytest.raises(SettingsError) as error:
        Settings.from_env({variable: value})
    assert str(error.value) == message


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("VARCO_JOB_RETRIES", "0"),
        ("VARCO_PRELABEL_JOB_SIZE", "1"),
        ("VARCO_BATCH_SIZE", "1"),
        ("VARCO_RESULT_TTL", "1"),
        ("VARCO_CACHE_TTL", "1"),
        ("VARCO_IMAGE_TIMEOUT", "0.5"),
        ("VARCO_MAX_IMAGE_PIXELS", "1"),
        ("PORT", "65535"),
    ],
)
def test_the_smallest_sensible_numbers_are_accepted(variable, value):
    Settings.from_env({variable: value})


def test_flags_are_checked_like_the_environment():
    with pytest.raises(SettingsError, match="VARCO_BATCH_SIZE must be positive, got 0"):
        Settings.from_env({}, batch_size=0)


OCR = "NCSOFT/VARCO-VISION-2.0-1.7B-OCR"


@pytest.mark.parametrize("name", [OCR, "varco-vision-2.0-1.7b-ocr", "generic"])
def test_varco_profile_takes_a_known_name(name, tmp_path):
    settings = Settings.from_env({"VARCO_PROFILE": name, "VARCO_MODEL": str(tmp_path)})
    assert settings.profile == name
    assert profile_for(settings.model, settings.profile) is profile_for("x", name)
    assert Settings.from_env({}).profile is None


@pytest.mark.parametrize("name", ["VARCO-VISION-3", "ocr", "NCSOFT"])
def test_an_unknown_varco_profile_names_the_variable_and_the_known_names(name):
    with pytest.raises(SettingsError) as error:
        Settings.from_env({"VARCO_PROFILE": name})
    message = str(error.value)
    assert message.startswith(f"VARCO_PROFILE={name!r} is not a known profile")
    assert all(known in message for known in (*PROFILES, GENERIC.name))


def test_a_model_directory_with_a_bad_profile_file_fails_at_start(tmp_path):
    (tmp_path / PROFILE_FILE).write_text('{"profile": "VARCO-VISION-3"}')
    with pytest.raises(SettingsError, match=r"VARCO_MODEL: .*unknown profile 'VARCO-VISION-3'"):
        Settings.from_env({"VARCO_MODEL": str(tmp_path)})
    # VARCO_PROFILE overrides the file, so the file is not read.
    Settings.from_env({"VARCO_MODEL": str(tmp_path), "VARCO_PROFILE": "generic"})


def test_secrets_stay_out_of_the_repr():
    settings = Settings.from_env(
        {
            "LABEL_STUDIO_API_KEY": "tok-123",
            "BASIC_AUTH_USER": "a",
            "BASIC_AUTH_PASS": "pw-456",
            "REDIS_URL": "redis://:redis-pw-789@queue:6379/0",
        }
    )
    shown = repr(settings)
    assert "tok-123" not in shown and "pw-456" not in shown and "redis-pw-789" not in shown
    assert "redis://:***@queue:6379/0" in shown  # which Redis, without its password


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


def test_flags_win_over_the_environment_which_wins_over_the_env_file(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text(
        "PORT=7001\nVARCO_BATCH_SIZE=3\nLABEL_STUDIO_API_KEY=key-from-file\n# a comment\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PORT", "7002")
    monkeypatch.delenv("VARCO_BATCH_SIZE", raising=False)
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    settings = Settings.from_env()
    assert (settings.port, settings.batch_size) == (7002, 3)
    assert reveal(settings.label_studio_api_key) == "key-from-file"
    assert Settings.from_env(port=7003, batch_size=None).port == 7003  # None: the flag is unset
    # A mapping given to from_env replaces the environment and the file.
    assert Settings.from_env({}).port == 9090


def test_secrets_are_revealed_only_on_request():
    settings = Settings.from_env(
        {
            "LABEL_STUDIO_API_KEY": "tok-123",
            "BASIC_AUTH_USER": "a",
            "BASIC_AUTH_PASS": "pw-456",
            "VARCO_DATABASE_URL": "postgresql+psycopg://ann:db-pw-1@db/varco?sslpassword=x",
        }
    )
    shown = f"{settings} {settings!r} {settings.database_url} {settings.label_studio_api_key}"
    assert "tok-123" not in shown and "pw-456" not in shown and "db-pw-1" not in shown
    assert "postgresql+psycopg://ann:***@db/varco?..." in shown
    assert reveal(settings.label_studio_api_key) == "tok-123"
    assert (
        reveal(settings.database_url) == "postgresql+psycopg://ann:db-pw-1@db/varco?sslpassword=x"
    )
    assert reveal(None) is None


def test_a_wrong_url_is_named_without_its_password():
    with pytest.raises(SettingsError) as error:
        Settings.from_env({"REDIS_URL": "http://:redis-pw@queue:6379/0"})
    assert str(error.value) == "REDIS_URL='http://:***@queue:6379/0' must start with redis://"


def test_settings_are_immutable_and_a_changed_copy_is_checked_again():
    settings = Settings.from_env({"REDIS_URL": "redis://:pw@queue:6379/0"})
    with pytest.raises(ValidationError):
        settings.port = 1  # type: ignore[misc]
    changed = settings.replace(local_image_roots=(Path("/srv/images"),))
    assert changed.local_image_roots == (Path("/srv/images"),)
    assert reveal(changed.redis_url) == "redis://:pw@queue:6379/0"
    with pytest.raises(SettingsError, match="VARCO_BATCH_SIZE must be positive, got 0"):
        settings.replace(batch_size=0)
