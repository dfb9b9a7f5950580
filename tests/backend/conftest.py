"""Backend test fixtures: real processes (see tests/processes.py) and a loopback image host that
checks the Label Studio token the way Label Studio's file serving does."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from processes import ACCESS_TOKEN, PERSONAL_TOKEN, TOKEN, Processes, RedisProcess

from varco_labeler.engine.tiny import BLUE, RED, solid_image


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
            if self.path.startswith(("/tasks/", "/elsewhere/")):  # redirects, as presign does
                self.send_response(303)
                # Another host name for this server: the bucket is not Label Studio.
                bucket = host.url.replace("127.0.0.1", "localhost")
                self.send_header("Location", f"{bucket}/bucket/red.png?X-Amz-Signature=SECRET")
                self.end_headers()
                return
            if self.path.startswith("/bucket/"):  # a presigned object: no token, the signature
                body = host.images["/data/local-files/?d=images/red.png"]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
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


@pytest.fixture
def processes(process_env: dict[str, str], tmp_path: Path) -> Iterator[Processes]:
    running = Processes({**process_env, "MODEL_DIR": str(tmp_path / "model-dir")}, tmp_path)
    yield running
    running.stop_all()
