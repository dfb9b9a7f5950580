"""A real Label Studio 1.23.2 for the bulk benchmark, started as tests/e2e starts it.

It lives in its own virtualenv (scripts/install_label_studio.sh, idempotent, run here: it prints
the executable) and is configured on its first start (DESIGN.md section 4): admin user, legacy API
token, local IPs allowed for ML backends, local files served from a document root.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.common import REPO, Processes, Service, child_env, free_port

TOKEN = "bench0legacy0token0for0benchmarks"
USER, PASSWORD = "bench@example.com", "bench-password-1234"
START_TIMEOUT = float(os.environ.get("VARCO_E2E_LS_START_TIMEOUT", "180"))


def install() -> Path:
    """The label-studio executable, installed into .ls-venv (or $LS_VENV) when missing."""
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "install_label_studio.sh")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"scripts/install_label_studio.sh failed ({result.returncode}): {result.stderr[-2000:]}"
        )
    executable = Path(result.stdout.strip().splitlines()[-1])
    if not executable.exists():
        raise RuntimeError(f"no Label Studio executable at {executable}")
    return executable


@dataclass
class LabelStudio:
    service: Service
    document_root: Path
    start_seconds: float
    token: str = TOKEN

    @property
    def url(self) -> str:
        return self.service.url

    def api(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Token {self.token}"}, timeout=600
        )

    def sdk(self) -> Any:
        from label_studio_sdk import LabelStudio as Client

        return Client(base_url=self.url, api_key=self.token, timeout=600)


def first_start_env(
    data_dir: Path, document_root: Path, token: str, user: str, password: str
) -> dict[str, str]:
    """What Label Studio must be told on the FIRST start of a data directory (DESIGN.md 4)."""
    return {
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "LABEL_STUDIO_USERNAME": user,
        "LABEL_STUDIO_PASSWORD": password,
        "LABEL_STUDIO_USER_TOKEN": token,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        # Both are needed for a backend on 127.0.0.1: with only the first, connecting it answers
        # 403 and leaves a backend without its webhook.
        "ML_BLOCK_LOCAL_IP": "false",
        "SSRF_PROTECTION_ENABLED": "false",
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(document_root),
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
        "COLLECT_ANALYTICS": "false",
    }


def wait_for_token(url: str, token: str, timeout: float = 60.0) -> None:
    """/health answers before the user and its token exist on some starts: wait for both."""
    deadline = time.monotonic() + timeout
    while True:
        response = httpx.get(
            f"{url}/api/current-user/whoami", headers={"Authorization": f"Token {token}"}, timeout=5
        )
        if response.status_code == 200:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"Label Studio refuses the legacy token ({response.status_code}: "
                f"{response.text[:300]})"
            )
        time.sleep(0.5)


def start(processes: Processes, root: Path) -> LabelStudio:
    executable = install()
    data_dir, document_root = root / "data", root / "files"
    data_dir.mkdir(parents=True)
    document_root.mkdir(parents=True)
    port = free_port()
    env = child_env(**first_start_env(data_dir, document_root, TOKEN, USER, PASSWORD))
    env.pop("PYTHONPATH", None)
    env.pop("OMP_NUM_THREADS", None)
    argv = [str(executable), "start", "--no-browser", "--port", str(port)]
    argv += ["--internal-host", "127.0.0.1"]
    started = time.monotonic()
    service = processes.start("label-studio", argv, env, cwd=root, url=f"http://127.0.0.1:{port}")
    processes.wait_http(service, START_TIMEOUT)
    wait_for_token(service.url, TOKEN)
    return LabelStudio(service, document_root, time.monotonic() - started)
