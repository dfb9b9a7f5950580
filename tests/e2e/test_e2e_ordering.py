"""Least certain first, against the real Label Studio 1.23.2: after `varco-labeler order`, the
label stream (what "Label All Tasks" asks: GET /api/projects/{id}/next/) serves the tasks by
prediction score, lowest first, counting only the project's model version."""

from __future__ import annotations

import os

from projects import make_project, varco

from varco_labeler.labelstudio.ordering import BY_SCORE, VIEW_TITLE

# Task position -> the current version's prediction score; shuffled on purpose.
SCORES = [0.62, 0.15, 0.91, 0.40, 0.77]


def _stream(api, project: int, view: int | None = None) -> list[int]:
    """Walk the label stream as an annotator does: take the next task, submit it, again."""
    served = []
    query = f"?view={view}" if view else ""
    while (reply := api.get(f"/api/projects/{project}/next/{query}")).status_code == 200:
        task = reply.json()["id"]
        served.append(task)
        api.post(f"/api/tasks/{task}/annotations/", json={"result": []}).raise_for_status()
    assert reply.status_code == 404, reply.text  # "There are no tasks": the stream is done
    return served


def test_the_label_stream_serves_the_least_certain_first(label_studio, ls_client):
    project = make_project(label_studio, ls_client, "least certain first", len(SCORES))
    tasks = sorted(task.id for task in ls_client.tasks.list(project=project))
    # An older version's prediction, less certain than any: it must not count.
    ls_client.predictions.create(task=tasks[2], result=[], score=0.01, model_version="tiny-v1")
    for task, score in zip(tasks, SCORES, strict=True):
        ls_client.predictions.create(task=task, result=[], score=score, model_version="tiny-v2")
    env = os.environ | {
        "LABEL_STUDIO_URL": label_studio.url,
        "LABEL_STUDIO_API_KEY": label_studio.token,
    }

    done = varco(env, "order", "--project", str(project))
    assert done.returncode == 0, done.stderr
    assert "tiny-v2" in done.stdout
    views = [v for v in ls_client.views.list(project=project) if v.data.get("title") == VIEW_TITLE]
    assert len(views) == 1 and views[0].data["ordering"] == BY_SCORE
    assert varco(env, "order", "--project", str(project)).returncode == 0  # again: same tab
    assert len([v for v in ls_client.views.list(project=project)]) == len(views)

    by_score = [task for _, task in sorted(zip(SCORES, tasks, strict=True))]
    with label_studio.api() as api:
        assert _stream(api, project) == by_score


def test_order_refuses_a_project_without_predictions(label_studio, ls_client):
    project = make_project(label_studio, ls_client, "nothing predicted", 1)
    env = os.environ | {
        "LABEL_STUDIO_URL": label_studio.url,
        "LABEL_STUDIO_API_KEY": label_studio.token,
    }
    done = varco(env, "order", "--project", str(project))
    assert done.returncode == 2 and "pre-label it first" in done.stderr
