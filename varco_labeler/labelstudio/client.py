"""Label Studio's REST API as the backend reads it: one place for the base URL, the token kinds,
retries and paging. :class:`LabelStudioClient` reads what reconciling needs, :func:`sdk_client`
makes the SDK's client for the rest (prelabel, pushes, exports), :class:`LabelStudioAuth` signs
image downloads.

Tokens: a legacy token is sent as ``Token <key>``; a personal access token (a JWT) is exchanged
at ``/api/token/refresh/`` for a short-lived access token sent as ``Bearer``, exchanged again when
Label Studio answers 401. The key itself never reaches a log or an error message.

Reads are retried with exponential backoff while Label Studio restarts (a refused or dropped
connection, 502-504); a 404 is an answer (:data:`None`), any other refusal is
:class:`LabelStudioError`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Generator, Iterator
from datetime import datetime
from typing import Any

import httpx
from pydantic import SecretStr

from varco_labeler.labelstudio.timestamps import parse_timestamp
from varco_labeler.retries import ATTEMPTS, TransientError, retrying
from varco_labeler.settings import reveal

log = logging.getLogger(__name__)
# httpx logs every request's full URL at INFO, httpcore every response's headers (a redirect's
# Location) at DEBUG: a presigned URL's signature must never reach a log.
logging.getLogger("httpx").setLevel(logging.WARNING)
logging.getLogger("httpcore").setLevel(logging.WARNING)

# Label Studio's Data Manager caps a page at TASK_API_PAGE_SIZE_MAX (1,000 by default).
PAGE_SIZE = 100
_TRANSIENT_STATUS = frozenset({502, 503, 504})


class LabelStudioError(RuntimeError):
    """Label Studio refused a request, or could not be reached after every retry."""


class LabelStudioUnavailable(LabelStudioError):
    """Label Studio could not be reached (down, restarting, a wrong URL)."""


def looks_like_personal_token(token: str) -> bool:
    """Personal access tokens are JWTs (three base64 parts); legacy tokens are hex strings."""
    return token.count(".") == 2 and token.startswith("eyJ")


class LabelStudioAuth(httpx.Auth):
    """Either token kind, for any httpx request to Label Studio (API calls, file downloads)."""

    def __init__(self, url: str, api_key: str | SecretStr) -> None:
        self.url = url.rstrip("/")
        self._key = reveal(api_key) or ""
        self._bearer: str | None = None

    def __repr__(self) -> str:
        return f"LabelStudioAuth({self.url!r}, <key hidden>)"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if not looks_like_personal_token(self._key):
            request.headers["Authorization"] = f"Token {self._key}"
            yield request
            return
        if self._bearer is None:
            yield from self._exchange()
        request.headers["Authorization"] = f"Bearer {self._bearer}"
        response = yield request
        if response.status_code == 401:  # the access token expired: exchange the key again
            yield from self._exchange()
            request.headers["Authorization"] = f"Bearer {self._bearer}"
            yield request

    def _exchange(self) -> Generator[httpx.Request, httpx.Response, None]:
        response = yield httpx.Request(
            "POST", f"{self.url}/api/token/refresh/", json={"refresh": self._key}
        )
        response.read()
        if response.status_code != 200:
            raise LabelStudioError(
                f"Label Studio refused the personal access token (HTTP {response.status_code}): "
                "check LABEL_STUDIO_API_KEY"
            )
        self._bearer = response.json()["access"]


def sdk_client(
    url: str,
    api_key: str | SecretStr,
    *,
    timeout: float = 60.0,
    httpx_client: httpx.Client | None = None,
    max_retries: int = 2,
) -> Any:
    """Label Studio's SDK client (``label_studio_sdk.LabelStudio``) for what it wraps best:
    projects, tasks, predictions, exports. It handles both token kinds itself."""
    from label_studio_sdk import LabelStudio

    return LabelStudio(
        base_url=url.rstrip("/"),
        api_key=reveal(api_key),
        timeout=timeout,
        httpx_client=httpx_client,
        max_retries=max_retries,
    )


class LabelStudioClient:
    """Reads from one Label Studio with one API key (LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY)."""

    def __init__(
        self,
        url: str,
        api_key: str | SecretStr,
        *,
        timeout: float = 30.0,
        attempts: int = ATTEMPTS,
        backoff: float = 1.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.auth = LabelStudioAuth(self.url, api_key)
        self._http = httpx.Client(base_url=self.url, auth=self.auth, timeout=timeout)
        self._get = retrying(self._get_once, attempts=attempts, backoff=backoff)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> LabelStudioClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- one object by id: None when Label Studio does not have it -------------------------
    def project(self, project_id: int) -> dict[str, Any] | None:
        return self.get(f"/api/projects/{int(project_id)}/")

    def task(self, task_id: int) -> dict[str, Any] | None:
        """A task with its annotations, drafts and predictions in full."""
        return self.get(f"/api/tasks/{int(task_id)}/")

    def annotation(self, annotation_id: int) -> dict[str, Any] | None:
        return self.get(f"/api/annotations/{int(annotation_id)}/")

    # -- lists -----------------------------------------------------------------------------
    def task_count(self, project_id: int, *, updated_since: datetime | None = None) -> int:
        """How many tasks :meth:`tasks` would give (for a progress bar)."""
        params = {
            "project": int(project_id),
            "page_size": 1,
            "query": json.dumps(_since(updated_since)),
        }
        body = self.get("/api/tasks/", params=params)
        return int((body or {}).get("total") or 0)

    def tasks(
        self,
        project_id: int,
        *,
        updated_since: datetime | None = None,
        full: bool = False,
        page_size: int = PAGE_SIZE,
    ) -> Iterator[dict[str, Any]]:
        """A project's tasks, oldest update first; ``updated_since``: only those changed at or
        after it (Label Studio stamps a task whenever one of its annotations or predictions is
        saved or deleted one by one); ``full``: with annotations, drafts and predictions.

        Keyset paging on ``updated_at``: a task changed while this runs moves behind the cursor
        and is still read, where page numbers would shift and skip one.
        """
        bound = updated_since
        seen_at_bound: set[int] = set()
        page = 1
        while True:
            params: dict[str, Any] = {"project": int(project_id), "page_size": page_size}
            params["page"] = page
            params["query"] = json.dumps(_since(bound))
            if full:
                params["fields"] = "all"
            body = self.get("/api/tasks/", params=params)
            tasks = (body or {}).get("tasks") or []
            fresh = [t for t in tasks if t["id"] not in seen_at_bound]
            yield from fresh
            if len(tasks) < page_size:
                return
            last = parse_timestamp(tasks[-1].get("updated_at"))
            if fresh and last is not None and last != bound:
                bound, page = last, 1
                seen_at_bound = {t["id"] for t in tasks if parse_timestamp(t["updated_at"]) == last}
            else:  # a whole page stamped with the same instant: step over it by number
                seen_at_bound |= {t["id"] for t in tasks}
                page += 1

    # -- plumbing --------------------------------------------------------------------------
    def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        """The JSON body of a GET, None for 404; retried while Label Studio is unreachable."""
        try:
            return self._get(path, params)
        except TransientError as error:
            raise LabelStudioUnavailable(
                f"Label Studio at {self.url} unreachable after retries: {error}"
            ) from None

    def _get_once(self, path: str, params: dict[str, Any] | None) -> Any:
        try:
            response = self._http.get(path, params=params)
        except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError) as error:
            raise TransientError(f"cannot connect ({type(error).__name__})") from error
        except httpx.TimeoutException as error:
            raise TransientError(f"no answer in time ({type(error).__name__})") from error
        if response.status_code in _TRANSIENT_STATUS:
            raise TransientError(f"HTTP {response.status_code}")
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise LabelStudioError(
                f"Label Studio answered HTTP {response.status_code} to GET {path}: "
                f"{_detail(response)}"
            )
        return response.json()


def _since(bound: datetime | None) -> dict[str, Any]:
    """A Data Manager query: ordered by update time, from ``bound`` on."""
    query: dict[str, Any] = {"ordering": ["tasks:updated_at"]}
    if bound is not None:
        item = {
            "filter": "filter:tasks:updated_at",
            "operator": "greater_or_equal",
            "type": "Datetime",
            "value": bound.isoformat() + "Z",
        }
        query["filters"] = {"conjunction": "and", "items": [item]}
    return query


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("validation_errors") or body)[:300]
    return str(body)[:300]
