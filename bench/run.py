"""Run the benchmarks and print a table per benchmark; write everything to JSON.

    .venv/bin/python -m bench                      # the full suite (tens of minutes on 2 cores)
    .venv/bin/python -m bench --quick              # smaller runs (a few minutes)
    .venv/bin/python -m bench --only overhead,parse --json out.json --markdown out.md

Benchmarks: overhead, batching, bulk, parse, memory (DESIGN.md section 9), pipeline (a
simulated GPU: is the GPU kept busy? bench/pipeline.py), and interactive (a box drawn in the
editor while the worker is busy with bulk work, bench/interactive.py). Each measures its
alternatives side by side in one run, so their ratios come from the same conditions. ``bulk``
starts a real Label Studio 1.23.2 from .ls-venv (scripts/install_label_studio.sh, run here if
needed), and so do ``pipeline`` and ``interactive``. Nothing asserts a timing: the numbers
are for reading.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from bench.common import REPO, Context, Report, Scale, machine

DEFAULT_JSON = REPO / "bench" / "results" / "latest.json"


def _benchmarks() -> dict[str, Callable[[Context], Report]]:
    # Imported here: `--only parse` should not pay for torch or Label Studio's client.
    def overhead(ctx: Context) -> Report:
        from bench import overhead

        return overhead.run(ctx)

    def batching(ctx: Context) -> Report:
        from bench import batching

        return batching.run(ctx)

    def bulk(ctx: Context) -> Report:
        from bench import bulk

        return bulk.run(ctx)

    def parse(ctx: Context) -> Report:
        from bench import parse_convert

        return parse_convert.run(ctx)

    def memory(ctx: Context) -> Report:
        from bench import memory

        return memory.run(ctx)

    def pipeline(ctx: Context) -> Report:
        from bench import pipeline

        return pipeline.run(ctx)

    def interactive(ctx: Context) -> Report:
        from bench import interactive

        return interactive.run(ctx)

    return {
        "overhead": overhead,
        "batching": batching,
        "bulk": bulk,
        "parse": parse,
        "memory": memory,
        "pipeline": pipeline,
        "interactive": interactive,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller runs (minutes)")
    size.add_argument("--smoke", action="store_true", help="tiny runs, for tests (seconds)")
    parser.add_argument(
        "--only", default="", help="comma-separated benchmarks: " + ", ".join(_benchmarks())
    )
    parser.add_argument(
        "--json", type=Path, default=DEFAULT_JSON, help="write results here (default: %(default)s)"
    )
    parser.add_argument("--markdown", type=Path, help="also write the tables as markdown here")
    parser.add_argument("--tiny-model", type=Path, help="reuse this tiny model (else built)")
    parser.add_argument(
        "--model",
        type=Path,
        help="batching: measure this model instead of the tiny one, on the GPU when there is "
        "one (e.g. `varco-labeler tiny-model DIR --size 14b --random`; see bench/gpu.sh)",
    )
    parser.add_argument("--workdir", type=Path, help="keep files here (default: a temp dir)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    available = _benchmarks()
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(available)
    unknown = [n for n in names if n not in available]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {list(available)}", file=sys.stderr)
        return 2
    scale: Scale = "smoke" if args.smoke else "quick" if args.quick else "full"
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="varco-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = Context(scale, workdir, args.tiny_model, args.model)
    command = "python -m bench " + shlex.join(argv if argv is not None else sys.argv[1:])
    results = {
        "command": command.strip(),
        "scale": scale,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        # Other work on the machine skews every number: keep how busy it was with them.
        "load_average_at_start": _load(),
        "benchmarks": {},
    }
    reports: list[Report] = []
    failed: dict[str, str] = {}
    try:
        for name in names:
            ctx.log(f"[bench] {name} ({scale})")
            started = time.perf_counter()
            try:
                report = available[name](ctx)
            except Exception as error:  # one broken benchmark must not hide the others
                failed[name] = f"{type(error).__name__}: {error}"
                ctx.log(f"[bench] {name} FAILED: {failed[name]}")
                continue
            report.seconds = time.perf_counter() - started
            reports.append(report)
            print(_render(report), flush=True)
            results["benchmarks"][name] = {
                "seconds": round(report.seconds, 1),
                "data": report.data,
                "notes": report.notes,
                "tables": [
                    {"title": t.title, "columns": t.columns, "rows": t.rows} for t in report.tables
                ],
            }
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    results["failed"] = failed
    results["load_average_at_end"] = _load()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1, default=str) + "\n")
    ctx.log(f"[bench] results written to {args.json}")
    if args.markdown:
        args.markdown.write_text(_markdown(reports, results))
    return 1 if failed else 0


def _load() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def _render(report: Report) -> str:
    parts = [f"\n== {report.name} ({report.seconds:.0f} s)"]
    parts += [table.render() for table in report.tables]
    parts += [f"  note: {note}" for note in report.notes]
    return "\n".join(parts)


def _markdown(reports: list[Report], results: dict[str, object]) -> str:
    box = results["machine"]
    assert isinstance(box, dict)
    gpu = box.get("gpu") or "no GPU"
    parts = [
        f"Machine: {box['cpu']}, {box['cores']} cores, {box['memory_gb']} GB RAM, {gpu}; "
        f"Python {box['python']}. Command: `.venv/bin/{results['command']}`.",
        "",
    ]
    for report in reports:
        for table in report.tables:
            parts += [table.markdown(), ""]
    return "\n".join(parts)
