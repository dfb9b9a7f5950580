"""Least certain first: annotators get the pre-labels the model was least sure of first, through
Label Studio itself.

Label Studio's label stream ("Label All Tasks", GET /api/projects/{id}/next/) has a built-in
order for this: the project's "Uncertainty sampling" serves, among the unlabelled tasks that hold
a prediction of the project's model version, the one with the lowest prediction score. So this
sets the project's sampling and model version (the one whose scores count), and adds a Data
Manager tab, "Least certain first", sorted by prediction score ascending, for people to see the
order (and for "Label Tasks As Displayed" from that tab). Run it again after a re-label with a
new version.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any

UNCERTAINTY_SAMPLING = "Uncertainty sampling"  # Label Studio's Project.UNCERTAINTY
VIEW_TITLE = "Least certain first"
# Data Manager ordering: the prediction score (of the project's model version), ascending.
BY_SCORE = ["tasks:predictions_score"]


class OrderingError(ValueError):
    """The project cannot be ordered; the message says why."""


@dataclass(frozen=True)
class Ordering:
    project: int
    model_version: str
    view: int  # the "Least certain first" tab


def order_least_certain_first(
    client: Any, project: int, model_version: str | None = None
) -> Ordering:
    """Make ``project``'s label stream serve the lowest prediction score of ``model_version``
    (default: the version of the project's newest prediction) first. ``client``: the SDK's
    ``LabelStudio``. Idempotent: the tab is updated, not added again."""
    version = model_version or _newest_version(client, project)
    client.projects.update(id=project, sampling=UNCERTAINTY_SAMPLING, model_version=version)
    data = {"title": VIEW_TITLE, "ordering": BY_SCORE}
    views = [
        v for v in client.views.list(project=project) if (v.data or {}).get("title") == VIEW_TITLE
    ]
    if views:
        view = client.views.update(
            id=str(views[0].id), project=project, data={**views[0].data, **data}
        )
    else:
        filters = {"conjunction": "and", "items": []}
        view = client.views.create(project=project, data={**data, "filters": filters})
    return Ordering(project, version, view.id)


def _newest_version(client: Any, project: int) -> str:
    predictions = list(client.predictions.list(project=project))
    if not predictions:
        raise OrderingError(f"project {project} has no predictions to order by: pre-label it first")
    newest = max(predictions, key=lambda prediction: (prediction.created_at, prediction.id))
    return newest.model_version


def _order(args: argparse.Namespace) -> int:
    from label_studio_sdk.core.api_error import ApiError

    from varco_labeler.labelstudio.client import sdk_client
    from varco_labeler.settings import Settings, SettingsError, reveal

    try:
        settings = Settings.from_env()
        if not (settings.label_studio_url and settings.label_studio_api_key):
            raise OrderingError("set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY")
        client = sdk_client(settings.label_studio_url, reveal(settings.label_studio_api_key))
        done = order_least_certain_first(client, args.project, args.model_version)
    except (SettingsError, OrderingError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ApiError as error:
        print(f"error: Label Studio refused ({error.status_code}): {error.body}", file=sys.stderr)
        return 1
    print(
        f"project {done.project}: Label All Tasks now serves the lowest {done.model_version} "
        f"prediction score first (uncertainty sampling); tab {VIEW_TITLE!r} (view {done.view})"
    )
    return 0


def add_command(commands: argparse._SubParsersAction) -> None:
    """``varco-labeler order --project N``."""
    order = commands.add_parser(
        "order",
        help="put the least certain pre-labels first in a project's label stream",
        description="Set the project's sampling to Label Studio's uncertainty sampling with the "
        "given model version (so Label All Tasks serves the lowest prediction score first) and "
        f"add a Data Manager tab {VIEW_TITLE!r} sorted by prediction score. Needs "
        "LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY.",
    )
    order.add_argument("--project", type=int, required=True, help="Label Studio project id")
    order.add_argument(
        "--model-version",
        help="whose scores order the tasks (default: the version of the newest prediction)",
    )
    order.set_defaults(handler=_order)
