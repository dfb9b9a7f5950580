"""After a promotion: the tasks nobody annotated get the new release's pre-labels, Label Studio
shows that version, and annotators get the least certain tasks first."""

from __future__ import annotations

import time
from typing import Any

from varco_labeler.feedback.store import FeedbackStore
from varco_labeler.labelstudio.client import sdk_client
from varco_labeler.releases import Release, release_settings
from varco_labeler.settings import Settings, reveal

# How long the queue's workers get to load a new release before re-labelling starts.
WORKER_SWAP_TIMEOUT = 600.0


def relabel(
    settings: Settings, project: int, release: Release, store: FeedbackStore
) -> dict[str, Any]:
    """Pre-label the project's unlabelled tasks with ``release`` (``prelabel`` underneath: low
    priority on the queue, or in this process without one), then make it the project's model
    version in Label Studio, least certain first. Returns what was done."""
    from varco_labeler.prelabel import Selection, prelabel_project

    run = release_settings(settings, release)
    if not settings.embedded:
        _wait_for_workers(run, release.version)
    summary = prelabel_project(
        run, project, Selection(unlabelled_only=True), store=store, progress=False
    )
    view = show_least_certain_first(settings, project, release.version)
    return {
        "version": release.version,
        "done": summary.done,
        "skipped": summary.skipped,
        "failed": len(summary.failed),
        "interrupted": summary.interrupted,
        "view": view,
    }


def show_least_certain_first(settings: Settings, project: int, version: str) -> int:
    """Make ``version`` the project's model version in Label Studio (its predictions are shown,
    its scores order the label stream) and serve the least certain tasks first; returns the id
    of the Data Manager tab sorted that way."""
    from varco_labeler.labelstudio.ordering import order_least_certain_first

    return order_least_certain_first(_client(settings), project, version).view


def _wait_for_workers(settings: Settings, version: str) -> None:
    """Until every live worker runs ``version``: ``prelabel`` refuses to run by one version
    while the workers push another."""
    from varco_labeler.queue import RQDispatcher

    dispatcher = RQDispatcher(settings)
    deadline = time.monotonic() + WORKER_SWAP_TIMEOUT
    while True:
        running = dispatcher.model_versions()
        if running and set(running.values()) == {version}:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"the workers did not load release {version} within {WORKER_SWAP_TIMEOUT:.0f} s "
                f"(they run {running or 'nothing: no worker is live'}); see their /health"
            )
        time.sleep(2.0)


def _client(settings: Settings) -> Any:
    url, key = settings.label_studio_url, reveal(settings.label_studio_api_key)
    if not (url and key):
        raise ValueError("set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY")
    return sdk_client(url, key)
