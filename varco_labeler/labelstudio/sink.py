"""Pushing predictions into a Label Studio project with the SDK, in bulk, without duplicates.

Label Studio may be down or restarting while a long pre-labelling run pushes: each push is retried
with exponential backoff. Whenever an earlier push may have landed (a second attempt, or a job run
again after its worker died), the tasks that already hold a prediction of the same model version
are left out first, so nothing is pushed twice. A first push skips that check: it costs one
request per task, more than the model itself on small checkpoints.

:class:`BackgroundPush` pushes from a thread while the caller runs the next GPU batch; what
queues up while a push is in flight goes in the next import, so a slow Label Studio gets fewer,
larger imports instead of stalling the GPU.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Sequence
from typing import Any

import httpx
from label_studio_sdk.core.api_error import ApiError
from pydantic import SecretStr

from varco_labeler.labelstudio.client import sdk_client
from varco_labeler.retries import TransientError, retrying

log = logging.getLogger(__name__)


class PushFailed(RuntimeError):
    """Label Studio did not take the predictions after every retry."""


class PredictionSink:
    def __init__(
        self,
        url: str,
        api_key: str | SecretStr,
        *,
        attempts: int = 6,
        backoff: float = 1.0,
        timeout: float = 60.0,
    ) -> None:
        self._http = httpx.Client(timeout=timeout)
        # Our own retries (with the duplicate check) replace the SDK's blind ones.
        self.client = sdk_client(url, api_key, httpx_client=self._http, max_retries=0)
        self.attempts, self.backoff = attempts, backoff

    def push(
        self,
        project: int,
        predictions: Sequence[dict[str, Any]],
        *,
        may_have_landed: bool = True,
        landed_as: Collection[str] = (),
    ) -> tuple[list[int], list[int]]:
        """Import predictions (``{"task", "result", "score"?, "model_version"}``) into a project.

        ``may_have_landed=False`` says no earlier attempt can have pushed these (a job's first
        run). ``landed_as``: other versions an earlier attempt may have pushed under (it ran
        before a model swap). Returns (task ids pushed now, task ids that already had one).
        """
        tried = 0

        def push_once() -> tuple[list[int], list[int]]:
            nonlocal tried
            tried += 1
            try:
                check = may_have_landed or tried > 1
                present = self._already_predicted(predictions, landed_as) if check else set()
                todo = [p for p in predictions if p["task"] not in present]
                if todo:
                    self.client.projects.import_predictions(id=project, request=todo)
                return [p["task"] for p in todo], sorted(present)
            except (httpx.HTTPError, ApiError) as error:
                if isinstance(error, ApiError) and error.status_code and error.status_code < 500:
                    raise PushFailed(f"Label Studio refused the predictions: {error}") from error
                raise TransientError(f"push to Label Studio failed: {error}") from error

        try:
            return retrying(push_once, attempts=self.attempts, backoff=self.backoff)()
        except TransientError as error:
            raise PushFailed(
                f"Label Studio unreachable after {tried} attempts: {error.__cause__}"
            ) from error.__cause__

    def _already_predicted(
        self, predictions: Sequence[dict[str, Any]], landed_as: Collection[str]
    ) -> set[int]:
        present = set()
        for prediction in predictions:
            versions = {prediction["model_version"], *landed_as}
            existing = self.client.predictions.list(task=prediction["task"])
            if any(p.model_version in versions for p in existing):
                present.add(prediction["task"])
        return present


class BackgroundPush:
    """One job's pushes into one project, made on a background thread, in order.

    :meth:`add` returns at once; :meth:`finish` waits for everything added and returns what
    :meth:`PredictionSink.push` would have for all of it, or raises its :class:`PushFailed`.
    After a failed push the rest is not pushed: the job fails and its retry checks what landed.
    """

    def __init__(
        self,
        sink: PredictionSink,
        project: int,
        *,
        may_have_landed: bool = True,
        landed_as: Collection[str] = (),
    ) -> None:
        self.sink, self.project, self.may_have_landed = sink, project, may_have_landed
        self.landed_as = tuple(landed_as)
        self.pushed: list[int] = []
        self.present: list[int] = []
        self._waiting: list[dict[str, Any]] = []
        self._closed = False
        self._error: BaseException | None = None
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="push", daemon=True)
        self._thread.start()

    def add(self, predictions: Sequence[dict[str, Any]]) -> None:
        if not predictions:
            return
        with self._changed:
            if self._error is not None:
                return  # a push failed: finish() raises that, nothing more goes out
            if self._closed:
                raise RuntimeError("push already finished")
            self._waiting.extend(predictions)
            self._changed.notify()

    def finish(self) -> tuple[list[int], list[int]]:
        """Wait for every prediction added to be pushed; (pushed now, already present)."""
        self.close()
        if self._error is not None:
            raise self._error
        return self.pushed, sorted(self.present)

    def close(self, *, drop_waiting: bool = False) -> None:
        """Stop taking predictions and wait for the thread; ``drop_waiting`` gives up what is
        not yet in flight (the job failed), though a push in flight is always waited for, so a
        retry of the job never races it into duplicates."""
        with self._changed:
            self._closed = True
            if drop_waiting:
                self._waiting.clear()
            self._changed.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._waiting and not self._closed:
                    self._changed.wait()
                if not self._waiting:
                    return
                batch, self._waiting = self._waiting, []
            try:
                pushed, present = self.sink.push(
                    self.project,
                    batch,
                    may_have_landed=self.may_have_landed,
                    landed_as=self.landed_as,
                )
            except BaseException as error:  # handed to finish(); nothing more is pushed
                with self._changed:
                    self._error = error
                    self._waiting.clear()
                    self._closed = True
                return
            self.pushed += pushed
            self.present += present
