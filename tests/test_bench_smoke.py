"""Smoke runs of every benchmark (``python -m bench --smoke``), so the suite does not rot.

Each runs the real command on a tiny scale and checks the JSON it writes: structure and sane,
positive numbers. Never a timing: a slow machine must not fail these. ``bulk`` needs a real Label
Studio (installed by scripts/setup.sh, as for tests/e2e); like the e2e tests it is skipped only
when VARCO_SKIP_E2E is set, and fails when Label Studio cannot be installed or started.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_bench(name: str, tmp_path: Path, tiny_model: Path | None = None) -> dict[str, Any]:
    out = tmp_path / "results.json"
    argv = [sys.executable, "-m", "bench", "--smoke", "--only", name, "--json", str(out)]
    argv += ["--markdown", str(tmp_path / "results.md")]
    if tiny_model is not None:
        argv += ["--tiny-model", str(tiny_model)]
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "VARCO_MODEL")}
    run = subprocess.run(
        argv, cwd=REPO, env=env | {"OMP_NUM_THREADS": "1"}, capture_output=True, text=True
    )
    assert run.returncode == 0, f"stdout:\n{run.stdout[-3000:]}\nstderr:\n{run.stderr[-3000:]}"
    results = json.loads(out.read_text())
    assert results["failed"] == {}
    assert results["scale"] == "smoke"
    assert results["machine"]["cores"] >= 1
    assert list(results["benchmarks"]) == [name]
    bench = results["benchmarks"][name]
    for table in bench["tables"]:
        assert table["rows"], table["title"]
        assert all(len(row) == len(table["columns"]) for row in table["rows"])
        assert table["title"] in run.stdout  # printed as a table too
    assert "|" in (tmp_path / "results.md").read_text()
    return bench["data"]


def positive(*values: float) -> bool:
    return all(isinstance(v, int | float) and v > 0 for v in values)


def test_overhead(tmp_path: Path) -> None:
    data = run_bench("overhead", tmp_path)
    assert len(data["single_task_requests"]) == 5
    for stats in [*data["single_task_requests"].values(), *data["requests_of_32_tasks"].values()]:
        assert positive(stats["p50_ms"], stats["p95_ms"], stats["p99_ms"], stats["tasks_per_s"])
        assert stats["p50_ms"] <= stats["p95_ms"] <= stats["p99_ms"]
    assert isinstance(data["target_met"], bool)
    assert isinstance(data["queue_overhead_p50_ms"], float)


def test_parse_convert(tmp_path: Path) -> None:
    data = run_bench("parse", tmp_path)
    assert "synthetic OCR, 2,000 chars" in data
    assert data["synthetic OCR, 2,000 chars"]["items"] == 2000
    for case in data.values():
        assert positive(case["items"], case["parse_outputs_per_s"], case["convert_outputs_per_s"])
    # Conversion made regions (the referring fixture's phrase matches no label: none there).
    for name in ("grounding_two_cats", "ocr_street_sign", "synthetic OCR, 2,000 chars"):
        assert data[name]["result_items"] > 0, name


def test_batching(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = run_bench("batching", tmp_path, tiny_model_dir)
    assert sorted(data["by_batch_size"], key=int) == ["1", "4", "8", "16"]
    for row in data["by_batch_size"].values():
        assert positive(row["images_per_s"], row["tokens_per_s"], row["speedup"])


def test_memory(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = run_bench("memory", tmp_path, tiny_model_dir)
    assert len(data["processes"]) == 4
    for process in data["processes"].values():
        assert positive(process["peak_rss_mib"], process["rss_mib"])
    # The design's rule, checked on the live process: the queue-mode backend has no torch.
    assert data["queue_backend_without_torch"] is True
    tiny_worker = data["processes"]["worker, tiny model (varco-worker)"]
    assert tiny_worker["torch_mapped"] is True


@pytest.mark.timeout(900)
def test_bulk_against_real_label_studio(tmp_path: Path, tiny_model_dir: Path) -> None:
    if os.environ.get("VARCO_SKIP_E2E", "").lower() in ("1", "true", "yes"):
        pytest.skip("VARCO_SKIP_E2E is set: no real Label Studio")
    data = run_bench("bulk", tmp_path, tiny_model_dir)
    assert len(data["runs"]) == 4
    for result in data["runs"].values():
        assert result["tasks"] == data["tasks"]
        assert positive(result["seconds"], result["tasks_per_s"], result["vs_synchronous_batch_1"])


@pytest.mark.timeout(900)
def test_pipeline_with_a_simulated_gpu(tmp_path: Path) -> None:
    if os.environ.get("VARCO_SKIP_E2E", "").lower() in ("1", "true", "yes"):
        pytest.skip("VARCO_SKIP_E2E is set: no real Label Studio")
    data = run_bench("pipeline", tmp_path)
    assert positive(data["efficiency"], data["vs_synchronous"], data["label_studio_images_per_s"])
    assert sorted(data["scaling"], key=int) == ["1", "2", "4"]
    assert data["scaling"]["1"] == 1.0
    assert positive(*data["scaling"].values(), *data["predict"]["scaling"].values())
    assert positive(data["slow_label_studio"]["efficiency"], data["predict"]["efficiency"])
    assert data["slow_label_studio"]["import_delay_s"] == 0.5
    assert len(data["runs"]) == 10
    without = data["without_lookahead"]  # the same runs, workers taking jobs one at a time
    assert positive(without["efficiency"], without["scaling_4"], without["vs_synchronous"])
    for result in data["runs"].values():  # each run's predictions all reached Label Studio
        assert result["tasks"] > 0 and positive(result["seconds"], result["tasks_per_s"])
    prelabel_runs = [r for name, r in data["runs"].items() if name.startswith("prelabel")]
    for result in prelabel_runs:  # the GPUs' own trace, set against the jobs' timestamps
        assert 0 < result["gpu_idle"]["busy_share"] <= 1
        assert result["gpu_idle"]["jobs"] > 0
    gpu = data["gpu"]
    assert positive(gpu["engine_images_per_s"], gpu["fixed_s"], gpu["per_image_s"])


@pytest.mark.timeout(900)
def test_interactive_behind_bulk_work(tmp_path: Path) -> None:
    if os.environ.get("VARCO_SKIP_E2E", "").lower() in ("1", "true", "yes"):
        pytest.skip("VARCO_SKIP_E2E is set: no real Label Studio")
    data = run_bench("interactive", tmp_path)
    assert data["idle"]["calls"] == 3
    assert data["busy"]["calls"] == len(data["samples"]) == 3
    assert positive(data["busy"]["p50_ms"], data["busy"]["p95_ms"], *data["ratio"].values())
    # By order, never by time: bulk jobs were still queued behind each interactive request,
    # and none of them (the queue's head excepted, which the worker may take between our look
    # and the enqueue) started before the interactive job.
    for sample in data["samples"]:
        assert sample["bulk_jobs_queued"] >= 2
        assert sample["bulk_jobs_run_first"] == 0
    assert positive(data["idle"]["p50_ms"], data["idle"]["p95_ms"])
    bulk = data["bulk"]
    assert bulk["queue"] == "varco-low" and bulk["tasks"] > 0
    # The bulk work was a real prelabel run (it checked every task landed in Label Studio);
    # whether a running job gave way depends on timing, so only its count's sanity is checked.
    assert "prelabel" in bulk["enqueued_by"] and bulk["continuations"] >= 0
    assert data["target"] == 1.5 and isinstance(data["target_met"], bool)
    gpu = data["gpu"]
    assert positive(gpu["batch_s"], gpu["fixed_s"], gpu["per_image_s"], gpu["batch_size"])
