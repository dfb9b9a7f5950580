"""Model releases: which model the workers (or the embedded backend) run, changed without a restart.

A release names a model (a path or hub-style id the workers can load) and the version its
predictions carry. Publishing one makes it current; rollback is publishing an earlier one again.
The channel is Redis with a queue (every worker reads it), else a JSON file under MODEL_DIR (the
embedded mode). A process that runs the model asks the channel between jobs
(:class:`ReleaseFollower`): a new current release is loaded next to the old model, which is dropped
only once the new one is in, so a release that cannot be loaded leaves the old model running and
says why where /health shows it.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import sys
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from redis import Redis
from redis.exceptions import RedisError

from varco_labeler.engine.base import Engine
from varco_labeler.settings import Settings

log = logging.getLogger(__name__)

# Redis: a list of release JSON, newest first, and a hash of worker -> why it could not load the
# current release (per queue, so that two deployments can share a Redis).
RELEASES_KEY = "varco:releases:{queue}"
LOAD_ERRORS_KEY = "varco:release-load-errors:{queue}"
RELEASES_FILE = "releases.json"


class ReleaseError(ValueError):
    """A release cannot be published, or the channel cannot be read; the message says why."""


@dataclass(frozen=True)
class Release:
    version: str  # what predictions are stamped with
    model: str  # a path (or hub-style id/directory) workers can load
    published_at: str  # ISO 8601 UTC
    note: str = ""

    @classmethod
    def new(cls, model: str, version: str, note: str = "") -> Release:
        """A release stamped now."""
        now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        return cls(version=version, model=model, published_at=now, note=note)

    @property
    def weights(self) -> tuple[str, str]:
        """What a process runs: two publications with the same weights need no reload."""
        return self.version, self.model

    def to_json(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> Release:
        try:
            return cls(**data)
        except TypeError as error:
            raise ReleaseError(f"not a release: {data!r} ({error})") from None


class ReleaseChannel(ABC):
    """Where releases are published and read; :meth:`for_settings` picks Redis or the file."""

    @classmethod
    def for_settings(cls, settings: Settings) -> ReleaseChannel:
        if settings.redis_url:
            from varco_labeler.queue import connect

            return RedisReleaseChannel(connect(settings.redis_url), settings.queue_name)
        return FileReleaseChannel(Path(settings.model_dir) / RELEASES_FILE)

    def publish(self, release: Release) -> None:
        """Make ``release`` current. A version names one model: publishing a known version with
        another model is refused (outputs are cached and tasks skipped by version)."""
        if not release.version.strip() or not release.model.strip():
            raise ReleaseError("a release needs a model and a version")
        for earlier in self.history():
            if earlier.version == release.version and earlier.model != release.model:
                raise ReleaseError(
                    f"version {release.version!r} was published with model {earlier.model!r}; "
                    "give the new model a new version"
                )
        self._push(release)
        log.info("published release %s (%s)", release.version, release.model)

    def current(self) -> Release | None:
        history = self.history()
        return history[0] if history else None

    @abstractmethod
    def history(self) -> list[Release]:
        """Every publication, newest first."""

    @abstractmethod
    def _push(self, release: Release) -> None: ...

    @abstractmethod
    def record_load(self, process: str, error: str | None) -> None:
        """Note why ``process`` could not load the current release (None: it runs it)."""

    @abstractmethod
    def load_errors(self) -> dict[str, str]:
        """Process name -> why it could not load the current release."""


class RedisReleaseChannel(ReleaseChannel):
    def __init__(self, redis: Redis, queue: str = "varco") -> None:
        self.redis = redis
        self.key = RELEASES_KEY.format(queue=queue)
        self.errors_key = LOAD_ERRORS_KEY.format(queue=queue)

    def current(self) -> Release | None:
        value = self._read(lambda: self.redis.lindex(self.key, 0))
        return Release.from_json(json.loads(value)) if value else None

    def history(self) -> list[Release]:
        values = self._read(lambda: self.redis.lrange(self.key, 0, -1))
        return [Release.from_json(json.loads(value)) for value in values]

    def _push(self, release: Release) -> None:
        self._read(lambda: self.redis.lpush(self.key, json.dumps(release.to_json())))

    def record_load(self, process: str, error: str | None) -> None:
        if error is None:
            self._read(lambda: self.redis.hdel(self.errors_key, process))
        else:
            self._read(lambda: self.redis.hset(self.errors_key, process, error))

    def load_errors(self) -> dict[str, str]:
        errors = self._read(lambda: self.redis.hgetall(self.errors_key))
        return {name.decode(): error.decode() for name, error in errors.items()}

    def _read(self, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except RedisError as error:
            raise ReleaseError(f"the release channel (Redis) is unreachable: {error}") from error


class FileReleaseChannel(ReleaseChannel):
    """``{"releases": [newest first], "load_errors": {process: why}}`` in one JSON file, written
    whole (a reader never sees half a file) under a lock (two publishers lose nothing)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def history(self) -> list[Release]:
        return [Release.from_json(item) for item in self._load().get("releases", [])]

    def _push(self, release: Release) -> None:
        with self._locked() as data:
            data["releases"] = [release.to_json(), *data.get("releases", [])]

    def record_load(self, process: str, error: str | None) -> None:
        if error is None and process not in self.load_errors():
            return  # nothing to clear: no write between jobs
        with self._locked() as data:
            errors = data.setdefault("load_errors", {})
            if error is None:
                errors.pop(process, None)
            else:
                errors[process] = error

    def load_errors(self) -> dict[str, str]:
        return dict(self._load().get("load_errors", {}))

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:
            raise ReleaseError(f"cannot read the release file {self.path}: {error}") from error
        if not isinstance(data, dict):
            raise ReleaseError(f"the release file {self.path} does not hold a JSON object")
        return data

    @contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self._load()
            yield data
            with tempfile.NamedTemporaryFile(
                "w", dir=self.path.parent, suffix=".tmp", delete=False, encoding="utf-8"
            ) as written:
                json.dump(data, written, ensure_ascii=False, indent=1)
            os.replace(written.name, self.path)


def release_settings(settings: Settings, release: Release) -> Settings:
    """The settings a process loads ``release`` with: its model, stamped with its version."""
    return settings.replace(model=release.model, model_version=release.version)


class ReleaseFollower:
    """Keeps a process on the channel's current release: asked between jobs, it loads a release
    it does not run yet. A release that fails to load is not tried again until it is published
    again; the failure is logged and recorded in the channel under ``process``."""

    def __init__(
        self,
        channel: ReleaseChannel,
        settings: Settings,
        process: str,
        load: Callable[[Settings], Engine],
    ) -> None:
        self.channel, self.settings, self.process, self.load = channel, settings, process, load
        self.running: Release | None = None
        self.refused: Release | None = None

    def first_engine(self) -> Engine:
        """The current release's engine; the settings' model when none is published or the
        current one cannot be loaded."""
        return self.newer_engine() or self.load(self.settings)

    def newer_engine(self) -> Engine | None:
        """The current release's engine when it is not the one running; None: keep the engine."""
        try:
            release = self.channel.current()
        except ReleaseError as error:
            log.warning("keeping the running model: %s", error)
            return None
        if release is None or release == self.refused:
            return None
        if self.running is not None and release.weights == self.running.weights:
            return None
        log.info("loading release %s (%s)", release.version, release.model)
        try:
            engine = self.load(release_settings(self.settings, release))
        except Exception as error:  # any load failure (missing files, bad config, out of memory)
            self.refused = release
            why = f"cannot load release {release.version} ({release.model}): {error}"
            log.error("%s; keeping the running model", why)
            self._record(why)
            return None
        self.running, self.refused = release, None
        self._record(None)
        return engine

    def _record(self, error: str | None) -> None:
        try:
            self.channel.record_load(self.process, error)
        except ReleaseError as problem:
            log.warning("could not record the load in the release channel: %s", problem)


def _release_command(args: argparse.Namespace) -> int:
    from varco_labeler.engine.profiles import model_version
    from varco_labeler.settings import SettingsError

    try:
        channel = ReleaseChannel.for_settings(Settings.from_env(redis_url=args.redis_url))
        if args.action == "publish":
            version = args.version or model_version(args.model)
            channel.publish(Release.new(args.model, version, args.note))
            print(f"published {version} ({args.model}); workers load it before their next job")
            if not Path(args.model).is_dir():
                print(
                    f"note: {args.model} is not a directory here; the workers must be able to "
                    "load it (a hub id, or a path on their machines)",
                    file=sys.stderr,
                )
            return 0
        history = channel.history()
        errors = channel.load_errors()
    except (SettingsError, ReleaseError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"releases": [r.to_json() for r in history], "load_errors": errors}))
        return 0
    if not history:
        print("no release published: the processes run their --model / VARCO_MODEL")
    width = max((len(release.version) for release in history), default=0)
    for index, release in enumerate(history):
        mark = "*" if index == 0 else " "
        note = f"  {release.note}" if release.note else ""
        print(f"{mark} {release.published_at}  {release.version:<{width}}  {release.model}{note}")
    for process, why in sorted(errors.items()):
        print(f"! {process}: {why}", file=sys.stderr)
    return 0


def add_command(commands: argparse._SubParsersAction) -> None:
    """``varco-labeler release publish|list``."""
    release = commands.add_parser(
        "release",
        help="publish a model to the running workers (or the embedded backend), list releases",
        description="Model releases: `publish` makes a model current; workers (REDIS_URL) or the "
        "embedded backend (MODEL_DIR/releases.json) load it between jobs, without a restart. "
        "Roll back by publishing an earlier release again. `list` shows them, newest (current) "
        "first, and the processes that could not load the current one.",
    )
    actions = release.add_subparsers(dest="action", required=True, metavar="ACTION")
    publish = actions.add_parser("publish", help="make a model the current release")
    publish.add_argument("model", help="a model directory (or hub id) the workers can load")
    publish.add_argument(
        "--version",
        help="what its predictions carry (default: the version `train` stamped on the "
        "directory, else its name); one version names one model",
    )
    publish.add_argument("--note", default="", help="why it was published")
    listing = actions.add_parser("list", help="releases, newest (current) first")
    listing.add_argument("--json", action="store_true", help="print JSON")
    for parser in (publish, listing):
        parser.add_argument("--redis-url", help="the workers' Redis (env REDIS_URL)")
    release.set_defaults(handler=_release_command)
