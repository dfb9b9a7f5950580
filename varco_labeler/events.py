"""Webhook events from Label Studio, kept durably as they arrive.

Label Studio gives a webhook 1 s and never retries it, so the event is written (and fsynced) to an
append-only JSON Lines file under MODEL_DIR before the reply; nothing heavier runs in the request.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class EventLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def append(self, event: dict[str, Any]) -> None:
        line = json.dumps({"received_at": time.time(), **event}, ensure_ascii=False) + "\n"
        with self._lock, open(self.path, "a", encoding="utf-8") as file:
            file.write(line)
            file.flush()
            os.fsync(file.fileno())

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8") as file:
            for line in file:
                yield json.loads(line)
