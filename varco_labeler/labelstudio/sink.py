"""Pushing predictions into a Label Studio project with the SDK, in bulk, without duplicates.

Label Studio may be down or restarting while a long pre-labelling run pushes: each push is retried
with exponential backoff. Whenever an earlier push may have landed (a second attempt, or a job run
again after its worker died), the tasks that already hold a prediction of the same model version
are left out first, so nothing is pushed twice. A first push skips that check: it costs one
request per task, more than the model itself on small checkpoints.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import httpx
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError

log = logging.getLogger(__name__)


class PushFailed(RuntimeError):
    """Label Studio did not take the predictions after every retry."""


class PredictionSink:
    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        attempts: int = 6,
        backoff: float = 1.0,
        timeout: float = 60.0,
    ) -> None:
        self._http = httpx.Client(timeout=timeout)
        # Our own retries (with the duplicate check) replace the SDK's blind ones.
        self.client = LabelStudio(
            base_url=url, api_key=api_key, httpx_client=self._http, max_retries=0
        )
        self.attempts, self.backoff = attempts, backoff

    def push(
        self, project: int, predictions: Sequence[dict[str, Any]], *, may_have_landed: bool = True
    ) -> tuple[list[int], list[int]]:
        """Import predictions (``{"task", "result", "score"?, "model_version"}``) into a project.

        ``may_have_landed=False`` says no earlier attempt can have pushed these (a job's first
        run). Returns (task ids pushed now, task ids that already had this version's prediction).
        """
        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            try:
                check = may_have_landed or attempt > 1
                present = self._already_predicted(predictions) if check else set()
                todo = [p for p in predictions if p["task"] not in present]
                if todo:
                    self.client.projects.import_predictions(id=project, request=todo)
                return [p["task"] for p in todo], sorted(present)
            except (httpx.HTTPError, ApiError) as error:
                if isinstance(error, ApiError) and error.status_code and error.status_code < 500:
                    raise PushFailed(f"Label Studio refused the predictions: {error}") from error
                if attempt == self.attempts:
                    raise PushFailed(
                        f"Label Studio unreachable after {attempt} attempts: {error}"
                    ) from error
                log.warning("push to Label Studio failed (%s); retrying in %.0f s", error, delay)
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def _already_predicted(self, predictions: Sequence[dict[str, Any]]) -> set[int]:
        present = set()
        for prediction in predictions:
            existing = self.client.predictions.list(task=prediction["task"])
            if any(p.model_version == prediction["model_version"] for p in existing):
                present.add(prediction["task"])
        return present
