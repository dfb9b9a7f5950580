"""Configuration from flags and the environment, checked at start.

Names follow the Label Studio ML backend ecosystem (LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY,
BASIC_AUTH_USER, BASIC_AUTH_PASS, MODEL_DIR, LOG_LEVEL) plus our own VARCO_* and REDIS_URL.
A wrong value fails at start with a message naming the variable.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import urlparse

from varco_labeler.engine.profiles import (
    DEFAULT_MODEL,
    model_version,
    profile_for,
    profile_named,
    profile_names,
)

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class SettingsError(ValueError):
    """A configuration value is wrong; the message names it."""


@dataclass(frozen=True)
class Settings:
    model: str = DEFAULT_MODEL
    # The checkpoint profile (prompts, token limits, OCR handling), when the model's name or its
    # varco_profile.json does not say: a known checkpoint's name, or "generic".
    profile: str | None = None
    # What predictions are stamped with; backend and workers must agree (default: model's name).
    model_version: str | None = None
    # An OpenAI-compatible server (vLLM) that serves the model; unset: load it with transformers.
    openai_url: str | None = None
    # Unset: the embedded mode, the engine runs in the backend process. Its password, if any,
    # stays out of the repr (see __repr__).
    redis_url: str | None = field(default=None, repr=False)
    queue_name: str = "varco"
    label_studio_url: str | None = None
    label_studio_api_key: str | None = field(default=None, repr=False)
    basic_auth_user: str | None = None
    basic_auth_pass: str | None = field(default=None, repr=False)
    model_dir: Path = Path("./varco-data")
    # The feedback store: predictions and annotations. Unset: SQLite under MODEL_DIR.
    database_url: str | None = field(default=None, repr=False)
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
    # The task when the label config does not decide it: "grounding" or "ocr".
    default_task: str | None = None
    # How the transformers engine loads the model, in every process that loads it (serve
    # embedded, varco-worker, predict, prelabel without a queue); flags override.
    load_dtype: str = "auto"
    attn_implementation: str | None = None
    load_in_4bit: bool = False
    load_in_8bit: bool = False
    # `serve` reconciles the feedback store with Label Studio every this many seconds (what
    # `varco-labeler sync --all` does); 0: never (webhooks only, `sync` by hand).
    sync_interval: float = 0.0
    # A worker serves Prometheus metrics on this port (the backend at /metrics); 0: off.
    metrics_port: int = 0
    # A queue job whose engine reports no progress (a batch, a generation step) for this many seconds
    # is failed and requeued, and its worker restarts; 0: never.
    job_stall_timeout: float = 0.0

    def __repr__(self) -> str:
        shown = [f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.repr]
        shown.append(f"redis_url={_without_password(self.redis_url)!r}")
        return f"Settings({', '.join(shown)})"

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

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Settings from the environment; ``overrides`` (flags) win over it. None means unset."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for name, variable in _ENV_NAMES.items():
            raw = env.get(variable)
            if raw is not None and raw != "":
                values[name] = _convert(name, variable, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)  # type: ignore[arg-type]
        settings.check()
        return settings

    def check(self) -> None:
        if self.redis_url and urlparse(self.redis_url).scheme not in ("redis", "rediss", "unix"):
            raise SettingsError(f"REDIS_URL={self.redis_url!r} must start with redis://")
        ls_scheme = urlparse(self.label_studio_url or "http://").scheme
        if ls_scheme not in ("http", "https"):
            raise SettingsError(
                f"LABEL_STUDIO_URL={self.label_studio_url!r} must be an http(s) URL"
            )
        if self.log_level.upper() not in LOG_LEVELS:
            raise SettingsError(f"LOG_LEVEL={self.log_level!r} must be one of {LOG_LEVELS}")
        if bool(self.basic_auth_user) != bool(self.basic_auth_pass):
            raise SettingsError("set both BASIC_AUTH_USER and BASIC_AUTH_PASS, or neither")
        for name, (valid, wanted) in _NUMBER_RULES.items():
            value = getattr(self, name)
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if not (number and math.isfinite(value) and valid(value)):
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
    "default_task": "VARCO_TASK",
    "sync_interval": "VARCO_SYNC_INTERVAL",
    "load_dtype": "VARCO_LOAD_DTYPE",
    "attn_implementation": "VARCO_LOAD_ATTN_IMPLEMENTATION",
    "load_in_4bit": "VARCO_LOAD_IN_4BIT",
    "load_in_8bit": "VARCO_LOAD_IN_8BIT",
    "metrics_port": "VARCO_METRICS_PORT",
    "job_stall_timeout": "VARCO_JOB_STALL_TIMEOUT",
}
assert set(_ENV_NAMES) <= {f.name for f in fields(Settings)}

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
    "sync_interval": _NOT_NEGATIVE,
    "metrics_port": (lambda value: 0 <= value < 65536, "0 (off) or a TCP port"),
    "job_stall_timeout": _NOT_NEGATIVE,
}
assert set(_NUMBER_RULES) == {
    f.name
    for f in fields(Settings)
    if isinstance(f.default, int | float) and not isinstance(f.default, bool)
}, "every number setting needs a rule in _NUMBER_RULES"


def reveal(secret: object) -> str | None:
    """A secret setting's plain value, for the one place that sends it (None when unset)."""
    if secret is None:
        return None
    getter = getattr(secret, "get_secret_value", None)
    return getter() if getter else str(secret)


def _without_password(url: str | None) -> str | None:
    """A URL with its password hidden: ``redis://:***@host:6379/0``."""
    if not url:
        return url
    parsed = urlparse(url)
    if parsed.password is None:
        return url
    netloc = parsed.netloc.replace(f":{parsed.password}@", ":***@", 1)
    return parsed._replace(netloc=netloc).geturl()


def _convert(name: str, variable: str, raw: str) -> object:
    default = Settings.__dataclass_fields__[name].default
    try:
        if isinstance(default, bool):
            return raw.strip().lower() in ("1", "true", "yes")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        raise SettingsError(f"{variable}={raw!r} is not a number") from None
    if name == "model_dir":
        return Path(raw)
    if name == "allowed_image_hosts":
        return tuple(h.strip().lower() for h in raw.split(",") if h.strip())
    if name == "local_image_roots":
        return tuple(Path(p).resolve() for p in raw.split(os.pathsep) if p.strip())
    if name == "log_level":
        return raw.upper()
    return raw
