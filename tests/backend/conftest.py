"""Real processes for backend tests: redis-server, an image host, varco-worker, varco-labeler serve.

Nothing is mocked: the backend and the workers are the installed console scripts, Redis is a real
redis-server on a free port, and images come over HTTP from a loopback server that checks the
Label Studio token the way Label Studio's file serving does.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
from redis import Redis

from varco_labeler.engine.tiny import BLUE, RED, solid_image

BIN = Path(sys.executable).parent
TOKEN = "integration-test-token"
# A personal access token is a JWT that Label Studio exchanges for short-lived access tokens.
PERSONAL_TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJ0b2tlbl90eXBlIjoicmVmcmVzaCJ9.c2lnbmF0dXJl"
ACCESS_TOKEN = "short-lived-access"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


class RedisProcess:
    """A redis-server on a free port that tests may stop and start again."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        server = shutil.which("redis-server")
        assert server, "redis-server is not installed: run scripts/setup.sh"
        self.process = subprocess.Popen(
            [
                server,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
        )
        wait_until(lambda: Redis(port=self.port).ping(), 10, "redis-server")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path)
    server.start()
    yield server
    server.stop()


@dataclass
class ImageHost:
    """Serves Label Studio's image URLs (uploads, local files) and slow ones, with token checks."""

    url: str
    images: dict[str, bytes]
    requests: list[str] = field(default_factory=list)
    delay: dict[str, float] = field(default_factory=dict)


def _png(colour: tuple[int, int, int]) -> bytes:
    import io

    buffer = io.BytesIO()
    solid_image(colour).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def image_host() -> Iterator[ImageHost]:
    red, blue = _png(RED), _png(BLUE)
    host = ImageHost(
        url="",
        images={
            "/data/local-files/?d=images/a.png": red,
            "/data/upload/1/9c45c4ff-upload.png": blue,
            "/data/local-files/?d=images/red.png": red,
            "/data/local-files/?d=images/blue.png": blue,
            "/data/local-files/?d=images/not-an-image.png": b"<html>login page</html>",
        },
    )

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            host.requests.append(self.path)
            if self.headers.get("Authorization") not in (
                f"Token {TOKEN}",
                f"Bearer {ACCESS_TOKEN}",
            ):
                self.send_error(401)
                return
            slow = parse_qs(urlparse(self.path).query).get("slow")
            if slow:
                time.sleep(float(slow[0]))
            body = host.images.get(self.path.split("&slow=")[0])
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            host.requests.append(f"POST {self.path}")
            if self.path != "/api/token/refresh/" or json.loads(body) != {
                "refresh": PERSONAL_TOKEN
            }:
                self.send_error(401)
                return
            reply = json.dumps({"access": ACCESS_TOKEN}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    host.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield host
    server.shutdown()


@pytest.fixture(scope="session")
def process_env(tiny_model_dir: Path, image_host: ImageHost) -> dict[str, str]:
    """Environment for backend and worker processes: the tiny model, the image host, one thread."""
    return {
        **os.environ,
        "VARCO_MODEL": str(tiny_model_dir),
        "LABEL_STUDIO_URL": image_host.url,
        "LABEL_STUDIO_API_KEY": TOKEN,
        "OMP_NUM_THREADS": "1",
        "LOG_LEVEL": "INFO",
    }


class Processes:
    """Starts console-script processes and kills whatever is left at the end of a test."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs = env, logs
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, args: list[str], **env: str) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}-{len(self.running)}.log", "wb")  # noqa: SIM115
        process = subprocess.Popen(
            [str(BIN / args[0]), *args[1:]],
            env={**self.env, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.running.append(process)
        return process

    def worker(self, redis_url: str, name: str, **env: str) -> subprocess.Popen[bytes]:
        process = self.start(
            "worker",
            ["varco-worker", "--name", name, "--heartbeat", "1"],
            REDIS_URL=redis_url,
            **env,
        )
        registered = lambda: name in {w.name for w in _workers(redis_url)}  # noqa: E731
        wait_until(registered, 60, f"worker {name} to register")
        return process

    def backend(self, redis_url: str | None = None, **env: str) -> str:
        port = free_port()
        extra = {"REDIS_URL": redis_url} if redis_url else {}
        self.start("backend", ["varco-labeler", "serve", "--port", str(port)], **extra, **env)
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(f"{url}/health").status_code == 200, 60, "the backend")
        return url

    def log(self, process: subprocess.Popen[bytes]) -> str:
        index = self.running.index(process)
        for path in self.logs.glob(f"*-{index}.log"):
            return path.read_text(errors="replace")
        return ""

    def stop_all(self) -> None:
        for process in self.running:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)


def _workers(redis_url: str) -> list[Any]:
    from rq import Worker

    return Worker.all(connection=Redis.from_url(redis_url))


@pytest.fixture
def processes(process_env: dict[str, str], tmp_path: Path) -> Iterator[Processes]:
    running = Processes({**process_env, "MODEL_DIR": str(tmp_path / "model-dir")}, tmp_path)
    yield running
    running.stop_all()
