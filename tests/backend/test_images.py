"""Fetching task images: only from Label Studio, allowed hosts and allowed directories."""

from __future__ import annotations

import io
import re

import pytest
from PIL import Image
from processes import PERSONAL_TOKEN, TOKEN, free_port

from varco_labeler.labelstudio.images import (
    ImageError,
    ImageFetcher,
    ImageUnavailable,
    cloud_reference,
)


@pytest.fixture
def fetcher(image_host):
    fetcher = ImageFetcher(image_host.url, TOKEN, max_pixels=10_000)
    yield fetcher
    fetcher.close()


def test_label_studio_uploads_and_local_files_with_a_legacy_token(fetcher):
    image, data = fetcher.fetch("/data/upload/1/9c45c4ff-upload.png")
    assert image.size == (48, 40) and image.mode == "RGB"
    assert image.getpixel((0, 0)) == (30, 30, 220)
    assert data.startswith(b"\x89PNG")
    assert fetcher.fetch("/data/local-files/?d=images/a.png")[0].getpixel((0, 0)) == (220, 30, 30)


def test_absolute_label_studio_url_is_fetched_with_the_token(fetcher, image_host):
    assert fetcher.fetch(f"{image_host.url}/data/local-files/?d=images/a.png")[0].size == (48, 40)


def test_personal_access_token_is_exchanged_for_a_bearer_token(image_host):
    fetcher = ImageFetcher(image_host.url, PERSONAL_TOKEN)
    fetcher.fetch("/data/local-files/?d=images/a.png")
    fetcher.fetch("/data/local-files/?d=images/red.png")
    assert image_host.requests.count("POST /api/token/refresh/") == 1  # exchanged once


def test_wrong_token_is_named(image_host):
    with pytest.raises(ImageError, match="refused LABEL_STUDIO_API_KEY"):
        ImageFetcher(image_host.url, "wrong").fetch("/data/local-files/?d=images/a.png")


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("http://169.254.169.254/latest/meta-data/", "host '169.254.169.254' is not allowed"),
        ("https://evil.example/cat.png", "not allowed; add it to VARCO_ALLOWED_IMAGE_HOSTS"),
        ("s3://bucket/cat.png", "is resolved by Label Studio for its task"),
        ("gopher://x/1", "unsupported image URL scheme"),
        ("/etc/passwd", "not inside an allowed directory"),
        ("file:///etc/passwd", "not inside an allowed directory"),
        ("/data/local-files/?d=images/missing.png", "HTTP 404"),
        ("/data/local-files/?d=images/not-an-image.png", "not an image"),
    ],
)
def test_refused_sources_say_why(fetcher, ref, message):
    with pytest.raises(ImageError, match=message.replace("?", r"\?").replace("(", r"\(")):
        fetcher.fetch(ref)


def test_local_files_only_inside_allowed_roots_without_traversal(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    Image.new("RGB", (8, 8), "red").save(root / "ok.png")
    (tmp_path / "secret.png").write_bytes((root / "ok.png").read_bytes())
    (root / "link.png").symlink_to(tmp_path / "secret.png")
    fetcher = ImageFetcher(local_roots=(root,))
    assert fetcher.fetch(str(root / "ok.png"))[0].size == (8, 8)
    for escape in (
        f"{root}/../secret.png",
        str(root / "link.png"),
        "file://" + str(tmp_path / "secret.png"),
    ):
        with pytest.raises(ImageError, match="not inside an allowed directory"):
            fetcher.fetch(escape)


def test_allowed_hosts_may_be_fetched(image_host):
    fetcher = ImageFetcher(allowed_hosts=("127.0.0.1",))
    # Not Label Studio for this fetcher, so no token is sent and the host answers 401.
    with pytest.raises(ImageError, match="HTTP 401"):
        fetcher.fetch(f"{image_host.url}/data/local-files/?d=images/a.png")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("side", [12_000, 20_000])  # 144 Mpx: our limit; 400 Mpx: Pillow's too
def test_decompression_bomb_is_refused_before_decoding(tmp_path, side):
    bomb = tmp_path / "bomb.png"
    Image.new("1", (side, side)).save(bomb)  # a few KB on disk
    assert bomb.stat().st_size < 200_000
    fetcher = ImageFetcher(local_roots=(tmp_path,), max_pixels=100_000_000)
    with pytest.raises(ImageError, match="over the 100,000,000 pixel limit"):
        fetcher.fetch(str(bomb))


def test_byte_limit(tmp_path):
    big = tmp_path / "big.png"
    Image.effect_noise((400, 400), 50).save(big)
    with pytest.raises(ImageError, match="over"):
        ImageFetcher(local_roots=(tmp_path,), max_bytes=1000).fetch(str(big))


def test_exif_orientation_is_applied_before_the_model_sees_the_image(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), "red").save(buffer, format="JPEG", exif=exif)
    (tmp_path / "turned.jpg").write_bytes(buffer.getvalue())
    image, _ = ImageFetcher(local_roots=(tmp_path,)).fetch(str(tmp_path / "turned.jpg"))
    assert image.size == (48, 64)


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://169.254.169.254/latest/meta-data/", "link-local (cloud metadata)"),
        ("http://[fd00:ec2::254]/latest/meta-data/", "link-local (cloud metadata)"),
        ("http://localhost:9/x.png", "loopback"),
        ("http://10.1.2.3/x.png", "private"),
        ("http://192.168.0.7/x.png", "private"),
    ],
)
def test_any_host_still_never_reaches_metadata_loopback_or_private_addresses(url, kind):
    fetcher = ImageFetcher(allowed_hosts=("*",))
    with pytest.raises(ImageError, match=rf"a {re.escape(kind)} address: refused"):
        fetcher.fetch(url)


def test_a_private_host_named_in_the_allowed_hosts_is_fetched(image_host):
    fetcher = ImageFetcher(allowed_hosts=("*", "127.0.0.1"))
    assert fetcher.fetch(f"{image_host.url}/bucket/red.png?X-Amz-Signature=x")[0].size == (48, 40)


def test_label_studio_redirect_is_followed_and_the_signature_never_shown(image_host, caplog):
    cloud = cloud_reference("s3://bucket/red.png", 7)
    assert cloud.startswith("/tasks/7/resolve/?fileuri=")
    trusted = ImageFetcher(image_host.url, TOKEN, allowed_hosts=("localhost",))
    assert trusted.fetch(cloud)[0].size == (48, 40)
    # The presigned URL's host is loopback: followed only when named.
    with pytest.raises(ImageError, match="loopback address") as refused:
        ImageFetcher(image_host.url, TOKEN).fetch(cloud)
    assert "SECRET" not in str(refused.value) and "X-Amz-Signature=..." not in caplog.text
    assert "SECRET" not in caplog.text


def test_a_redirect_from_another_host_is_refused(image_host):
    fetcher = ImageFetcher(allowed_hosts=("127.0.0.1", "localhost"))  # allowed, not Label Studio
    with pytest.raises(ImageError, match="only Label Studio's redirects are followed") as refused:
        fetcher.fetch(f"{image_host.url}/elsewhere/cat.png")
    assert "SECRET" not in str(refused.value)


def test_an_unreachable_host_fails_its_image_and_label_studio_down_is_worth_a_retry(
    image_host, monkeypatch
):
    import varco_labeler.labelstudio.images as images

    monkeypatch.setattr(images, "_RETRY_ATTEMPTS", 2)
    monkeypatch.setattr(images, "_RETRY_BACKOFF", 0.01)
    dead = f"http://127.0.0.1:{free_port()}"
    fetcher = ImageFetcher(dead, TOKEN, allowed_hosts=("127.0.0.1",))
    with pytest.raises(ImageUnavailable, match="cannot connect"):
        fetcher.fetch("/data/upload/1/x.png")  # Label Studio itself: run the job again later
    other = ImageFetcher(allowed_hosts=("localhost",))
    with pytest.raises(ImageError, match=r"cannot connect.*after 2 attempts") as failed:
        other.fetch(f"http://localhost:{free_port()}/x.png")  # another host: fails after 1 retry
    assert not isinstance(failed.value, ImageUnavailable)
