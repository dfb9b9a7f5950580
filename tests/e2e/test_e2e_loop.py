"""Active learning against a real Label Studio 1.23.2, on the tiny model.

A project of 24 red images is pre-labelled by a model taught a systematic mistake (every cat boxed
at 0.6, 0.6, 0.9, 0.9 where it sits at 0.1, 0.2, 0.5, 0.9). Simulated annotators take tasks in the
order Label Studio serves them (``/api/projects/{id}/next/``) and fix what Label Studio shows;
each fix is counted (regions deleted, added or adjusted: the report's review effort). Then:

- round 1 (``loop --once``) syncs, trains a LoRA candidate on the train side, beats the serving
  model on the held-out tasks and is promoted: the embedded backend serves it, every untouched
  task gets its pre-label and Label Studio shows that version; the next annotators fix less;
- round 2 trains a deliberately bad candidate (a learning rate that wrecks it): not promoted;
- ``loop rollback`` brings the first model back: the backend serves it again and Label Studio
  shows its pre-labels.

The figures go to stderr for the README (``-s`` shows them).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import BackendServer, start_backend
from helpers import CATS_CONFIG
from projects import make_project, varco

from varco_labeler.feedback.loop_records import Decision, LoopRecords, State
from varco_labeler.feedback.report import review_effort
from varco_labeler.feedback.store import FeedbackStore
from varco_labeler.labelstudio import read_label_config
from varco_labeler.labelstudio.results import regions_to_results, results_to_regions
from varco_labeler.regions import Region
from varco_labeler.releases import ReleaseChannel
from varco_labeler.settings import Settings
from varco_labeler.varco import Box, Task, prompt_for

pytest.importorskip("trl", reason="the loop trains: it needs the train extra (trl, peft)")

CONFIG = read_label_config(CATS_CONFIG)
WRONG_CAT = "A <obj>red cat</obj><bbox>0.6, 0.6, 0.9, 0.9</bbox> sits."
TRUE_CAT = Region(Box(0.1, 0.2, 0.5, 0.9), label="Cat")
REDS = {f"red-{i}": (230 - 3 * i, 18 + 2 * i, 25 + (i % 4) * 5) for i in range(24)}
SERVING = "tiny-wrong"
PER_ROUND = 8
# LoRA as the closed-loop test trains the tiny model (160 steps at 5e-3 learn the box).
TRAIN = ["--max-steps", "160", "--lr", "5e-3", "--batch-size", "2", "--grad-accum", "1"]


@pytest.fixture(scope="module")
def wrong_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from varco_labeler.engine.tiny import RED, Lesson, build_tiny_model

    grounding = prompt_for(Task.GROUNDING)
    lessons = [Lesson(RED, grounding, WRONG_CAT), Lesson((200, 45, 35), grounding, WRONG_CAT)]
    return build_tiny_model(tmp_path_factory.mktemp("wrong"), lessons=lessons, teaching_steps=60)


@pytest.fixture(scope="module")
def loop_backend(
    our_env: dict[str, str], wrong_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Any:
    """The embedded backend serving the wrong model; the loop shares its MODEL_DIR (the store
    and the release file it follows)."""
    env = our_env | {"VARCO_MODEL": str(wrong_model), "VARCO_MODEL_VERSION": SERVING}
    server = start_backend(env, tmp_path_factory.mktemp("loop-backend"))
    yield server
    server.stop()


def corrections(prediction: list[dict[str, Any]]) -> int:
    """Regions an annotator deletes, adds or adjusts to turn the pre-label into the truth."""
    effort = review_effort(results_to_regions(prediction, CONFIG), [TRUE_CAT])
    return effort["deleted"] + effort["added"] + effort["adjusted"]


def annotate_next(api: httpx.Client, project: int, count: int) -> list[tuple[str, int]]:
    """``count`` annotators' tasks, in the order Label Studio serves them: each fixes the
    pre-label Label Studio shows. Returns (version corrected, corrections) per task."""
    shown_version = api.get(f"/api/projects/{project}/").json().get("model_version")
    done = []
    for _ in range(count):
        served = api.get(f"/api/projects/{project}/next/")
        assert served.status_code == 200, served.text
        task = served.json()
        predictions = api.get("/api/predictions/", params={"task": task["id"]}).json()
        shown = [p for p in predictions if p["model_version"] == shown_version] or predictions
        prediction = max(shown, key=lambda p: p["id"])
        truth = regions_to_results([TRUE_CAT], CONFIG, 48, 40, seed=f"human-{task['id']}")
        made = api.post(
            f"/api/tasks/{task['id']}/annotations/",
            json={"result": truth, "parent_prediction": prediction["id"], "lead_time": 3.0},
        )
        assert made.status_code == 201, made.text
        done.append((prediction["model_version"], corrections(prediction["result"])))
    return done


def loop(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], *args: str) -> int:
    """``varco-labeler loop ARGS`` in this process (torch is loaded once), with ``env``."""
    from varco_labeler.cli import main

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return main(["loop", *args])


def served_version(backend: BackendServer, task: dict[str, Any], project: int) -> str:
    """The model version of the pre-label the backend gives a task now."""
    body = {"tasks": [task], "project": f"{project}.0", "label_config": CATS_CONFIG}
    answer = httpx.post(f"{backend.url}/predict", json=body, timeout=60).json()
    return answer["results"][0]["model_version"]


def test_the_loop_learns_from_corrections_promotes_refuses_a_worse_model_and_rolls_back(
    label_studio: Any,
    ls_client: Any,
    loop_backend: BackendServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started = time.monotonic()
    api = label_studio.api()
    backend = loop_backend
    project = make_project(label_studio, ls_client, "loop", len(REDS), CATS_CONFIG, REDS)
    env = backend.env
    settings = Settings.from_env(env)
    prelabelled = varco(env, "prelabel", "--project", str(project))
    assert prelabelled.returncode == 0, prelabelled.stderr
    first = annotate_next(api, project, PER_ROUND)
    assert {version for version, _ in first} == {SERVING}

    # Round 1: trains on the train side, promoted, re-labels what nobody touched.
    one_round = ("--project", str(project), "--once", "--every", str(PER_ROUND))
    one_round += ("--held-out-share", "0.25")
    assert loop(monkeypatch, env, *one_round, *TRAIN) == 0
    store = FeedbackStore(model_dir=backend.model_dir)
    records = LoopRecords(store)
    (round_1,) = records.rounds(project)
    assert (round_1.state, round_1.decision) == (State.DONE, Decision.PROMOTED), round_1.error
    assert round_1.serving_score < round_1.candidate_score
    new_version = round_1.candidate_version
    channel = ReleaseChannel.for_settings(settings)
    assert channel.current().version == new_version
    assert ls_client.projects.get(id=project).model_version == new_version
    untouched = [t for t in ls_client.tasks.list(project=project) if not t.is_labeled]
    assert len(untouched) == len(REDS) - PER_ROUND
    relabelled = {
        p.task
        for p in ls_client.predictions.list(project=project)
        if p.model_version == new_version
    }
    assert relabelled >= {t.id for t in untouched}
    assert round_1.details["relabel"]["done"] == len(untouched)
    # The backend swapped to the release between requests, without a restart.
    probe = api.get(f"/api/tasks/{untouched[0].id}/").json()
    assert served_version(backend, probe, project) == new_version

    second = annotate_next(api, project, PER_ROUND)
    assert {version for version, _ in second} == {new_version}
    before = sum(n for _, n in first) / len(first)
    after = sum(n for _, n in second) / len(second)
    assert after < before

    # Round 2: a candidate wrecked by its learning rate scores worse: not promoted.
    wrecked = ["--max-steps", "20", "--lr", "5", "--batch-size", "2", "--grad-accum", "1"]
    assert loop(monkeypatch, env, *one_round, "--min-gain", "0", *wrecked) == 0
    round_2 = records.rounds(project)[0]
    assert (round_2.number, round_2.decision) == (2, Decision.REJECTED), round_2.error
    assert round_2.candidate_score < round_2.serving_score
    assert round_2.serving_version == new_version == channel.current().version

    # Rollback: the first model is the release again, served and shown.
    assert loop(monkeypatch, env, "rollback", SERVING, "--project", str(project)) == 0
    assert channel.current().version == SERVING
    assert ls_client.projects.get(id=project).model_version == SERVING
    assert served_version(backend, probe, project) == SERVING
    assert records.rounds(project)[0].decision == Decision.ROLLED_BACK
    store.close()

    print(
        f"\n[loop] {len(REDS)} tasks, {PER_ROUND} corrections per round, held-out share 0.25: "
        f"corrections per task {before:.2f} with {SERVING} (first {len(first)} tasks served), "
        f"{after:.2f} with {new_version} (next {len(second)}) after 1 round; round 1 held-out "
        f"score {round_1.serving_score:.3f} -> {round_1.candidate_score:.3f} "
        f"({round_1.details['timings']}); round 2 (wrecked) {round_2.serving_score:.3f} vs "
        f"{round_2.candidate_score:.3f}: rejected; {time.monotonic() - started:.0f} s in all",
        file=sys.stderr,
    )
