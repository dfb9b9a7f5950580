"""Nothing the annotators do is lost, against a real Label Studio 1.23.2.

- Fault test: a project pre-labelled by ``prelabel --project``; the backend stops; annotations are
  submitted, updated, skipped, drafted and deleted (one by one and in bulk from the Data Manager)
  through Label Studio; the backend starts again and ``sync`` runs: the store holds exactly what
  Label Studio holds, and a second ``sync`` changes nothing.
- Forged webhooks (an annotation Label Studio does not have, a real annotation of a project this
  backend was never set up for, a deletion of an annotation Label Studio still has) sent to a
  backend without basic auth store nothing and reach no export.
- An annotation made from version A's prediction, then re-predicted by version B, pairs with A.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import httpx
from projects import connect, export_llava, make_project, varco

from varco_labeler.feedback.pairing import STARTED_FROM, PairingStats
from varco_labeler.feedback.sources import examples_from_store
from varco_labeler.feedback.store import EventState, FeedbackStore

if TYPE_CHECKING:
    from conftest import BackendServer

BOX = {
    "from_name": "label",
    "to_name": "image",
    "type": "rectanglelabels",
    "original_width": 48,
    "original_height": 40,
    "image_rotation": 0,
    "value": {"x": 10.0, "y": 10.0, "width": 50.0, "height": 50.0, "rotation": 0},
}


def box(label: str, x: float = 10.0) -> dict[str, Any]:
    return {**BOX, "value": {**BOX["value"], "x": x, "rectanglelabels": [label]}}


def settled(backend: BackendServer, at_least: int = 0, timeout: float = 30.0) -> dict[str, int]:
    """Once ``at_least`` annotation webhooks came and none waits to be read back: the count of
    each outcome (webhooks of other kinds left out)."""
    store = FeedbackStore(model_dir=backend.model_dir)
    try:
        deadline = time.monotonic() + timeout
        while True:
            states = store.event_states()
            states.pop(EventState.KEPT, None)
            if not states.get(EventState.PENDING) and sum(states.values()) >= at_least:
                return states
            assert time.monotonic() < deadline, states
            time.sleep(0.2)
    finally:
        store.close()


def label_studio_annotations(api: httpx.Client, project: int) -> dict[int, dict[str, Any]]:
    """Every annotation Label Studio holds for a project, by id, as the store keeps them."""
    tasks = api.get("/api/tasks/", params={"project": project, "fields": "all", "page_size": 100})
    return {a["id"]: comparable(a) for task in tasks.json()["tasks"] for a in task["annotations"]}


def stored_annotations(backend: BackendServer, project: int) -> dict[int, dict[str, Any]]:
    store = FeedbackStore(model_dir=backend.model_dir)
    try:
        return {a["id"]: comparable(a) for t in store.tasks(project) for a in t.annotations}
    finally:
        store.close()


def comparable(annotation: dict[str, Any]) -> dict[str, Any]:
    keys = ("task", "result", "was_cancelled", "ground_truth", "lead_time", "completed_by")
    out = {k: annotation.get(k) for k in keys}
    out["parent_prediction"] = annotation.get("parent_prediction")
    out["updated_at"] = annotation["updated_at"].replace("+00:00", "Z")
    return out


def sync(backend: BackendServer, project: int) -> dict[str, Any]:
    done = varco(backend.env, "sync", "--project", str(project), "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_sync_recovers_what_was_done_while_the_backend_was_down(
    label_studio, ls_client, own_backend: BackendServer
) -> None:
    api = label_studio.api()
    project = make_project(label_studio, ls_client, "sync: fault", 8)
    connect(ls_client, project, own_backend.url)
    prelabelled = varco(own_backend.env, "prelabel", "--project", str(project))
    assert prelabelled.returncode == 0, prelabelled.stderr
    tasks = sorted(t.id for t in ls_client.tasks.list(project=project))
    predictions = {p.task: p for p in ls_client.predictions.list(project=project)}
    assert set(predictions) == set(tasks)

    # While the backend is up: an annotation arrives by webhook and is read back.
    before = sum(settled(own_backend).values())
    received_then_bulk_deleted = ls_client.annotations.create(
        tasks[0], result=[box("Cat")], lead_time=1.5
    )
    changed = ls_client.annotations.create(tasks[1], result=[box("Dog")], lead_time=2.0)
    received = settled(own_backend, at_least=before + 2)
    assert sum(received.values()) == before + 2
    assert received.get(EventState.APPLIED, 0) >= 2

    own_backend.stop()
    # While it is down: submit (from a prediction), update, skip, draft, delete one by one and
    # in bulk from the Data Manager. Label Studio sends each webhook once and it is lost.
    missed = 0
    started_from = predictions[tasks[2]]
    made = ls_client.annotations.create(
        tasks[2], result=started_from.result, parent_prediction=started_from.id, lead_time=0.8
    )
    missed += 1
    ls_client.annotations.update(changed.id, result=[box("Cat", x=20.0)])
    missed += 1
    ls_client.annotations.create(tasks[3], result=[], was_cancelled=True)
    missed += 1
    doomed = ls_client.annotations.create(tasks[4], result=[box("Dog")])
    ls_client.annotations.delete(id=doomed.id)
    missed += 2
    for task in tasks[5:7]:
        ls_client.annotations.create(task, result=[box("Dog")])
        missed += 1
    bulk = api.post(
        "/api/dm/actions",
        params={"id": "delete_tasks_annotations", "project": project},
        json={"selectedItems": {"all": False, "included": [tasks[0]]}, "project": str(project)},
    )
    assert bulk.status_code == 200, bulk.text
    missed += 1
    drafted = api.post(f"/api/tasks/{tasks[7]}/drafts", json={"result": [box("Cat")]})
    assert drafted.status_code == 201, drafted.text

    own_backend.start()
    first = sync(own_backend, project)
    truth = label_studio_annotations(api, project)
    stored = stored_annotations(own_backend, project)
    for key in truth.keys() | stored.keys():
        assert stored.get(key) == truth.get(key), key
    assert len(truth) == 5 and made.id in truth
    assert doomed.id not in truth and received_then_bulk_deleted.id not in truth
    assert truth[made.id]["parent_prediction"] == started_from.id
    store = FeedbackStore(model_dir=own_backend.model_dir)
    try:
        (draft_task,) = [t for t in store.tasks(project) if t.id == tasks[7]]
        assert draft_task.annotations == []
        after = store.event_states()
        linked = sum(p["id"] is not None for p in store.predictions() if p["project"] == project)
    finally:
        store.close()
    assert linked == len(tasks)  # each recorded prediction knows Label Studio's id
    changes = first["changes"]
    recovered = changes["added"] + changes["updated"] + changes["deleted"]
    assert changes["added"] == 4  # made from a prediction, skipped, tasks 5 and 6
    assert changes["updated"] == 1
    assert changes["deleted"] == 1  # deleted in bulk: no stamp, found by the counts
    after.pop(EventState.KEPT, None)
    assert after == received  # no webhook came while the backend was down

    second = sync(own_backend, project)
    assert second["changes"] == {"added": 0, "updated": 0, "deleted": 0, "predictions": 0}
    assert stored_annotations(own_backend, project) == truth
    print(
        f"\n[e2e] reliability: 2 annotation webhooks received, {missed} actions while the "
        f"backend was down (their webhooks lost), {recovered} annotation changes recovered by "
        f"sync ({changes}), 0 duplicated; second sync: {second['changes']}"
    )


def test_forged_webhooks_store_nothing(
    label_studio, ls_client, own_backend: BackendServer, tmp_path
) -> None:
    served = make_project(label_studio, ls_client, "sync: served", 2)
    connect(ls_client, served, own_backend.url)
    stranger = make_project(label_studio, ls_client, "sync: never set up", 1)
    (stranger_task,) = [t.id for t in ls_client.tasks.list(project=stranger)]
    real_stranger = ls_client.annotations.create(stranger_task, result=[box("Dog")])
    served_task = min(t.id for t in ls_client.tasks.list(project=served))
    base = sum(settled(own_backend).values())
    genuine = ls_client.annotations.create(served_task, result=[box("Cat")])
    before = settled(own_backend, at_least=base + 1)

    forged_result = [box("Dog", x=70.0)]
    task = {"id": served_task, "project": served, "data": {"image": "http://evil.example/x.png"}}
    forgeries = [
        {  # an annotation Label Studio does not have, in a project that is set up
            "action": "ANNOTATION_CREATED",
            "project": {"id": served},
            "task": task,
            "annotation": {"id": 987_654, "task": served_task, "result": forged_result},
        },
        {  # a real annotation, claimed for the served project, of a project never set up
            "action": "ANNOTATION_UPDATED",
            "project": {"id": served},
            "task": task,
            "annotation": {"id": real_stranger.id, "task": served_task, "result": forged_result},
        },
        {  # a genuine annotation's content rewritten
            "action": "ANNOTATION_UPDATED",
            "project": {"id": served},
            "task": task,
            "annotation": {"id": genuine.id, "task": served_task, "result": forged_result},
        },
        # the deletion of an annotation Label Studio still has
        {"action": "ANNOTATIONS_DELETED", "project": {"id": served}, "annotations": [genuine]},
    ]
    forgeries[-1]["annotations"] = [{"id": genuine.id}]
    for body in forgeries:
        answer = httpx.post(f"{own_backend.url}/webhook", json=body, timeout=1.0)
        assert answer.status_code == 200
    after = settled(own_backend, at_least=base + 1 + len(forgeries))
    assert (
        after.get(EventState.NOT_IN_LABEL_STUDIO, 0)
        == before.get(EventState.NOT_IN_LABEL_STUDIO, 0) + 1
    )
    assert after.get(EventState.UNKNOWN_PROJECT, 0) == before.get(EventState.UNKNOWN_PROJECT, 0) + 1

    stored = stored_annotations(own_backend, served)
    assert set(stored) == {genuine.id}
    assert stored[genuine.id]["result"] == [box("Cat")]  # what Label Studio holds
    assert stored_annotations(own_backend, stranger) == {}
    store = FeedbackStore(model_dir=own_backend.model_dir)
    try:
        images = {t.data.get("image") for t in store.tasks()}
    finally:
        store.close()
    assert "http://evil.example/x.png" not in images

    records = export_llava(own_backend.env, tmp_path / "export", "store", "--project", str(served))
    assert len(records) == 1
    assert "0.7" not in json.dumps(records)  # the forged box (x=70%) reached no export


def test_an_annotation_pairs_with_the_prediction_it_was_made_from(
    label_studio, ls_client, own_backend: BackendServer
) -> None:
    project = make_project(label_studio, ls_client, "sync: pairing", 1)
    connect(ls_client, project, own_backend.url)
    (task,) = [t.id for t in ls_client.tasks.list(project=project)]
    version_a = ls_client.predictions.create(
        task=task, result=[box("Dog")], model_version="version-A", score=0.4
    )
    ls_client.annotations.create(task, result=[box("Cat")], parent_prediction=version_a.id)
    ls_client.predictions.create(
        task=task, result=[box("Cat", x=30.0)], model_version="version-B", score=0.9
    )
    settled(own_backend)
    sync(own_backend, project)
    store = FeedbackStore(model_dir=own_backend.model_dir)
    try:
        stats = PairingStats()
        (example,) = examples_from_store(store, project, stats=stats)
    finally:
        store.close()
    assert example.model_version == "version-A"
    assert example.pairing_rule == STARTED_FROM


def test_a_restarted_backend_catches_up_by_itself_with_a_sync_interval(
    label_studio, ls_client, own_backend: BackendServer
) -> None:
    project = make_project(label_studio, ls_client, "sync: interval", 1)
    connect(ls_client, project, own_backend.url)
    (task,) = [t.id for t in ls_client.tasks.list(project=project)]
    own_backend.stop()
    made = ls_client.annotations.create(task, result=[box("Dog")])  # its webhook is lost
    own_backend.env["VARCO_SYNC_INTERVAL"] = "1"
    try:
        own_backend.start()
        deadline = time.monotonic() + 60
        while made.id not in stored_annotations(own_backend, project):
            assert time.monotonic() < deadline, "the periodic sync never caught up"
            time.sleep(0.5)
    finally:
        own_backend.stop()
        del own_backend.env["VARCO_SYNC_INTERVAL"]
        own_backend.start()
