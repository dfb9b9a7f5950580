"""The worker's pipeline: images of the next GPU batch are fetched while a batch runs, and each
batch's predictions are pushed to Label Studio on a thread while the next one runs.

Ordering is checked with events (a step waits, with a generous timeout, for the step that must
come before it), never with timings.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from PIL import Image

from bench.simgpu import LABEL_CONFIG, GpuTimes, SimulatedGpuEngine
from varco_labeler import jobs
from varco_labeler.engine.base import Request, Result
from varco_labeler.labelstudio import read_label_config
from varco_labeler.labelstudio.sink import BackgroundPush, PushFailed
from varco_labeler.policy import Policy
from varco_labeler.settings import Settings

WAIT = 20.0  # seconds an event may take before the test fails instead of hanging


class FakeSink:
    """Records imports; the first import can be held until released."""

    def __init__(self, fail: bool = False) -> None:
        self.imports: list[list[int]] = []
        self.first_started = threading.Event()
        self.release_first = threading.Event()
        self.fail = fail

    def push(
        self,
        project: int,
        predictions: Sequence[dict[str, Any]],
        *,
        may_have_landed: bool,
        landed_as: Sequence[str] = (),
    ) -> tuple[list[int], list[int]]:
        if not self.imports:
            self.first_started.set()
            assert self.release_first.wait(WAIT)
        self.imports.append([p["task"] for p in predictions])
        if self.fail:
            raise PushFailed("Label Studio unreachable after 6 attempts")
        return [p["task"] for p in predictions], []


def test_predictions_added_during_a_push_go_out_together_in_order() -> None:
    sink = FakeSink()
    push = BackgroundPush(sink, project=1, may_have_landed=False)  # type: ignore[arg-type]
    push.add([{"task": 1}])
    assert sink.first_started.wait(WAIT)
    push.add([{"task": 2}, {"task": 3}])  # Label Studio is still busy with task 1
    push.add([{"task": 4}])
    sink.release_first.set()
    assert push.finish() == ([1, 2, 3, 4], [])
    assert sink.imports == [[1], [2, 3, 4]]


def test_a_failed_push_fails_the_job_and_nothing_more_is_pushed() -> None:
    sink = FakeSink(fail=True)
    sink.release_first.set()
    push = BackgroundPush(sink, project=1, may_have_landed=False)  # type: ignore[arg-type]
    push.add([{"task": 1}])
    push.close()  # waits for the push in flight
    push.add([{"task": 2}])  # ignored: the failure is what finish() reports
    with pytest.raises(PushFailed):
        push.finish()
    assert sink.imports == [[1]]


class GatedFetcher:
    """Serves solid images; fetching an image of a later batch waits until the engine has
    started on the first batch, so a worker that downloads everything first never gets there."""

    def __init__(self, gate_from: int) -> None:
        self.gate_from = gate_from
        self.first_batch_started = threading.Event()
        self.waited_for_gpu: list[bool] = []

    def fetch(self, ref: str) -> tuple[Image.Image, bytes]:
        index = int(ref.rsplit("-", 1)[1])
        if index >= self.gate_from:
            self.waited_for_gpu.append(self.first_batch_started.wait(WAIT))
        return Image.new("RGB", (32, 24), (index, 0, 0)), ref.encode()


class RecordingEngine(SimulatedGpuEngine):
    def __init__(self, fetcher: GatedFetcher, sink: FakeSink | None = None) -> None:
        super().__init__(GpuTimes(0.0, 0.0), max_batch_size=4)
        self.fetcher, self.sink = fetcher, sink
        self.batches: list[int] = []
        self.pushed_before_batch: list[int] = []

    def generate(self, requests: Sequence[Request]) -> list[Result]:
        self.fetcher.first_batch_started.set()
        if self.batches and self.sink is not None:
            # A later batch: the previous batch's import should be on its way meanwhile.
            self.sink.first_started.wait(WAIT)
            self.pushed_before_batch.append(len(self.batches))
            self.sink.release_first.set()
        self.batches.append(len(requests))
        return super().generate(requests)


@pytest.fixture
def installed() -> Iterator[tuple[GatedFetcher, RecordingEngine, FakeSink]]:
    fetcher = GatedFetcher(gate_from=4)
    sink = FakeSink()
    engine = RecordingEngine(fetcher, sink)
    settings = Settings(model="unused", label_studio_url="http://ls", label_studio_api_key="k")
    context = jobs.JobContext(engine, fetcher, jobs.OutputCache(), settings)  # type: ignore[arg-type]
    context._sink = sink  # type: ignore[assignment]
    jobs.install(context)
    yield fetcher, engine, sink
    jobs._context = None


def items(count: int, policy: Policy | None = None) -> list[dict[str, Any]]:
    policy = policy or Policy.resolve(Settings(model="unused"), read_label_config(LABEL_CONFIG))
    return [
        policy.item(str(i), {"image": f"image-{i}"}, task_id=100 + i, project=1)
        for i in range(count)
    ]


def test_the_first_batch_runs_while_later_images_are_still_being_fetched(installed) -> None:
    fetcher, engine, _ = installed
    engine.sink = None
    outputs = jobs.predict_batch(items(10))
    assert [output["key"] for output in outputs] == [str(i) for i in range(10)]
    assert all(output["regions"] and not output["cached"] for output in outputs)
    assert engine.batches == [4, 4, 2]
    assert fetcher.waited_for_gpu == [True] * 6


def test_a_batch_is_pushed_while_the_next_runs_and_the_job_returns_everything(installed) -> None:
    _, engine, sink = installed
    policy = Policy.resolve(
        Settings(model="unused"), read_label_config(LABEL_CONFIG), version="sim"
    )
    result = jobs.prelabel_batch(1, policy.to_json(), items(10, policy))
    assert engine.pushed_before_batch == [1, 2]
    assert sorted(result["pushed"]) == [100 + i for i in range(10)]
    assert sink.imports[0] == [100, 101, 102, 103]
    assert sorted(task for tasks in sink.imports for task in tasks) == result["pushed"]
    assert len(result["records"]) == 10 and result["failed"] == {}


def test_a_worker_warms_up_before_its_first_job() -> None:
    """What a first job would load on its way (Label Studio's client) is loaded at start."""
    engine = SimulatedGpuEngine(GpuTimes(0.0, 0.0))
    settings = Settings(model="unused", label_studio_url="http://ls", label_studio_api_key="k")
    fetcher = jobs.ImageFetcher.from_settings(settings)
    context = jobs.JobContext(engine, fetcher, jobs.OutputCache(), settings)
    context.warm_up()
    assert context._sink is not None
    without_label_studio = jobs.JobContext(engine, fetcher, jobs.OutputCache(), Settings())
    without_label_studio.warm_up()  # nothing to connect to: still no error
    assert without_label_studio._sink is None


class CountingFetcher:
    """Serves solid images in groups of ``group`` fetches that wait for one another: a group
    passes only when that many downloads run at once."""

    def __init__(self, group: int) -> None:
        self.together = threading.Barrier(group, timeout=WAIT)
        self.lock = threading.Lock()
        self.running = self.most = 0

    def fetch(self, ref: str) -> tuple[Image.Image, bytes]:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        self.together.wait()  # BrokenBarrierError: fewer downloads at once than the group
        with self.lock:
            self.running -= 1
        return Image.new("RGB", (8, 8)), ref.encode()


def test_a_worker_fetches_as_many_images_at_once_as_its_download_threads() -> None:
    settings = Settings.from_env({"VARCO_MODEL": "unused", "VARCO_DOWNLOAD_THREADS": "3"})
    fetcher = CountingFetcher(group=3)
    engine = SimulatedGpuEngine(GpuTimes(0.0, 0.0), max_batch_size=4)
    jobs.install(jobs.JobContext(engine, fetcher, jobs.OutputCache(), settings))  # type: ignore[arg-type]
    try:
        outputs = jobs.predict_batch(items(9))
    finally:
        jobs._context = None
    assert len(outputs) == 9 and not any("error" in output for output in outputs)
    assert fetcher.most == 3
