"""Opening images safely and measuring them as Label Studio shows them."""

from __future__ import annotations

import base64
import io
import ipaddress
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING
from urllib.parse import ParseResult, unquote, urlparse

import httpx
from PIL import Image, ImageOps

from varco_labeler.labelstudio.client import LabelStudioAuth, LabelStudioError
from varco_labeler.retries import TransientError, retrying

if TYPE_CHECKING:
    from pydantic import SecretStr

    from varco_labeler.settings import Settings

log = logging.getLogger(__name__)

# Pillow's own bomb guard warns at ~89 Mpx and raises at twice that; we refuse at a set size.
MAX_PIXELS = 100_000_000
# EXIF orientations 5-8 turn the image a quarter: the shown width is the stored height.
_QUARTER_TURNS = frozenset({5, 6, 7, 8})


class ImageError(ValueError):
    """An image that cannot be used: unreadable, not an image, or too large."""


class ImageUnavailable(ImageError):
    """Label Studio could not be reached even after retries (a restart?): worth running the
    job again later. Another host that cannot be reached fails its task alone (ImageError)."""


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
    """The decoded image with its EXIF orientation applied, in RGB, ready for the model.

    In place, and an RGB image is not converted: each copy of a photo costs as much as decoding
    it (a 1024x768 JPEG: 1.3 ms decoded, 5.5 ms with two copies)."""
    ImageOps.exif_transpose(image, in_place=True)
    image.load()  # decoded here, on the download thread, not when the model first reads it
    return image if image.mode == "RGB" else image.convert("RGB")


def decode_image(data: bytes, source: str, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode downloaded bytes into an upright RGB image, refusing non-images and bombs."""
    image = open_image(io.BytesIO(data), max_pixels=max_pixels, name=source)
    try:
        return upright(image)
    except (OSError, Image.DecompressionBombError) as error:
        raise ImageError(f"{source}: cannot decode ({error})") from error


class ImageFetcher:
    """Fetches task images: from Label Studio, allowed hosts, or allowed local directories only.

    Label Studio's own paths come from ``label_studio_url`` with the API key (either token kind,
    see ``client.LabelStudioAuth``): uploads ``/data/upload/...``, local files
    ``/data/local-files/?d=...``, cloud objects resolved per task
    ``/tasks/{id}/resolve/?fileuri=...`` and ``/storage-data/...``. A redirect Label Studio
    answers with (a presigned URL on the bucket's host) is followed without the key, because
    Label Studio chose it; a redirect from any other host is refused. Other http(s) hosts must
    be in ``allowed_hosts`` ("*" for any). Every host but Label Studio's must resolve to public
    addresses unless ``allowed_hosts`` names it, so "*" never reaches a cloud metadata service,
    a loopback or a private address. A local path must resolve inside one of ``local_roots``.
    Query strings (a presigned URL's signature) never appear in messages.
    """

    def __init__(
        self,
        label_studio_url: str | None = None,
        api_key: str | SecretStr | None = None,
        allowed_hosts: tuple[str, ...] = (),
        local_roots: tuple[Path, ...] = (),
        max_bytes: int = 50 * 1024 * 1024,
        max_pixels: int = MAX_PIXELS,
        timeout: float = 15.0,
        resolve: Callable[[str], list[str]] | None = None,
    ) -> None:
        self.label_studio_url = label_studio_url.rstrip("/") if label_studio_url else None
        self._auth = (
            LabelStudioAuth(self.label_studio_url, api_key)
            if self.label_studio_url and api_key
            else None
        )
        self.allowed_hosts = tuple(h.lower() for h in allowed_hosts)
        self.local_roots = tuple(Path(root).resolve() for root in local_roots)
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self._resolve = resolve or _addresses
        self._client = httpx.Client(timeout=timeout, follow_redirects=False)
        self._get = retrying(self._get_once, attempts=_RETRY_ATTEMPTS, backoff=_RETRY_BACKOFF)
        self._get_elsewhere = retrying(
            self._get_once, attempts=_ELSEWHERE_ATTEMPTS, backoff=_RETRY_BACKOFF
        )

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
        return decode_image(data, self._redact(ref), self.max_pixels), data

    def read_bytes(self, ref: str) -> bytes:
        parsed = urlparse(ref)
        if parsed.scheme in CLOUD_SCHEMES:
            raise ImageError(
                f"{self._redact(ref)}: a cloud storage URI is resolved by Label Studio for its "
                "task; this item carries no task id to ask with (connect the bucket to the "
                "project as cloud storage and pre-label its tasks)"
            )
        if is_label_studio_path(ref):
            return self._from_label_studio(ref)
        if parsed.scheme in ("http", "https"):
            if self._is_label_studio(parsed):
                return self._from_label_studio(ref)
            host = (parsed.hostname or "").lower()
            if "*" not in self.allowed_hosts and host not in self.allowed_hosts:
                raise ImageError(
                    f"{self._redact(ref)}: host {host!r} is not allowed; add it to "
                    "VARCO_ALLOWED_IMAGE_HOSTS"
                )
            return self._download(ref)
        if parsed.scheme in ("", "file"):
            return self._from_disk(unquote(parsed.path) if parsed.scheme else ref)
        raise ImageError(f"{self._redact(ref)}: unsupported image URL scheme {parsed.scheme!r}")

    def _redact(self, url: str) -> str:
        """The URL without its query string (a presigned URL's signature), unless it is Label
        Studio's own: its query names a file and says which one failed."""
        parsed = urlparse(url)
        if not parsed.query or not parsed.netloc or self._is_label_studio(parsed):
            return url
        return parsed._replace(query="...", fragment="").geturl()

    def _is_label_studio(self, parsed: ParseResult) -> bool:
        if not self.label_studio_url:
            return False
        own = urlparse(self.label_studio_url)
        return (parsed.scheme, parsed.netloc) == (own.scheme, own.netloc)

    def _from_label_studio(self, ref: str) -> bytes:
        if not self.label_studio_url:
            raise ImageError(
                f"{self._redact(ref)}: set LABEL_STUDIO_URL (and LABEL_STUDIO_API_KEY) to fetch it"
            )
        url = ref if "://" in ref else self.label_studio_url + ref
        try:
            answer = self._get(url, self._auth)
        except TransientError as error:  # Label Studio restarting: the job is worth running again
            raise ImageUnavailable(f"{error} after {_RETRY_ATTEMPTS} attempts") from None
        if isinstance(answer, _Redirect):  # Label Studio chose it: a presigned URL
            answer = self._download(answer.location, redirected_by_label_studio=True)
        return answer

    def _download(self, url: str, *, redirected_by_label_studio: bool = False) -> bytes:
        """GET from a host other than Label Studio's: its addresses checked, no key sent, no
        redirect followed."""
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https"):
            raise ImageError(f"{self._redact(url)}: Label Studio redirected to a non-http(s) URL")
        self._check_address(parsed.hostname or "", url)
        try:
            answer = self._get_elsewhere(url, None)
        except TransientError as error:  # another host down: this task fails, not its whole job
            raise ImageError(f"{error} after {_ELSEWHERE_ATTEMPTS} attempts") from None
        if isinstance(answer, _Redirect):
            origin = "the presigned URL" if redirected_by_label_studio else "the image host"
            raise ImageError(
                f"{self._redact(url)}: {origin} redirected to "
                f"{self._redact(answer.location)}; only Label Studio's redirects are followed"
            )
        return answer

    def _check_address(self, host: str, url: str) -> None:
        """Refuse a host that resolves to a loopback, private, link-local (cloud metadata) or
        other non-public address, unless VARCO_ALLOWED_IMAGE_HOSTS names it."""
        if host.lower() in self.allowed_hosts:
            return
        try:
            addresses = self._resolve(host)
        except OSError as error:
            raise ImageError(f"{self._redact(url)}: cannot resolve {host!r} ({error})") from None
        for address in addresses:
            ip = ipaddress.ip_address(address.split("%")[0])
            if not ip.is_global or ip in _METADATA:
                raise ImageError(
                    f"{self._redact(url)}: {host!r} resolves to {ip}, a {_kind(ip)} address: "
                    "refused unless VARCO_ALLOWED_IMAGE_HOSTS names the host"
                )

    def _get_once(self, url: str, auth: httpx.Auth | None) -> bytes | _Redirect:
        """One GET with a size cap. A dropped connection or a 502-504 (a server restarting) is
        raised to be retried; a slow answer is not retried (it would only multiply the wait)."""
        try:
            with self._client.stream("GET", url, auth=auth) as response:
                if response.is_redirect:
                    location = response.headers.get("location", "")
                    return _Redirect(str(response.url.join(location)))
                if response.status_code == 401 and auth is not None:
                    raise ImageError(
                        f"{self._redact(url)}: Label Studio refused LABEL_STUDIO_API_KEY (401)"
                    )
                if response.status_code in (502, 503, 504):
                    raise TransientError(f"HTTP {response.status_code}")
                if response.status_code != 200:
                    raise ImageError(f"{self._redact(url)}: HTTP {response.status_code}")
                declared = int(response.headers.get("content-length") or 0)
                if declared > self.max_bytes:
                    raise ImageError(
                        f"{self._redact(url)}: {declared:,} bytes is over {self.max_bytes:,}"
                    )
                chunks, size = [], 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise ImageError(f"{self._redact(url)}: over {self.max_bytes:,} bytes")
                    chunks.append(chunk)
                return b"".join(chunks)
        except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError) as error:
            raise TransientError(
                f"{self._redact(url)}: cannot connect ({type(error).__name__})"
            ) from None
        except LabelStudioError as error:
            raise ImageError(f"{self._redact(url)}: {error}") from None
        except httpx.HTTPError as error:
            raise ImageError(
                f"{self._redact(url)}: cannot download ({type(error).__name__})"
            ) from None

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


CLOUD_SCHEMES = frozenset({"s3", "gs", "gcs", "azure-blob"})
# Paths Label Studio serves itself: uploads, local files, cloud objects resolved per task or
# project (presigned redirect or proxied bytes), and its own file storage.
LABEL_STUDIO_PATHS = ("/data/", "/tasks/", "/projects/", "/storage-data/")
# Label Studio: 1 + 2 + 4 + 8 + 16 s rides out a restart (and then the job runs again). Any
# other host: one retry after 1 s, then the task fails alone rather than hold up its batch.
_RETRY_ATTEMPTS, _ELSEWHERE_ATTEMPTS, _RETRY_BACKOFF = 6, 2, 1.0
# Cloud metadata services: AWS, GCP, Azure (169.254.169.254) and AWS's IPv6 address.
_METADATA = frozenset(
    {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
)


def is_label_studio_path(ref: str) -> bool:
    """A path Label Studio serves (relative to LABEL_STUDIO_URL)."""
    return ref.startswith(LABEL_STUDIO_PATHS)


def cloud_reference(ref: str, task_id: int | None) -> str:
    """A task's image reference as the backend fetches it: a cloud URI (``s3://...``) becomes
    Label Studio's per-task resolver path, the way Label Studio resolves it for its own editor;
    anything else is unchanged."""
    if urlparse(ref).scheme not in CLOUD_SCHEMES or task_id is None:
        return ref
    encoded = base64.urlsafe_b64encode(ref.encode()).decode()
    return f"/tasks/{int(task_id)}/resolve/?fileuri={encoded}"


@dataclass(frozen=True)
class _Redirect:
    location: str


def _addresses(host: str) -> list[str]:
    return sorted({info[4][0] for info in socket.getaddrinfo(host, None)})


def _kind(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    if ip in _METADATA or ip.is_link_local:
        return "link-local (cloud metadata)"
    if ip.is_loopback:
        return "loopback"
    if ip.is_private:
        return "private"
    return "non-public"
