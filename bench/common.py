"""What every benchmark shares: the run context, tables, statistics, images and real processes.

Processes (redis-server, ``varco-labeler serve``, ``varco-worker``, the zero-cost worker and
server of :mod:`bench.zero`) are started in their own sessions and stopped by process group, so a
benchmark that fails leaves nothing behind. Nothing here is timed against a threshold: the suite
measures and reports, it never asserts a speed.
"""

from __future__ import annotations

import io
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
Scale = Literal["smoke", "quick", "full"]
T = TypeVar("T")


# -- the run -----------------------------------------------------------------------------------


@dataclass
class Context:
    """How big to run, where to put files, and the tiny model (built once per run)."""

    scale: Scale
    workdir: Path
    tiny_model_path: Path | None = None
    model_path: Path | None = None  # a real-size model (a GPU run), for batching
    log: Callable[[str], None] = lambda message: print(message, file=sys.stderr, flush=True)

    def pick(self, smoke: T, quick: T, full: T) -> T:
        return {"smoke": smoke, "quick": quick, "full": full}[self.scale]

    def tiny_model(self) -> Path:
        """The tiny VARCO-shaped checkpoint (engine.tiny), built in a child process once."""
        if self.tiny_model_path is None:
            out = self.workdir / "tiny-model"
            started = time.perf_counter()
            subprocess.run(
                [str(BIN / "varco-labeler"), "tiny-model", str(out)],
                env=child_env(),
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            self.log(f"  tiny model built in {time.perf_counter() - started:.1f} s")
            self.tiny_model_path = out
        return self.tiny_model_path

    def subdir(self, name: str) -> Path:
        path = self.workdir / name
        path.mkdir(parents=True, exist_ok=True)
        return path


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Any]]

    def _cells(self) -> list[list[str]]:
        return [[_cell(value) for value in row] for row in self.rows]

    def render(self) -> str:
        cells = self._cells()
        widths = [
            max([len(column)] + [len(row[i]) for row in cells])
            for i, column in enumerate(self.columns)
        ]
        first = max(widths[0], len(self.columns[0]))

        def line(values: Sequence[str]) -> str:
            rest = [value.rjust(width) for value, width in zip(values[1:], widths[1:], strict=True)]
            return "  ".join([values[0].ljust(first), *rest])

        rule = "-" * len(line(self.columns))
        return "\n".join([self.title, rule, line(self.columns), rule, *map(line, cells), rule])

    def markdown(self) -> str:
        head = "| " + " | ".join(self.columns) + " |"
        align = "| --- |" + " ---: |" * (len(self.columns) - 1)
        body = ["| " + " | ".join(row) + " |" for row in self._cells()]
        return "\n".join([f"**{self.title}**", "", head, align, *body])


@dataclass
class Report:
    """One benchmark's result: tables for people, ``data`` for the JSON file."""

    name: str
    tables: list[Table]
    data: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        if abs(value) >= 0.1:
            return f"{value:.2f}"
        return f"{value:.3f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


# -- statistics --------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_summary(seconds: Sequence[float], tasks: int) -> dict[str, float]:
    """Milliseconds per call (p50/p95/p99/mean) and tasks per second over the calls' total."""
    return {
        "calls": len(seconds),
        "tasks": tasks,
        "p50_ms": percentile(seconds, 50) * 1000,
        "p95_ms": percentile(seconds, 95) * 1000,
        "p99_ms": percentile(seconds, 99) * 1000,
        "mean_ms": statistics.fmean(seconds) * 1000,
        "tasks_per_s": tasks / sum(seconds),
    }


def rate(function: Callable[[], object], min_seconds: float, rounds: int = 3) -> float:
    """Calls per second of ``function`` on one core: calls per second of this process's CPU time
    (on a shared machine wall time counts other processes' turns), the median of ``rounds``
    rounds of >= min_seconds each."""
    function()  # warm-up
    rates = []
    for _ in range(rounds):
        calls, started = 0, time.process_time()
        while True:
            function()
            calls += 1
            elapsed = time.process_time() - started
            if elapsed >= min_seconds:
                break
        rates.append(calls / elapsed)
    return statistics.median(rates)


# -- the machine -------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_gb = None
    with suppress(OSError, ValueError, IndexError):
        kib = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1])
        memory_gb = round(kib / 1024 / 1024, 1)
    gpu = None
    if shutil.which("nvidia-smi"):
        with suppress(OSError, subprocess.SubprocessError):
            gpu = subprocess.run(
                ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": memory_gb,
        "gpu": gpu or None,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


# -- images ------------------------------------------------------------------------------------

RED, BLUE = (220, 30, 30), (30, 30, 220)  # the colours engine.tiny taught the model


def unique_png(index: int, colour: tuple[int, int, int] | None = None) -> bytes:
    """A 48x40 PNG, red or blue (alternating) with one pixel encoding ``index``.

    Every image differs, so the output cache (keyed by image bytes) never answers for the model;
    the tiny model still sees a red or blue image and answers as it was taught.
    """
    colour = colour or (RED if index % 2 == 0 else BLUE)
    image = Image.new("RGB", (48, 40), colour)
    image.putpixel((0, 0), (index % 256, (index // 256) % 256, (index // 65536) % 256))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_images(folder: Path, count: int, start: int = 0, prefix: str = "img") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(start, start + count):
        path = folder / f"{prefix}-{index:06d}.png"
        path.write_bytes(unique_png(index))
        paths.append(path)
    return paths


# -- processes ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check: Callable[[], bool], timeout: float, what: str, poll: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with suppress(Exception):
            if check():
                return
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def child_env(**extra: str) -> dict[str, str]:
    """This environment without settings that would change our processes, plus ``extra``.

    One torch thread: tiny-model work is several times faster that way on a small machine.
    """
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("LABEL_STUDIO_", "VARCO_", "DJANGO_"))
        and name not in ("REDIS_URL", "MODEL_DIR", "PORT", "BASIC_AUTH_USER", "BASIC_AUTH_PASS")
    }
    return env | {"OMP_NUM_THREADS": "1", "LOG_LEVEL": "WARNING", "PYTHONPATH": str(REPO)} | extra


def peak_rss_mib(pid: int) -> dict[str, float]:
    """Peak (VmHWM) and current (VmRSS) resident memory of a live process, in MiB."""
    found: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            found[{"VmHWM": "peak_rss_mib", "VmRSS": "rss_mib"}[key]] = int(value.split()[0]) / 1024
    return found


def mapped_torch(pid: int) -> bool:
    """Whether a live process has torch's shared libraries mapped (it imported torch)."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return "libtorch" in maps or "/torch/lib/" in maps


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    url: str = ""

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 40) -> str:
        with suppress(OSError):
            text = self.log_path.read_text(errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        return "(no log)"

    def alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with status {self.process.returncode}:\n{self.log_tail()}"
            )


def spawn(argv: list[str], env: dict[str, str], cwd: Path, log_path: Path) -> subprocess.Popen:
    """Start a server in its own process group (so stopping reaches its children), logging to
    ``log_path`` (appended: a restarted server keeps one log)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


class Processes:
    """Starts processes for one benchmark and stops all of them, group and all, at the end."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        logs.mkdir(parents=True, exist_ok=True)
        self.services: list[Service] = []

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop_all()

    def start(
        self, name: str, argv: list[str], env: dict[str, str], cwd: Path = REPO, url: str = ""
    ) -> Service:
        log_path = self.logs / f"{name}-{len(self.services)}.log"
        service = Service(name, spawn(argv, env, cwd, log_path), log_path, url)
        self.services.append(service)
        return service

    def wait_http(self, service: Service, timeout: float, path: str = "/health") -> None:
        def answers() -> bool:
            service.alive()
            return httpx.get(service.url + path, timeout=2).status_code == 200

        try:
            wait_until(answers, timeout, f"{service.name} at {service.url}{path}", poll=0.2)
        except TimeoutError as error:
            raise RuntimeError(f"{error}; its log:\n{service.log_tail()}") from None

    def redis(self) -> str:
        server = shutil.which("redis-server")
        if server is None:
            raise RuntimeError("redis-server is not installed: run scripts/setup.sh")
        port = free_port()
        argv = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "no", "--dir", str(self.logs)]
        self.start("redis", argv, child_env())
        from redis import Redis

        wait_until(lambda: bool(Redis(port=port).ping()), 10, "redis-server")
        return f"redis://127.0.0.1:{port}/0"

    def backend(self, name: str, env: dict[str, str], timeout: float = 90) -> Service:
        """``varco-labeler serve`` (queue mode with REDIS_URL in env, else embedded)."""
        port = free_port()
        argv = [str(BIN / "varco-labeler"), "serve", "--host", "127.0.0.1", "--port", str(port)]
        service = self.start(name, argv, env, url=f"http://127.0.0.1:{port}")
        self.wait_http(service, timeout)
        return service

    def zero_server(self, env: dict[str, str], timeout: float = 60) -> Service:
        """The embedded backend with the zero-cost engine (bench.zero serve)."""
        port = free_port()
        argv = [sys.executable, "-m", "bench.zero", "serve", "--port", str(port)]
        service = self.start("zero-server", argv, env, url=f"http://127.0.0.1:{port}")
        self.wait_http(service, timeout)
        return service

    def worker(
        self, name: str, argv: list[str], env: dict[str, str], redis_url: str, timeout: float = 90
    ) -> Service:
        """A worker process; returns once it has registered with Redis."""
        from redis import Redis
        from rq import Worker

        service = self.start(name, argv, env)
        connection = Redis.from_url(redis_url)

        def registered() -> bool:
            service.alive()
            return any(w.name == name for w in Worker.all(connection=connection))

        try:
            wait_until(registered, timeout, f"worker {name} to register", poll=0.2)
        except TimeoutError as error:
            raise RuntimeError(f"{error}; its log:\n{service.log_tail()}") from None
        return service

    def varco_worker(self, name: str, env: dict[str, str], redis_url: str) -> Service:
        argv = [str(BIN / "varco-worker"), "--name", name, "--redis-url", redis_url]
        return self.worker(name, argv, env, redis_url)

    def zero_worker(self, name: str, env: dict[str, str], redis_url: str) -> Service:
        argv = [sys.executable, "-m", "bench.zero", "worker", "--name", name]
        return self.worker(name, [*argv, "--redis-url", redis_url], env, redis_url)

    def stop(self, service: Service) -> None:
        if service.process.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(service.pid, signal.SIGTERM)
            try:
                service.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(service.pid, signal.SIGKILL)
                service.process.wait(timeout=5)
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(service.pid, signal.SIGKILL)  # whatever the leader left in its group

    def stop_all(self) -> None:
        for service in reversed(self.services):
            self.stop(service)
