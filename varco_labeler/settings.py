"""Configuration from flags, the environment and a ``.env`` file, checked at start.

Names follow the Label Studio ML backend ecosystem (LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY,
BASIC_AUTH_USER, BASIC_AUTH_PASS, MODEL_DIR, LOG_LEVEL) plus our own VARCO_* and REDIS_URL.
A flag wins over the environment, which wins over ``.env`` in the working directory. A wrong
value fails at start with a message naming the variable.

Secrets never show in a repr, a log line or an error: the Label Studio key and the basic auth
password are :class:`~pydantic.SecretStr`, REDIS_URL and VARCO_DATABASE_URL are
:class:`SecretUrl` (shown with their password and query hidden). The code that sends or connects
takes the plain value with :func:`reveal`, and nothing else does.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlparse

from pydantic import SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from varco_labeler.engine.profiles import (
    DEFAULT_MODEL,
    model_version,
    profile_for,
    profile_named,
    profile_names,
)

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Read by from_env() from the working directory, under the environment.
ENV_FILE = Path(".env")


class SettingsError(ValueError):
    """A configuration value is wrong; the message names it."""


class SecretUrl(SecretStr):
    """A connection URL that may carry a password: shown as ``redis://:***@queue:6379/0`` (which
    server, not how to get in), revealed only where the connection is made."""

    def _display(self) -> str:
        return _without_password(self.get_secret_value())


class Settings(BaseSettings):
    """Every setting, validated and checked on construction; immutable.

    ``Settings(...)`` holds what it is given, and defaults; :meth:`from_env` reads the
    environment and ``.env`` under the flags.
    """

    model_config = SettingsConfigDict(frozen=True, extra="forbid")

    model: str = DEFAULT_MODEL
    # The checkpoint profile (prompts, token limits, OCR handling), when the model's name or its
    # varco_profile.json does not say: a known checkpoint's name, or "generic".
    profile: str | None = None
    # What predictions are stamped with; backend and workers must agree (default: model's name).
    model_version: str | None = None
    # An OpenAI-compatible server (vLLM) that serves the model; unset: load it with transformers.
    openai_url: str | None = None
    # Unset: the embedded mode, the engine runs in the backend process.
    redis_url: SecretUrl | None = None
    queue_name: str = "varco"
    label_studio_url: str | None = None
    label_studio_api_key: SecretStr | None = None
    basic_auth_user: str | None = None
    basic_auth_pass: SecretStr | None = None
    model_dir: Path = Path("./varco-data")
    # The feedback store: predictions and annotations. Unset: SQLite under MODEL_DIR.
    database_url: SecretUrl | None = None
    log_level: str = "INFO"
    host: str = "0.0.0.0"
    port: int = 9090
    # Tasks per queue job: one GPU batch.
    batch_size: int = 8
    # Tasks per prelabel job: run in GPU batches of batch_size, pushed to Label Studio at once
    # (each push costs Label Studio a fixed 50-150 ms, growing with the project).
    prelabel_job_size: int = 64
    # /predict answers within this many seconds with what finished (Label Studio waits 100 s).
    predict_deadline: float = 80.0
    # Tasks this backend accepts at once; more get 503 with Retry-After (back-pressure).
    max_pending_tasks: int = 1000
    # A job running longer is killed; set it above the slowest batch.
    job_timeout: int = 600
    job_retries: int = 2
    result_ttl: int = 3600
    # Raw outputs are cached by image content, prompt and model version for this long.
    cache_ttl: int = 7 * 24 * 3600
    # Hosts that task image URLs may point at, besides Label Studio itself ("*" allows any).
    allowed_image_hosts: tuple[str, ...] = ()
    # Local directories that task image paths may point into.
    local_image_roots: tuple[Path, ...] = ()
    max_image_bytes: int = 50 * 1024 * 1024
    max_image_pixels: int = 100_000_000
    image_timeout: float = 15.0
    # Images a worker fetches at once (each on its own connection).
    download_threads: int = 8
    # The task when the label config does not decide it: "grounding" or "ocr".
    default_task: str | None = None
    # How the transformers engine loads the model, in every process that loads it (serve
    # embedded, varco-worker, predict, prelabel without a queue); flags override.
    load_dtype: str = "auto"
    attn_implementation: str | None = None
    load_in_4bit: bool = False
    load_in_8bit: bool = False
    # Load a checkpoint too large for a CPU-only machine anyway (minutes per image).
    allow_cpu: bool = False
    # `serve` reconciles the feedback store with Label Studio every this many seconds (what
    # `varco-labeler sync --all` does); 0: never (webhooks only, `sync` by hand).
    sync_interval: float = 0.0
    # A worker serves Prometheus metrics on this port (the backend at /metrics); 0: off.
    metrics_port: int = 0
    # A queue job whose engine reports no progress (a batch, a generation step) for this many
    # seconds is failed and requeued, and its worker restarts; 0: never.
    job_stall_timeout: float = 0.0
    # A worker claims its next queued job as a job starts, fetches its first images and runs its
    # first GPU batch while the current job's last push is in flight (varco_labeler.lookahead).
    lookahead: bool = True

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as error:
            raise _settings_error(error) from None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Only what the constructor is given: from_env() decides where variables come from.
        return (init_settings,)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Settings from ``overrides`` (flags), over the environment, over ``.env`` in the
        working directory. ``env`` replaces both (tests). An empty variable or a None flag is
        unset."""
        layers = (
            [DotEnvSettingsSource(cls, env_file=ENV_FILE, case_sensitive=True).env_vars, os.environ]
            if env is None
            else [env]
        )
        values: dict[str, object] = {}
        for variables in layers:
            for name, variable in _ENV_NAMES.items():
                if variables.get(variable):
                    values[name] = variables[variable]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def replace(self, **changes: object) -> Self:
        """A copy with ``changes``, validated and checked like a new one."""
        return type(self)(**{**dict(self), **changes})

    @property
    def version(self) -> str:
        """The model version predictions carry (see :func:`engine.profiles.model_version`)."""
        return model_version(self.model, self.model_version)

    @property
    def model_chosen(self) -> bool:
        """Whether the model (or its version) was chosen, rather than left at the default."""
        return self.model != DEFAULT_MODEL or self.model_version is not None

    @property
    def embedded(self) -> bool:
        return not self.redis_url

    @field_validator(
        "redis_url", "label_studio_api_key", "basic_auth_pass", "database_url", mode="before"
    )
    @classmethod
    def _plain_secret(cls, value: object) -> object:
        # A secret of another kind (SecretStr for a SecretUrl, from replace()) is taken as its
        # value; an empty one is unset.
        return reveal(value) or None

    @field_validator("allowed_image_hosts", mode="before")
    @classmethod
    def _host_list(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(h.strip().lower() for h in value.split(",") if h.strip())
        return value

    @field_validator("local_image_roots", mode="before")
    @classmethod
    def _directory_list(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(Path(p).resolve() for p in value.split(os.pathsep) if p.strip())
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_case(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _checked(self) -> Self:
        self.check()
        return self

    def check(self) -> None:
        redis = reveal(self.redis_url)
        if redis and urlparse(redis).scheme not in ("redis", "rediss", "unix"):
            raise SettingsError(f"REDIS_URL={str(self.redis_url)!r} must start with redis://")
        ls_scheme = urlparse(self.label_studio_url or "http://").scheme
        if ls_scheme not in ("http", "https"):
            raise SettingsError(
                f"LABEL_STUDIO_URL={self.label_studio_url!r} must be an http(s) URL"
            )
        if self.log_level not in LOG_LEVELS:
            raise SettingsError(f"LOG_LEVEL={self.log_level!r} must be one of {LOG_LEVELS}")
        if bool(self.basic_auth_user) != bool(self.basic_auth_pass):
            raise SettingsError("set both BASIC_AUTH_USER and BASIC_AUTH_PASS, or neither")
        for name, (valid, wanted) in _NUMBER_RULES.items():
            value = getattr(self, name)
            if not (math.isfinite(value) and valid(value)):
                raise SettingsError(f"{_ENV_NAMES[name]} must be {wanted}, got {value!r}")
        if self.load_dtype not in LOAD_DTYPES:
            raise SettingsError(
                f"VARCO_LOAD_DTYPE={self.load_dtype!r} must be one of {', '.join(LOAD_DTYPES)}"
            )
        if self.load_in_4bit and self.load_in_8bit:
            raise SettingsError("set VARCO_LOAD_IN_4BIT or VARCO_LOAD_IN_8BIT, not both")
        if self.default_task not in (None, "grounding", "ocr"):
            raise SettingsError(f"VARCO_TASK={self.default_task!r} must be grounding or ocr")
        if self.profile is not None:
            try:
                profile_named(self.profile)
            except ValueError:
                raise SettingsError(
                    f"VARCO_PROFILE={self.profile!r} is not a known profile; "
                    f"choose one of {', '.join(profile_names())}"
                ) from None
        else:
            try:
                profile_for(self.model)  # a model directory's varco_profile.json must be readable
            except ValueError as error:
                raise SettingsError(f"VARCO_MODEL: {error}") from None


_ENV_NAMES = {
    "model": "VARCO_MODEL",
    "model_version": "VARCO_MODEL_VERSION",
    "profile": "VARCO_PROFILE",
    "openai_url": "VARCO_OPENAI_URL",
    "redis_url": "REDIS_URL",
    "queue_name": "VARCO_QUEUE",
    "label_studio_url": "LABEL_STUDIO_URL",
    "label_studio_api_key": "LABEL_STUDIO_API_KEY",
    "basic_auth_user": "BASIC_AUTH_USER",
    "basic_auth_pass": "BASIC_AUTH_PASS",
    "model_dir": "MODEL_DIR",
    "database_url": "VARCO_DATABASE_URL",
    "log_level": "LOG_LEVEL",
    "port": "PORT",
    "batch_size": "VARCO_BATCH_SIZE",
    "prelabel_job_size": "VARCO_PRELABEL_JOB_SIZE",
    "predict_deadline": "VARCO_PREDICT_DEADLINE",
    "max_pending_tasks": "VARCO_MAX_PENDING_TASKS",
    "job_timeout": "VARCO_JOB_TIMEOUT",
    "job_retries": "VARCO_JOB_RETRIES",
    "result_ttl": "VARCO_RESULT_TTL",
    "cache_ttl": "VARCO_CACHE_TTL",
    "allowed_image_hosts": "VARCO_ALLOWED_IMAGE_HOSTS",
    "local_image_roots": "VARCO_LOCAL_IMAGE_ROOTS",
    "max_image_bytes": "VARCO_MAX_IMAGE_BYTES",
    "max_image_pixels": "VARCO_MAX_IMAGE_PIXELS",
    "image_timeout": "VARCO_IMAGE_TIMEOUT",
    "download_threads": "VARCO_DOWNLOAD_THREADS",
    "default_task": "VARCO_TASK",
    "sync_interval": "VARCO_SYNC_INTERVAL",
    "load_dtype": "VARCO_LOAD_DTYPE",
    "attn_implementation": "VARCO_LOAD_ATTN_IMPLEMENTATION",
    "load_in_4bit": "VARCO_LOAD_IN_4BIT",
    "load_in_8bit": "VARCO_LOAD_IN_8BIT",
    "allow_cpu": "VARCO_ALLOW_CPU",
    "metrics_port": "VARCO_METRICS_PORT",
    "job_stall_timeout": "VARCO_JOB_STALL_TIMEOUT",
    "lookahead": "VARCO_LOOKAHEAD",
}
assert set(_ENV_NAMES) <= set(Settings.model_fields)

LOAD_DTYPES = ("auto", "bfloat16", "float16", "float32")
_POSITIVE = (lambda value: value > 0, "positive")
_NOT_NEGATIVE = (lambda value: value >= 0, "0 or more")
_TCP_PORT = (lambda value: 0 < value < 65536, "a TCP port (1-65535)")
# Every number setting and what it must be; check() names the variable when one is not.
_NUMBER_RULES: dict[str, tuple[Callable[[float], bool], str]] = {
    "port": _TCP_PORT,
    "batch_size": _POSITIVE,
    "prelabel_job_size": _POSITIVE,
    "predict_deadline": _POSITIVE,
    "max_pending_tasks": _POSITIVE,
    "job_timeout": _POSITIVE,
    "job_retries": _NOT_NEGATIVE,
    "result_ttl": _POSITIVE,
    "cache_ttl": _POSITIVE,
    "max_image_bytes": _POSITIVE,
    "max_image_pixels": _POSITIVE,
    "image_timeout": _POSITIVE,
    "download_threads": _POSITIVE,
    "sync_interval": _NOT_NEGATIVE,
    "metrics_port": (lambda value: 0 <= value < 65536, "0 (off) or a TCP port"),
    "job_stall_timeout": _NOT_NEGATIVE,
}
assert set(_NUMBER_RULES) == {
    name for name, info in Settings.model_fields.items() if info.annotation in (int, float)
}, "every number setting needs a rule in _NUMBER_RULES"


def reveal(secret: object) -> str | None:
    """A secret setting's plain value, for the one place that sends it (None when unset)."""
    if secret is None:
        return None
    getter = getattr(secret, "get_secret_value", None)
    return getter() if getter else str(secret)


def _without_password(url: str) -> str:
    """A URL with its password and query hidden: ``redis://:***@host:6379/0``."""
    parsed = urlparse(url)
    if parsed.password is not None:
        netloc = parsed.netloc.replace(f":{parsed.password}@", ":***@", 1)
        parsed = parsed._replace(netloc=netloc)
    if parsed.query:  # a password or token may ride there too (?password=...)
        parsed = parsed._replace(query="...")
    return parsed.geturl()


# What a wrong value gets when pydantic cannot read it; the rules of check() word their own.
_READ_ERRORS = {
    "int_parsing": "is not a number",
    "int_from_float": "is not a whole number",
    "float_parsing": "is not a number",
    "bool_parsing": "is not true or false",
}


def _settings_error(error: ValidationError) -> SettingsError:
    """The first problem of ``error``, naming the variable (or the setting, for one that has
    none); a secret's value is never repeated."""
    problem = error.errors(include_url=False)[0]
    cause = (problem.get("ctx") or {}).get("error")
    if isinstance(cause, SettingsError):
        return cause
    name = str(problem["loc"][0]) if problem["loc"] else "settings"
    variable = _ENV_NAMES.get(name, name)
    if name in ("redis_url", "label_studio_api_key", "basic_auth_pass", "database_url"):
        return SettingsError(f"{variable}: {problem['msg']}")
    wording = _READ_ERRORS.get(problem["type"], problem["msg"])
    return SettingsError(f"{variable}={problem['input']!r} {wording}")
