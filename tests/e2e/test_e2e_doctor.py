"""``varco-labeler doctor`` against a real Label Studio and a real Redis: it names a wrong token
(and its kind), an unreachable Label Studio, a missing Redis and a project whose images cannot
be fetched, each with a fix, and exits non-zero; a sound set-up passes those checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from processes import PERSONAL_TOKEN, RedisProcess, free_port
from projects import make_project

BIN = Path(sys.executable).parent


def doctor(tmp_path: Path, *args: str, **env: str) -> tuple[int, dict[str, dict[str, Any]]]:
    """Run ``varco-labeler doctor --json ARGS``: its exit status and its checks by name."""
    clean = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("VARCO_", "LABEL_STUDIO_")) and name != "REDIS_URL"
    }
    done = subprocess.run(
        [str(BIN / "varco-labeler"), "doctor", "--json", *args],
        # The hub is never asked: the model check fails fast here (no copy), as on this machine.
        env=clean | {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")} | env,
        cwd=tmp_path,  # no .env of the checkout's
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert "Traceback" not in done.stderr, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] == (done.returncode == 0)
    return done.returncode, {check["name"]: check for check in report["checks"]}


def test_doctor_names_a_wrong_token_and_its_kind(label_studio, tmp_path: Path) -> None:
    code, checks = doctor(
        tmp_path, LABEL_STUDIO_URL=label_studio.url, LABEL_STUDIO_API_KEY=label_studio.token
    )
    assert checks["label-studio"]["status"] == "ok"
    assert checks["token"]["status"] == "ok"
    assert "legacy token" in checks["token"]["detail"]

    for wrong, kind in (("not0the0right0token", "legacy token"), (PERSONAL_TOKEN, "personal")):
        code, checks = doctor(
            tmp_path, LABEL_STUDIO_URL=label_studio.url, LABEL_STUDIO_API_KEY=wrong
        )
        assert code == 1
        token = checks["token"]
        assert token["status"] == "failed" and kind in token["detail"]
        assert "LABEL_STUDIO_API_KEY" in token["fix"]
        assert wrong not in json.dumps(checks)  # the key itself is never printed


def test_doctor_names_an_unreachable_label_studio(tmp_path: Path) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    code, checks = doctor(tmp_path, "--project", "1", LABEL_STUDIO_URL=nowhere)
    assert code == 1
    assert checks["label-studio"]["status"] == "failed"
    assert nowhere in checks["label-studio"]["detail"]
    assert "LABEL_STUDIO_URL" in checks["label-studio"]["fix"]
    assert checks["token"]["status"] == checks["project-image"]["status"] == "skipped"


def test_doctor_names_a_missing_redis_and_lists_live_workers(tmp_path: Path) -> None:
    missing = f"redis://:secret-pw@127.0.0.1:{free_port()}/0"
    code, checks = doctor(tmp_path, REDIS_URL=missing)
    assert code == 1
    assert checks["redis"]["status"] == "failed" and "REDIS_URL" in checks["redis"]["fix"]
    assert checks["workers"]["status"] == "skipped"
    assert "secret-pw" not in json.dumps(checks)

    redis = RedisProcess(tmp_path)
    redis.start()
    try:
        code, checks = doctor(tmp_path, REDIS_URL=redis.url)
    finally:
        redis.stop()
    assert checks["redis"]["status"] == "ok"
    assert checks["workers"]["status"] == "failed"  # none started
    assert "varco-worker" in checks["workers"]["fix"]
    assert checks["model"]["status"] == "skipped"  # queue mode: the workers load it


def test_doctor_fetches_a_projects_first_image_or_says_why_not(
    label_studio, ls_client, tmp_path: Path
) -> None:
    project = make_project(label_studio, ls_client, "doctor images", 2)
    env = {"LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token}
    code, checks = doctor(tmp_path, "--project", str(project), **env)
    assert checks["project-image"]["status"] == "ok", checks["project-image"]
    assert "48x40" in checks["project-image"]["detail"]

    # The files go away from Label Studio's document root: the image can no longer be had.
    for image in (label_studio.document_root / f"prelabel-{project}").iterdir():
        image.unlink()
    code, checks = doctor(tmp_path, "--project", str(project), **env)
    assert code == 1
    image = checks["project-image"]
    assert image["status"] == "failed" and "task" in image["detail"]
    assert "404" in image["detail"] and image["fix"]
