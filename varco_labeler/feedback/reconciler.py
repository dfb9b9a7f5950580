"""The backend's background reconciler: webhook notifications are read back right after they
are answered, and with VARCO_SYNC_INTERVAL every project is synced on a timer.

One daemon thread, woken by each webhook. Notifications wait in the store (``pending``), so those
received just before a restart are read back after it; while Label Studio is unreachable they
wait, and the thread tries again with a growing pause.
"""

from __future__ import annotations

import logging
import threading
import time

from varco_labeler.feedback.store import FeedbackStore
from varco_labeler.feedback.sync import ReadBack, sync_all
from varco_labeler.labelstudio.client import LabelStudioClient, LabelStudioError

log = logging.getLogger(__name__)

# The longest pause between read-back attempts while Label Studio is unreachable.
MAX_PAUSE = 60.0


class Reconciler:
    def __init__(
        self, store: FeedbackStore, client: LabelStudioClient, sync_interval: float = 0.0
    ) -> None:
        self.store, self.client = store, client
        self.read_back = ReadBack(store, client)
        self.sync_interval = sync_interval
        self.last_problem: str | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reconciler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def wake(self) -> None:
        """A webhook was stored: read it back now."""
        self._wake.set()

    def _run(self) -> None:
        pause = 1.0
        next_sync = time.monotonic() + self.sync_interval if self.sync_interval else None
        while not self._stop.is_set():
            try:
                while self.read_back.run() and not self._stop.is_set():
                    pass
                if next_sync is not None and time.monotonic() >= next_sync:
                    sync_all(self.store, self.client, on_error=self._sync_failed)
                    next_sync = time.monotonic() + self.sync_interval
                pause, self.last_problem = 1.0, None
                timeout = None if next_sync is None else max(0.0, next_sync - time.monotonic())
            except LabelStudioError as error:
                self.last_problem = f"reading back from Label Studio: {error}"
                log.warning("%s; trying again in %.0f s", self.last_problem, pause)
                timeout, pause = pause, min(MAX_PAUSE, pause * 2)
            except Exception:  # the thread must outlive any one failure
                log.exception("reconciling the feedback store failed; trying again")
                timeout, pause = pause, min(MAX_PAUSE, pause * 2)
            self._wake.wait(timeout)
            self._wake.clear()

    def _sync_failed(self, project: int, error: Exception) -> None:
        self.last_problem = f"sync of project {project}: {error}"
        log.warning("%s", self.last_problem)
