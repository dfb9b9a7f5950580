"""Real processes for tests: redis-server, varco-worker and varco-labeler serve, on free ports.

Nothing is mocked: the backend and the workers are the installed console scripts and Redis is a
real redis-server. Every process gets its own session so a test can kill it, group and all.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from redis import Redis

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
    """A redis-server on a free port that tests may stop and start again; with ``password``,
    it requires it (``--requirepass``) and ``url`` carries it."""

    def __init__(self, directory: Path, password: str | None = None) -> None:
        self.port = free_port()
        self.directory = directory
        self.password = password
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        login = f":{self.password}@" if self.password else ""
        return f"redis://{login}127.0.0.1:{self.port}/0"

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
                *(["--requirepass", self.password] if self.password else []),
            ],
            stdout=subprocess.DEVNULL,
        )
        wait_until(lambda: Redis.from_url(self.url).ping(), 10, "redis-server")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


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
