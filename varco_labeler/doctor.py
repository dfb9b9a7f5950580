"""``varco-labeler doctor``: checks a set-up from where it runs and says how to fix what fails.

Each check is ok, failed (with its fix) or skipped (with why); a check that needs a failed one is
skipped. The parts are the ones the backend and the workers use (the Label Studio client and its
token kinds, the image fetcher and the project policy, the queue, the model availability check),
so what passes here works there. No token, password or URL signature is printed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import httpx

if TYPE_CHECKING:
    from varco_labeler.settings import Settings

OK, FAILED, SKIPPED = "ok", "failed", "skipped"
TIMEOUT = 10.0


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


class _Failed(Exception):
    def __init__(self, detail: str, fix: str) -> None:
        super().__init__(detail)
        self.detail, self.fix = detail, fix


class _Skipped(Exception):
    pass


class Doctor:
    """The checks, in order; later ones read what earlier ones found."""

    def __init__(
        self,
        settings: Settings,
        *,
        project: int | None = None,
        backend_url: str | None = None,
    ) -> None:
        self.settings, self.project, self.backend_url = settings, project, backend_url
        self.passed: set[str] = set()

    def run(self) -> list[Check]:
        steps: list[tuple[str, Callable[[], str]]] = [
            ("label-studio", self.label_studio),
            ("token", self.token),
            ("project-image", self.project_image),
            ("redis", self.redis),
            ("workers", self.workers),
            ("model", self.model),
            ("gpu", self.gpu),
            ("memory", self.memory),
            ("backend", self.backend),
        ]
        return [self._one(name, step) for name, step in steps]

    def _one(self, name: str, step: Callable[[], str]) -> Check:
        try:
            detail = step()
        except _Skipped as skipped:
            return Check(name, SKIPPED, str(skipped))
        except _Failed as failed:
            return Check(name, FAILED, failed.detail, failed.fix)
        self.passed.add(name)
        return Check(name, OK, detail)

    def _needs(self, *names: str) -> None:
        missing = [name for name in names if name not in self.passed]
        if missing:
            raise _Skipped(f"needs {', '.join(missing)}")

    # -- Label Studio ------------------------------------------------------------------------
    def label_studio(self) -> str:
        url = self.settings.label_studio_url
        if not url:
            raise _Skipped("LABEL_STUDIO_URL is not set (needed for uploaded and local files)")
        try:
            answer = httpx.get(f"{url.rstrip('/')}/api/version", timeout=TIMEOUT)
        except httpx.HTTPError as error:
            raise _Failed(
                f"cannot reach {url} ({type(error).__name__})",
                "start Label Studio, or set LABEL_STUDIO_URL to the address it answers at from "
                "this machine (inside a container, localhost is the container itself)",
            ) from None
        release = _json(answer).get("release") if answer.status_code == 200 else None
        if not release:
            raise _Failed(
                f"{url} answered HTTP {answer.status_code} to /api/version: not Label Studio",
                "set LABEL_STUDIO_URL to Label Studio's address (not this backend's)",
            )
        return f"{url} answers: Label Studio {release}"

    def token(self) -> str:
        from varco_labeler.labelstudio.client import (
            LabelStudioClient,
            LabelStudioError,
            looks_like_personal_token,
        )
        from varco_labeler.settings import reveal

        self._needs("label-studio")
        key = reveal(self.settings.label_studio_api_key)
        if not key:
            raise _Failed(
                "LABEL_STUDIO_API_KEY is not set",
                "copy a token from Label Studio (Account & Settings) into LABEL_STUDIO_API_KEY",
            )
        kind = "personal access token" if looks_like_personal_token(key) else "legacy token"
        assert self.settings.label_studio_url
        try:
            with LabelStudioClient(
                self.settings.label_studio_url, key, timeout=TIMEOUT, attempts=1
            ) as client:
                user = client.get("/api/current-user/whoami")
        except LabelStudioError as error:
            raise _Failed(
                f"{kind}: {error}",
                "copy a current token from Label Studio (Account & Settings > Personal Access "
                "Token, or Legacy Token where the organisation allows legacy tokens) into "
                "LABEL_STUDIO_API_KEY",
            ) from None
        who = (user or {}).get("email") or (user or {}).get("username") or "a user"
        return f"a valid {kind}, of {who}"

    def project_image(self) -> str:
        if self.project is None:
            raise _Skipped("give --project N to fetch a project's first image")
        self._needs("token")
        from varco_labeler.labelstudio import LabelConfigError, read_label_config
        from varco_labeler.labelstudio.client import LabelStudioClient, LabelStudioError
        from varco_labeler.labelstudio.images import ImageError, ImageFetcher
        from varco_labeler.policy import Policy, PolicyError
        from varco_labeler.settings import reveal

        assert self.settings.label_studio_url
        key = reveal(self.settings.label_studio_api_key) or ""
        with LabelStudioClient(
            self.settings.label_studio_url, key, timeout=TIMEOUT, attempts=1
        ) as client:
            try:
                project = client.project(self.project)
                page = client.get("/api/tasks/", {"project": self.project, "page_size": 1})
            except LabelStudioError as error:
                raise _Failed(str(error), "check the project id and the token's access") from None
        if project is None:
            raise _Failed(f"Label Studio has no project {self.project}", "check the project id")
        tasks = (page or {}).get("tasks") or []
        if not tasks:
            raise _Skipped(f"project {self.project} has no task yet")
        task = tasks[0]
        fetcher = ImageFetcher.from_settings(self.settings)
        try:
            policy = Policy.resolve(self.settings, read_label_config(project["label_config"]))
            item = policy.item("doctor", task["data"], task_id=task["id"])
            image, _ = fetcher.fetch(item["image"])
        except (LabelConfigError, PolicyError) as error:
            raise _Failed(
                f"project {self.project}: {error}",
                "give the project a label config with an <Image> (see varco-labeler label-config)",
            ) from None
        except ImageError as error:
            raise _Failed(f"task {task['id']}: {error}", _image_fix(str(error))) from None
        finally:
            fetcher.close()
        return (
            f"task {task['id']}'s image fetched as the backend does: {image.width}x{image.height}"
        )

    # -- the queue ---------------------------------------------------------------------------
    def redis(self) -> str:
        from redis.exceptions import RedisError

        from varco_labeler.queue import connect
        from varco_labeler.settings import reveal

        url = reveal(self.settings.redis_url)
        if not url:
            raise _Skipped("REDIS_URL is not set: the embedded mode (the model runs in serve)")
        where = _host_port(url)
        try:
            connect(url).ping()
        except RedisError as error:
            raise _Failed(
                f"cannot reach Redis at {where} ({type(error).__name__})",
                "start Redis, or set REDIS_URL to its address from this machine (with its "
                "password if it has one)",
            ) from None
        return f"Redis at {where} answers"

    def workers(self) -> str:
        from varco_labeler.queue import RQDispatcher

        self._needs("redis")
        versions = RQDispatcher(self.settings).model_versions()
        if not versions:
            raise _Failed(
                f"no live varco-worker on queue {self.settings.queue_name!r}",
                "start varco-worker (one per GPU) with the same REDIS_URL and VARCO_QUEUE",
            )
        running = ", ".join(f"{name} ({version})" for name, version in sorted(versions.items()))
        return f"{len(versions)} live: {running}"

    # -- the model and the machine -----------------------------------------------------------
    def model(self) -> str:
        from varco_labeler.engine.availability import SMALL_MODEL, ModelUnavailable, check_model

        if self.settings.redis_url:
            raise _Skipped(
                "queue mode: the workers load the model (run doctor without REDIS_URL on a "
                "worker machine to check it there)"
            )
        if self.settings.openai_url:
            return self._openai_server()
        try:
            found = check_model(self.settings)
        except ModelUnavailable as error:
            cause = f" ({error.cause})" if error.cause else ""
            ways = (
                "set VARCO_MODEL to a local checkpoint directory, take the smaller "
                f"{SMALL_MODEL}, or use a queue with GPU workers (REDIS_URL + varco-worker); "
                "varco-labeler tiny-model /tmp/tiny makes a model to try the loop with"
            )
            fix = f"{error.hint} Else {ways}" if error.hint else ways
            raise _Failed(f"{error.model}: {error.reason}{cause}", fix) from None
        return found.summary()

    def _openai_server(self) -> str:
        url = str(self.settings.openai_url).rstrip("/")
        try:
            answer = httpx.get(f"{url}/models", timeout=TIMEOUT)
            answer.raise_for_status()
        except httpx.HTTPError as error:
            raise _Failed(
                f"the OpenAI-compatible server at {url} does not answer /models "
                f"({type(error).__name__})",
                "start it (vllm serve MODEL), or correct VARCO_OPENAI_URL",
            ) from None
        served = [m.get("id") for m in _json(answer).get("data") or [] if isinstance(m, dict)]
        return f"{url} serves {', '.join(map(str, served)) or 'no model'}"

    def gpu(self) -> str:
        import importlib.util

        from varco_labeler.engine.availability import gigabytes, gpus

        if importlib.util.find_spec("torch") is None:
            raise _Skipped("torch is not installed (the light install: no model here)")
        found = gpus()
        if not found:
            raise _Skipped("no CUDA GPU visible: a model loaded here runs on the CPU")
        return "; ".join(
            f"{name}: {gigabytes(free)} free of {gigabytes(total)}" for name, free, total in found
        )

    def memory(self) -> str:
        from varco_labeler.engine.availability import gigabytes, system_memory

        available, total = system_memory()
        if total is None:
            raise _Skipped("this system does not say")
        shown = gigabytes(available) if available is not None else "?"
        return f"{shown} available of {gigabytes(total)}"

    def backend(self) -> str:
        from varco_labeler.settings import reveal

        if not self.backend_url:
            raise _Skipped("give --backend URL to check a running backend")
        url = self.backend_url.rstrip("/")
        user, password = self.settings.basic_auth_user, reveal(self.settings.basic_auth_pass)
        auth = (user, password) if user and password else None
        try:
            answer = httpx.get(f"{url}/health", auth=auth, timeout=TIMEOUT)
        except httpx.HTTPError as error:
            raise _Failed(
                f"cannot reach {url} ({type(error).__name__})",
                "start varco-labeler serve; Label Studio must reach the same URL from its own "
                "machine or container",
            ) from None
        body = _json(answer)
        if answer.status_code != 200 or "model_version" not in body:
            raise _Failed(
                f"{url}/health answered HTTP {answer.status_code}: not this backend",
                "give the backend's URL (varco-labeler serve listens on port 9090)",
            )
        return f"{url} is {body.get('status')}, model version {body['model_version']}"


def render(checks: list[Check]) -> str:
    """The table: a line per check, each failure's fix under it."""
    width = max(len(check.name) for check in checks)
    lines = []
    for check in checks:
        lines.append(f"{check.name:<{width}}  {check.status:<7}  {check.detail}")
        if check.fix:
            lines.append(f"{'':<{width}}  {'fix:':<7}  {check.fix}")
    return "\n".join(lines)


def _doctor(args: argparse.Namespace) -> int:
    from varco_labeler.settings import Settings, SettingsError

    try:
        settings = Settings.from_env(
            model=args.model, redis_url=args.redis_url, allow_cpu=args.allow_cpu
        )
    except SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    doctor = Doctor(settings, project=args.project, backend_url=args.backend)
    checks = doctor.run()
    failed = any(check.status == FAILED for check in checks)
    if args.json:
        print(json.dumps({"ok": not failed, "checks": [asdict(c) for c in checks]}, indent=1))
    else:
        print(render(checks))
    return 1 if failed else 0


def add_command(commands: argparse._SubParsersAction) -> None:
    from varco_labeler.engine.availability import add_allow_cpu_argument

    doctor = commands.add_parser(
        "doctor",
        help="check a set-up from here: Label Studio, token, images, Redis, workers, model, GPU",
        description="Check, from where it runs, what the backend and the workers need: Label "
        "Studio reachable (LABEL_STUDIO_URL), the token valid and of which kind, a project's "
        "first image fetchable the way the backend fetches it (--project), Redis and the live "
        "workers with their model versions (REDIS_URL), the model loadable here (without "
        "loading it), GPU and memory, and a running backend (--backend). Prints ok, failed "
        "(with the fix) or skipped per check; exit status 0 only when nothing failed.",
    )
    doctor.add_argument("--project", type=int, help="a Label Studio project id")
    doctor.add_argument("--backend", metavar="URL", help="a running backend, e.g. :9090")
    doctor.add_argument("--model", help="checkpoint id or local path (env VARCO_MODEL)")
    doctor.add_argument("--redis-url", help="the workers' queue (env REDIS_URL)")
    add_allow_cpu_argument(doctor)
    doctor.add_argument("--json", action="store_true", help="print the checks as JSON")
    doctor.set_defaults(handler=_doctor)


def _image_fix(error: str) -> str:
    if "VARCO_ALLOWED_IMAGE_HOSTS" in error or "VARCO_LOCAL_IMAGE_ROOTS" in error:
        return "set the variable the error names, for every process that fetches images"
    if "401" in error or "403" in error:
        return "the token must belong to a member of the project's organisation"
    return (
        "make the image readable from here: uploads and local files through LABEL_STUDIO_URL "
        "(local files need LOCAL_FILES_SERVING_ENABLED=true in Label Studio), cloud objects "
        "through a storage connected to the project"
    )


def _host_port(url: str) -> str:
    parsed = urlparse(url)
    return f"{parsed.hostname or '?'}:{parsed.port or 6379}"


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
