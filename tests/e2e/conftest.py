"""End-to-end fixtures: a real Label Studio 1.23.2 and our backend, each in its own process.

Label Studio lives in its own virtualenv (scripts/install_label_studio.sh; it pins rq<2.7 and
redis<5.3), starts headless on a free loopback port with a fresh data directory, and is configured
on its FIRST start (DESIGN.md section 4): admin user, legacy API token, local IPs allowed for ML
backends, local files served from a document root. Our backend runs `varco-labeler serve` in
embedded mode (no REDIS_URL) with the tiny offline model. Both are stopped at the end of the session
by terminating their process groups; their logs are printed when something fails to start.

Set VARCO_SKIP_E2E=1 to skip the tests that need Label Studio (for instance on a machine that
cannot reach PyPI); Label Studio's virtualenv goes where LS_VENV says (default .ls-venv).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from bench.common import spawn
from bench.labelstudio import first_start_env, wait_for_token

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
INSTALL_SCRIPT = REPO / "scripts" / "install_label_studio.sh"

LS_USER = "e2e@example.com"
LS_PASSWORD = "e2e-password-1234"
# A legacy token (LABEL_STUDIO_USER_TOKEN, more than 5 characters): sent as "Token <token>".
LS_TOKEN = "e2e0legacy0token0for0tests"

# First start of a fresh data directory runs the migrations: ~20-30 s on 2 cores.
LS_START_TIMEOUT = float(os.environ.get("VARCO_E2E_LS_START_TIMEOUT", "180"))
BACKEND_START_TIMEOUT = 90.0


# -- processes ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Service:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_healthy(self, timeout: float, path: str = "/health") -> float:
        """Poll ``path`` until it answers 200; return the seconds it took. Fail with the log."""
        start = time.monotonic()
        deadline = start + timeout
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with status {self.process.returncode} before answering "
                    f"{path}; last log lines:\n{self.log_tail()}"
                )
            try:
                response = httpx.get(self.url + path, timeout=2.0)
                if response.status_code == 200:
                    return time.monotonic() - start
                last_error = f"HTTP {response.status_code}"
            except httpx.HTTPError as error:
                last_error = repr(error)
            time.sleep(0.3)
        raise RuntimeError(
            f"{self.name} did not answer {path} within {timeout:.0f} s ({last_error}); "
            f"last log lines:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """Terminate the whole process group (the server and anything it started)."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        # Children left in the group after the leader exited.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)


def start_service(
    name: str, url: str, argv: list[str], env: dict[str, str], log_path: Path, cwd: Path
) -> Service:
    process = spawn(argv, env, cwd, log_path)
    return Service(name=name, url=url, process=process, log_path=log_path)


def _base_env() -> dict[str, str]:
    """The environment without anything that would change how our servers or LS behave."""
    env = dict(os.environ)
    for name in list(env):
        if name.startswith(("LABEL_STUDIO_", "VARCO_", "DJANGO_")) or name in (
            "REDIS_URL",
            "MODEL_DIR",
            "PORT",
            "BASIC_AUTH_USER",
            "BASIC_AUTH_PASS",
            "VIRTUAL_ENV",
            "PYTHONPATH",
        ):
            del env[name]
    return env


# -- Label Studio ------------------------------------------------------------------------------


@dataclass
class LabelStudioServer:
    service: Service
    token: str
    document_root: Path
    start_seconds: float
    argv: list[str]
    env: dict[str, str]
    root: Path

    def stop(self) -> None:
        self.service.stop()

    def start(self) -> float:
        """Start it again on the same port and data (after :meth:`stop`); returns seconds."""
        self.service = start_service(
            "Label Studio",
            self.service.url,
            self.argv,
            self.env,
            self.root / "label-studio.log",
            self.root,
        )
        seconds = self.service.wait_healthy(LS_START_TIMEOUT)
        _wait_for_token(self.service.url, self.service)
        return seconds

    @property
    def url(self) -> str:
        return self.service.url

    def api(self) -> httpx.Client:
        """A plain HTTP client for endpoints the SDK does not wrap (uploads, interactive)."""
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Token {self.token}"}, timeout=120.0
        )


@pytest.fixture(scope="session")
def label_studio_executable() -> Path:
    """Label Studio 1.23.2 in its own virtualenv, installed on first use (about a minute)."""
    if os.environ.get("VARCO_SKIP_E2E", "").lower() in ("1", "true", "yes"):
        pytest.skip("VARCO_SKIP_E2E is set: no real Label Studio")
    result = subprocess.run(
        ["bash", str(INSTALL_SCRIPT)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if result.returncode != 0:
        pytest.fail(
            f"scripts/install_label_studio.sh failed ({result.returncode}):\n"
            f"{result.stderr[-4000:]}",
            pytrace=False,
        )
    executable = Path(result.stdout.strip().splitlines()[-1])
    assert executable.exists(), executable
    return executable


@pytest.fixture(scope="session")
def tiny_model_build(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Service]]:
    """Starts building the tiny model in the background (it overlaps Label Studio's start)."""
    out = tmp_path_factory.mktemp("tiny") / "varco-tiny-e2e"
    env = _base_env()
    argv = [str(BIN / "varco-labeler"), "tiny-model", str(out)]
    service = start_service("tiny-model build", "", argv, env, out.parent / "build.log", REPO)
    yield out, service
    service.stop()


@pytest.fixture(scope="session")
def tiny_model(tiny_model_build: tuple[Path, Service]) -> Path:
    """A tiny VARCO-shaped checkpoint taught the RED/BLUE answers (engine.tiny)."""
    out, service = tiny_model_build
    try:
        code = service.process.wait(timeout=300)
    except subprocess.TimeoutExpired:
        service.stop()
        pytest.fail(f"building the tiny model took over 300 s:\n{service.log_tail()}")
    if code != 0 or not (out / "config.json").exists():
        pytest.fail(f"building the tiny model failed ({code}):\n{service.log_tail()}")
    return out


@pytest.fixture(scope="session")
def label_studio(
    label_studio_executable: Path,
    tiny_model_build: tuple[Path, Service],  # started first so the two overlap
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LabelStudioServer]:
    root = tmp_path_factory.mktemp("label-studio")
    data_dir, document_root = root / "data", root / "files"
    data_dir.mkdir()
    document_root.mkdir()
    port = free_port()
    env = _base_env() | first_start_env(data_dir, document_root, LS_TOKEN, LS_USER, LS_PASSWORD)
    argv = [
        str(label_studio_executable),
        "start",
        "--no-browser",
        "--port",
        str(port),
        "--internal-host",
        "127.0.0.1",
    ]
    url = f"http://127.0.0.1:{port}"
    service = start_service("Label Studio", url, argv, env, root / "label-studio.log", root)
    server = LabelStudioServer(service, LS_TOKEN, document_root, 0.0, argv, env, root)
    try:
        server.start_seconds = service.wait_healthy(LS_START_TIMEOUT)
        _wait_for_token(service.url, service)
        print(f"\n[e2e] Label Studio up at {url} in {server.start_seconds:.1f} s", file=sys.stderr)
        yield server
    finally:
        server.service.stop()


def _wait_for_token(url: str, service: Service) -> None:
    try:
        wait_for_token(url, LS_TOKEN, timeout=30.0)
    except RuntimeError as error:
        raise RuntimeError(f"{error}; log:\n{service.log_tail()}") from None


@pytest.fixture(scope="session")
def ls_client(label_studio: LabelStudioServer):
    from label_studio_sdk import LabelStudio

    return LabelStudio(base_url=label_studio.url, api_key=label_studio.token, timeout=120)


# -- our backend -------------------------------------------------------------------------------


@dataclass
class BackendServer:
    """``varco-labeler serve`` on a port and a store of its own; :meth:`stop` and :meth:`start`
    restart it on both (Label Studio keeps calling the same URL)."""

    service: Service
    model_dir: Path
    start_seconds: float
    env: dict[str, str]
    root: Path

    @property
    def url(self) -> str:
        return self.service.url

    def stop(self) -> None:
        self.service.stop()

    def start(self) -> float:
        self.service = _serve(self.service.url, self.env, self.root)
        self.start_seconds = self.service.wait_healthy(BACKEND_START_TIMEOUT)
        return self.start_seconds


def _serve(url: str, env: dict[str, str], root: Path) -> Service:
    port = url.rsplit(":", 1)[1]
    argv = [str(BIN / "varco-labeler"), "serve", "--host", "127.0.0.1", "--port", port]
    return start_service("varco-labeler serve", url, argv, env, root / "backend.log", root)


def start_backend(our_env: dict[str, str], root: Path) -> BackendServer:
    model_dir = root / "model-dir"
    env = our_env | {"MODEL_DIR": str(model_dir)}
    service = _serve(f"http://127.0.0.1:{free_port()}", env, root)
    server = BackendServer(service, model_dir, 0.0, env, root)
    try:
        server.start_seconds = service.wait_healthy(BACKEND_START_TIMEOUT)
    except BaseException:
        service.stop()
        raise
    print(f"\n[e2e] backend up at {service.url} in {server.start_seconds:.1f} s", file=sys.stderr)
    return server


@pytest.fixture(scope="session")
def our_env(
    label_studio: LabelStudioServer, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """The environment of our processes (backend, workers, prelabel) for this Label Studio;
    their feedback store in a temporary MODEL_DIR unless a test gives another."""
    return _base_env() | {
        "MODEL_DIR": str(tmp_path_factory.mktemp("model-dir")),
        "VARCO_MODEL": str(tiny_model),
        "LABEL_STUDIO_URL": label_studio.url,
        "LABEL_STUDIO_API_KEY": label_studio.token,
        "LOG_LEVEL": "INFO",
        # Two cores: torch's default threads only fight the Label Studio process.
        "OMP_NUM_THREADS": "1",
    }


@pytest.fixture(scope="session")
def backend(
    our_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BackendServer]:
    server = start_backend(our_env, tmp_path_factory.mktemp("backend"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def own_backend(
    request: pytest.FixtureRequest,
    our_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[BackendServer]:
    """A backend for one module's tests alone: they may stop and start it. The module's
    ``BACKEND_ENV`` (a dict), if any, is added to its environment."""
    env = our_env | getattr(request.module, "BACKEND_ENV", {})
    server = start_backend(env, tmp_path_factory.mktemp("own-backend"))
    yield server
    server.stop()
