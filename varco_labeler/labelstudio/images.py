"""Opening images safely and measuring them as Label Studio shows them."""

from __future__ import annotations

import io
import logging
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING
from urllib.parse import ParseResult, unquote, urlparse

import httpx
from PIL import Image, ImageOps

if TYPE_CHECKING:
    from varco_labeler.settings import Settings

log = logging.getLogger(__name__)

# Pillow's own bomb guard warns at ~89 Mpx and raises at twice that; we refuse at a set size.
MAX_PIXELS = 100_000_000
# EXIF orientations 5-8 turn the image a quarter: the shown width is the stored height.
_QUARTER_TURNS = frozenset({5, 6, 7, 8})


class ImageError(ValueError):
    """An image that cannot be used: unreadable, not an image, or too large."""


class ImageUnavailable(ImageError):
    """The image's server could not be reached even after retries: worth trying again later."""


def open_image(
    source: str | Path | IO[bytes], max_pixels: int = MAX_PIXELS, name: str | None = None
) -> Image.Image:
    """Open an image lazily (header only) and refuse decompression bombs before decoding."""
    name = name or str(source)
    try:
        image = Image.open(source)
    except FileNotFoundError as error:
        raise ImageError(f"{name}: no such file") from error
    except Image.DecompressionBombError as error:
        raise ImageError(f"{name}: over the {max_pixels:,} pixel limit ({error})") from error
    except (Image.UnidentifiedImageError, OSError) as error:
        raise ImageError(f"{name}: not an image ({error})") from error
    if image.width * image.height > max_pixels:
        raise ImageError(
            f"{name}: {image.width}x{image.height} is over the {max_pixels:,} pixel limit"
        )
    return image


def displayed_size(image: Image.Image) -> tuple[int, int]:
    """Width and height after EXIF orientation, i.e. as Label Studio and the model see it."""
    orientation = image.getexif().get(0x0112, 1)
    if orientation in _QUARTER_TURNS:
        return image.height, image.width
    return image.width, image.height


def upright(image: Image.Image) -> Image.Image:
    """The decoded image with its EXIF orientation applied, in RGB, ready for the model."""
    return ImageOps.exif_transpose(image).convert("RGB")


def decode_image(data: bytes, source: str, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode downloaded bytes into an upright RGB image, refusing non-images and bombs."""
    image = open_image(io.BytesIO(data), max_pixels=max_pixels, name=source)
    try:
        return upright(image)
    except (OSError, Image.DecompressionBombError) as error:
        raise ImageError(f"{source}: cannot decode ({error})") from error


class ImageFetcher:
    """Fetches task images: from Label Studio, allowed hosts, or allowed local directories only.

    ``/data/upload/...`` and ``/data/local-files/?d=...`` come from ``label_studio_url`` with the
    API key (a legacy token is sent as ``Token``; a personal access token is exchanged for a
    short-lived ``Bearer`` token). Other http(s) hosts must be in ``allowed_hosts`` ("*" for any);
    a local path must resolve inside one of ``local_roots``. Cloud URIs need Label Studio to
    resolve them and are refused here with a message saying so.
    """

    def __init__(
        self,
        label_studio_url: str | None = None,
        api_key: str | None = None,
        allowed_hosts: tuple[str, ...] = (),
        local_roots: tuple[Path, ...] = (),
        max_bytes: int = 50 * 1024 * 1024,
        max_pixels: int = MAX_PIXELS,
        timeout: float = 15.0,
    ) -> None:
        self.label_studio_url = label_studio_url.rstrip("/") if label_studio_url else None
        self._api_key = api_key
        self._bearer: str | None = None
        self.allowed_hosts = tuple(h.lower() for h in allowed_hosts)
        self.local_roots = tuple(Path(root).resolve() for root in local_roots)
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self._client = httpx.Client(timeout=timeout, follow_redirects=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageFetcher:
        return cls(
            label_studio_url=settings.label_studio_url,
            api_key=settings.label_studio_api_key,
            allowed_hosts=settings.allowed_image_hosts,
            local_roots=settings.local_image_roots,
            max_bytes=settings.max_image_bytes,
            max_pixels=settings.max_image_pixels,
            timeout=settings.image_timeout,
        )

    def fetch(self, ref: str) -> tuple[Image.Image, bytes]:
        """The upright image and the raw bytes it was decoded from (for content hashing)."""
        data = self.read_bytes(ref)
        return decode_image(data, ref, self.max_pixels), data

    def read_bytes(self, ref: str) -> bytes:
        parsed = urlparse(ref)
        if parsed.scheme in _CLOUD_SCHEMES:
            raise ImageError(
                f"{ref}: cloud storage URIs must be resolved by Label Studio; "
                "import the tasks through a cloud storage connection with presigned URLs"
            )
        if ref.startswith("/data/"):
            return self._from_label_studio(ref)
        if parsed.scheme in ("http", "https"):
            if self._is_label_studio(parsed):
                return self._from_label_studio(ref)
            host = (parsed.hostname or "").lower()
            if "*" not in self.allowed_hosts and host not in self.allowed_hosts:
                raise ImageError(
                    f"{ref}: host {host!r} is not allowed; add it to VARCO_ALLOWED_IMAGE_HOSTS"
                )
            return self._download(ref, {})
        if parsed.scheme in ("", "file"):
            return self._from_disk(unquote(parsed.path) if parsed.scheme else ref)
        raise ImageError(f"{ref}: unsupported image URL scheme {parsed.scheme!r}")

    def _is_label_studio(self, parsed: ParseResult) -> bool:
        if not self.label_studio_url:
            return False
        own = urlparse(self.label_studio_url)
        return (parsed.scheme, parsed.netloc) == (own.scheme, own.netloc)

    def _from_label_studio(self, ref: str) -> bytes:
        if not self.label_studio_url:
            raise ImageError(f"{ref}: set LABEL_STUDIO_URL (and LABEL_STUDIO_API_KEY) to fetch it")
        url = ref if "://" in ref else self.label_studio_url + ref
        data = self._download(url, self._auth_headers())
        if data is _UNAUTHORIZED and self._bearer:  # an expired access token: exchange again
            self._bearer = None
            data = self._download(url, self._auth_headers())
        if data is _UNAUTHORIZED:
            raise ImageError(f"{ref}: Label Studio refused LABEL_STUDIO_API_KEY (401)")
        return data

    def _auth_headers(self) -> dict[str, str]:
        if not self._api_key:
            return {}
        if not _looks_like_jwt(self._api_key):
            return {"Authorization": f"Token {self._api_key}"}
        if self._bearer is None:
            response = self._client.post(
                f"{self.label_studio_url}/api/token/refresh/", json={"refresh": self._api_key}
            )
            if response.status_code != 200:
                status = response.status_code
                raise ImageError(f"Label Studio refused the personal access token ({status})")
            self._bearer = response.json()["access"]
        return {"Authorization": f"Bearer {self._bearer}"}

    def _download(self, url: str, headers: dict[str, str]) -> bytes:
        """GET with a size cap; a dropped connection or a 502-504 (a server restarting) is
        retried with backoff, a slow answer is not (it would only multiply the wait)."""
        delay = _RETRY_BACKOFF
        for attempt in range(1, _RETRY_ATTEMPTS + 1):
            try:
                return self._get(url, headers)
            except _Transient as error:
                if attempt == _RETRY_ATTEMPTS:
                    raise ImageUnavailable(f"{url}: {error} after {attempt} attempts") from error
                log.warning("%s: %s; retrying in %.0f s", url, error, delay)
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def _get(self, url: str, headers: dict[str, str]) -> bytes:
        try:
            with self._client.stream("GET", url, headers=headers) as response:
                if response.status_code == 401 and headers:
                    return _UNAUTHORIZED
                if response.status_code in (502, 503, 504):
                    raise _Transient(f"HTTP {response.status_code}")
                if response.status_code != 200:
                    raise ImageError(f"{url}: HTTP {response.status_code}")
                declared = int(response.headers.get("content-length") or 0)
                if declared > self.max_bytes:
                    raise ImageError(f"{url}: {declared:,} bytes is over {self.max_bytes:,}")
                chunks, size = [], 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise ImageError(f"{url}: over {self.max_bytes:,} bytes")
                    chunks.append(chunk)
                return b"".join(chunks)
        except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError) as error:
            raise _Transient(f"cannot connect ({type(error).__name__})") from error
        except httpx.HTTPError as error:
            raise ImageError(f"{url}: cannot download ({type(error).__name__}: {error})") from error

    def _from_disk(self, path: str) -> bytes:
        resolved = Path(path).resolve()
        if not any(resolved.is_relative_to(root) for root in self.local_roots):
            raise ImageError(
                f"{path}: not inside an allowed directory; add one to VARCO_LOCAL_IMAGE_ROOTS"
            )
        try:
            size = resolved.stat().st_size
            if size > self.max_bytes:
                raise ImageError(f"{path}: {size:,} bytes is over {self.max_bytes:,}")
            return resolved.read_bytes()
        except OSError as error:
            raise ImageError(f"{path}: cannot read ({error.strerror})") from error

    def close(self) -> None:
        self._client.close()


_CLOUD_SCHEMES = frozenset({"s3", "gs", "azure-blob", "gcs"})
# 1 + 2 + 4 + 8 + 16 s: rides out a Label Studio restart; a refused connection fails fast.
_RETRY_ATTEMPTS, _RETRY_BACKOFF = 6, 1.0


class _Transient(Exception):
    """A failure worth retrying: the server is restarting or the connection dropped."""


_UNAUTHORIZED = b"\x00unauthorized"  # a sentinel no real image starts with


def _looks_like_jwt(token: str) -> bool:
    """Personal access tokens are JWTs (three base64 parts); legacy tokens are hex strings."""
    return token.count(".") == 2 and token.startswith("eyJ")
