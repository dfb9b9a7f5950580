"""When the work in this process last moved on: a monotonic clock the engine touches and the
worker watches.

The engine reports a generation step, a finished request or batch; jobs report each image fetched.
A worker's watchdog (worker/heartbeat.py) compares :func:`seconds_since` with the stall timeout:
a heartbeat proves that the process lives, this proves that its job progresses. Pure Python, so
any engine (and the light backend) may import it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

# Floats and ints replaced whole: reading and writing them from several threads needs no lock.
_last = time.monotonic()
_paused = 0


def report() -> None:
    """Work moved on just now."""
    global _last
    _last = time.monotonic()


def seconds_since() -> float:
    """Seconds since work last moved on in this process (0 while paused)."""
    return 0.0 if _paused else time.monotonic() - _last


@contextmanager
def paused() -> Iterator[None]:
    """Long work that reports no steps and is no stall (loading a new model between jobs)."""
    global _paused
    _paused += 1
    try:
        yield
    finally:
        _paused -= 1
        report()
