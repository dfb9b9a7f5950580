"""Images in a bucket, against a real Label Studio 1.23.2 and a real S3-compatible server (moto's,
on this machine): the bucket is connected to Label Studio as source cloud storage with presigned
URLs on and off, and the backend resolves every task's object through Label Studio.

- "Retrieve predictions" and ``prelabel --project`` store a prediction for every task, and
  ``export label-studio`` copies the bucket's images into the dataset;
- an object deleted from the bucket fails its own task, with the reason, and no other; the
  presigned URL's signature reaches no message and no log.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from processes import Processes, RedisProcess, free_port
from projects import COLOURS, connect, export_llava, varco

from varco_labeler.labelstudio.templates import label_config

CONFIG = label_config("grounding", ["Cat", "Dog"])
KEYS = {"id": "testing", "secret": "testing", "region": "us-east-1"}
# The bucket's presigned URLs point at this machine: the backend follows them only to a host
# named here (a real bucket's host is public and needs nothing).
BACKEND_ENV = {"VARCO_ALLOWED_IMAGE_HOSTS": "127.0.0.1"}


@dataclass
class Bucket:
    endpoint: str
    name: str
    client: Any

    def put_images(self, prefix: str) -> None:
        for name, colour in COLOURS.items():
            buffer = io.BytesIO()
            Image.new("RGB", (48, 40), colour).save(buffer, format="PNG")
            self.client.put_object(
                Bucket=self.name, Key=f"{prefix}/{name}.png", Body=buffer.getvalue()
            )


@pytest.fixture(scope="module")
def bucket(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bucket]:
    """moto's S3 server on a free port, with one bucket."""
    boto3 = pytest.importorskip("boto3")
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")  # noqa: SIM115
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(endpoint, timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "moto_server did not start"
                time.sleep(0.2)
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=KEYS["id"],
            aws_secret_access_key=KEYS["secret"],
            region_name=KEYS["region"],
        )
        client.create_bucket(Bucket="images")
        yield Bucket(endpoint, "images", client)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(10)
        log.close()


def cloud_project(api: httpx.Client, bucket: Bucket, title: str, presign: bool) -> int:
    """A project whose tasks are the bucket's objects under a prefix of its own."""
    project = api.post("/api/projects/", json={"title": title, "label_config": CONFIG}).json()
    prefix = f"project-{project['id']}"
    bucket.put_images(prefix)
    storage = api.post(
        "/api/storages/s3/",
        json={
            "project": project["id"],
            "title": "bucket",
            "bucket": bucket.name,
            "prefix": prefix,
            "regex_filter": r".*\.png",
            "use_blob_urls": True,
            "presign": presign,
            "s3_endpoint": bucket.endpoint,
            "aws_access_key_id": KEYS["id"],
            "aws_secret_access_key": KEYS["secret"],
            "region_name": KEYS["region"],
        },
    )
    assert storage.status_code == 201, storage.text
    synced = api.post(f"/api/storages/s3/{storage.json()['id']}/sync")
    assert synced.status_code == 200, synced.text
    deadline = time.monotonic() + 30
    while len(tasks_of(api, project["id"])) < len(COLOURS):
        assert time.monotonic() < deadline, "the bucket's objects never became tasks"
        time.sleep(0.3)
    return project["id"]


def tasks_of(api: httpx.Client, project: int) -> list[dict[str, Any]]:
    answer = api.get(
        "/api/tasks/", params={"project": project, "fields": "all", "resolve_uri": "false"}
    )
    return answer.json()["tasks"]


def labels_by_colour(api: httpx.Client, project: int) -> dict[str, list[str]]:
    out = {}
    for task in tasks_of(api, project):
        colour = task["data"]["image"].rsplit("/", 1)[-1].removesuffix(".png")
        labels = [
            label
            for prediction in task["predictions"]
            for item in prediction["result"]
            for label in item["value"].get("rectanglelabels", [])
        ]
        out[colour] = sorted(labels)
    return out


@pytest.mark.parametrize("presign", [True, False], ids=["presigned", "proxied"])
def test_cloud_tasks_are_predicted_by_retrieve_and_by_prelabel(
    presign: bool, label_studio, ls_client, bucket: Bucket, own_backend, tmp_path
) -> None:
    api = label_studio.api()
    retrieved = cloud_project(api, bucket, f"cloud retrieve {presign}", presign)
    prelabelled = cloud_project(api, bucket, f"cloud prelabel {presign}", presign)
    assert all(t["data"]["image"].startswith("s3://") for t in tasks_of(api, retrieved))
    for project in (retrieved, prelabelled):
        connect(ls_client, project, own_backend.url)
    answer = api.post(
        "/api/dm/actions",
        params={"id": "retrieve_tasks_predictions", "project": retrieved},
        json={"selectedItems": {"all": True, "excluded": []}, "project": str(retrieved)},
    )
    assert answer.status_code == 200, answer.text
    done = varco(own_backend.env, "prelabel", "--project", str(prelabelled))
    assert done.returncode == 0, done.stderr
    expected = {"red": ["Cat"], "blue": ["Dog", "Dog"]}  # what the tiny model was taught
    assert labels_by_colour(api, retrieved) == expected
    assert labels_by_colour(api, prelabelled) == expected

    # The live export copies the bucket's image into the dataset, resolved the same way.
    red = next(t for t in tasks_of(api, retrieved) if t["data"]["image"].endswith("red.png"))
    ls_client.annotations.create(red["id"], result=red["predictions"][0]["result"])
    out = tmp_path / "llava"
    (record,) = export_llava(own_backend.env, out, "label-studio", "--project", str(retrieved))
    with Image.open(out / record["image"]) as image:
        assert image.size == (48, 40) and image.convert("RGB").getpixel((0, 0)) == COLOURS["red"]


def test_a_deleted_object_fails_its_task_alone_and_no_signature_is_shown(
    label_studio, ls_client, bucket: Bucket, own_backend
) -> None:
    api = label_studio.api()
    project = cloud_project(api, bucket, "cloud deleted object", True)
    connect(ls_client, project, own_backend.url)
    bucket.client.delete_object(Bucket=bucket.name, Key=f"project-{project}/blue.png")
    done = varco(own_backend.env, "prelabel", "--project", str(project))
    assert done.returncode == 1, done.stderr  # a task failed
    assert "done 1" in done.stderr and "failed 1" in done.stderr, done.stderr
    # S3 answers 403 for a missing object to whoever may not list the bucket.
    reason = [line for line in done.stderr.splitlines() if "blue.png" in line][-1]
    assert "HTTP 403" in reason or "HTTP 404" in reason, done.stderr
    assert labels_by_colour(api, project) == {"red": ["Cat"], "blue": []}

    retrieve = api.post(
        "/api/dm/actions",
        params={"id": "retrieve_tasks_predictions", "project": project},
        json={"selectedItems": {"all": True, "excluded": []}, "project": str(project)},
    )
    assert retrieve.status_code == 200
    problem = httpx.get(f"{own_backend.url}/health").json()["last_problem"] or ""
    assert "blue.png" in problem and ("HTTP 403" in problem or "HTTP 404" in problem), problem
    for text in (done.stderr, problem, own_backend.service.log_text()):
        assert "Signature" not in text, [line for line in text.splitlines() if "Signature" in line]


def test_prelabel_through_the_queue_fetches_cloud_images_on_the_worker(
    label_studio, ls_client, bucket: Bucket, own_backend, tmp_path
) -> None:
    api = label_studio.api()
    project = cloud_project(api, bucket, "cloud queue", True)
    redis = RedisProcess(tmp_path)
    redis.start()
    processes = Processes(own_backend.env | {"MODEL_DIR": str(tmp_path / "worker")}, tmp_path)
    try:
        processes.worker(redis.url, "cloud-gpu")
        env = own_backend.env | {"REDIS_URL": redis.url}
        done = varco(env, "prelabel", "--project", str(project))
        assert done.returncode == 0, done.stderr
        assert "failed 0" in done.stderr
    finally:
        processes.stop_all()
        redis.stop()
    assert labels_by_colour(api, project) == {"red": ["Cat"], "blue": ["Dog", "Dog"]}
