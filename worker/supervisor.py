"""``varco-worker`` as a supervising parent: runs the real worker as a child process and starts it
again when it gave up a stalled job.

A job stuck in a GPU call can only be ended with its process (see worker/heartbeat.py), so a
worker whose job stalls exits with STALLED_EXIT_CODE. Restarting it here, rather than leaving it to
a process manager, works the same on a bare machine (a shell, tmux, a plain systemd unit) as under
compose. Any other exit ends the supervisor with the same code (a bad setting, a model that cannot
be loaded, a stop asked for), so the process manager still sees real failures.

The child stays in the supervisor's process group, so a terminal's Ctrl-C or a kill of the group
reaches both; a stop signal sent to the supervisor alone is passed on. The worker ignores the
second copy it may get (RQ ignores a repeated stop signal within a second).
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from collections.abc import Sequence

from worker.heartbeat import STALLED_EXIT_CODE

log = logging.getLogger("varco-worker.supervisor")

# Restarts wait 1 s, then twice as long after each stall, up to a minute: a GPU that hangs every
# job is not hammered. A worker that ran this long before stalling restarts at the first delay.
FIRST_DELAY = 1.0
MAX_DELAY = 60.0
CALM_AFTER = 600.0


def supervise(command: Sequence[str]) -> int:
    """Run ``command`` (the worker), again after each stall; the exit code of its last run."""
    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    delay = FIRST_DELAY
    try:
        while True:
            started = time.monotonic()
            child = subprocess.Popen(command)
            code = child.wait()
            if stopping or code != STALLED_EXIT_CODE:
                return code if code >= 0 else 128 - code  # killed by a signal: as a shell says
            if time.monotonic() - started > CALM_AFTER:
                delay = FIRST_DELAY
            log.warning(
                "worker pid %d gave up a stalled job; restarting in %.0f s", child.pid, delay
            )
            # Short sleeps: a stop asked for during the wait is seen at once.
            resume_at = time.monotonic() + delay
            while not stopping and time.monotonic() < resume_at:
                time.sleep(0.1)
            if stopping:
                return code
            delay = min(2 * delay, MAX_DELAY)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
