"""The one retry policy (tenacity): what is transient, the backoff, the limit and the log line.

Label Studio reads, image downloads, prediction pushes and an OpenAI-compatible model server all
retry through :func:`retrying`: a call raises :class:`TransientError` for what is worth another
try (a refused or dropped connection, 502-504 while a server restarts); anything else raises at
once. Waits double from ``backoff`` (at most 30 s), a warning is logged before each, and after
``attempts`` the last :class:`TransientError` is raised. Its message is what the log shows: it
must carry no token, password or URL query string.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from tenacity import (
    before_sleep_log,
    retry,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

# 1 + 2 + 4 + 8 + 16 s: rides out a Label Studio restart; a wrong address fails within a minute.
ATTEMPTS = 6


class TransientError(Exception):
    """Worth another try: the server is restarting or the connection dropped."""


def retrying(
    function: Callable[..., T], *, attempts: int = ATTEMPTS, backoff: float = 1.0
) -> Callable[..., T]:
    """``function`` retried while it raises :class:`TransientError`, with exponential backoff
    (``backoff``, twice that, ... at most 30 s) and a warning before each wait; after
    ``attempts`` the last error is raised."""
    return retry(
        retry=retry_if_exception_type(TransientError),
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=backoff, max=30),
        before_sleep=before_sleep_log(log, logging.WARNING),
        reraise=True,
    )(function)
