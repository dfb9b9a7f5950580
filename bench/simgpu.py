"""A simulated GPU: an engine that sleeps as long as a 14B VARCO batch takes, and answers like one.

    python -m bench.simgpu worker --redis-url URL [--name NAME] [--fixed S] [--per-image S]
    python -m bench.simgpu serve --port PORT [--fixed S] [--per-image S]   # embedded backend

A batch of ``n`` images takes ``fixed + per_image * n`` seconds of sleep, so the CPU stays free for
everything the project itself does around the model (downloads, decoding, conversion, the queue,
pushes to Label Studio): what a benchmark then measures is whether that work keeps the "GPU" busy.

Why the defaults (``fixed`` 0.9 s, ``per_image`` 0.1 s) mimic VARCO-VISION-14B on one GPU: a
decode step of a 14B model in bf16 reads its ~30 GB of weights once whatever the batch, ~9 ms on an
H100 (DESIGN.md section 9), and a grounding answer is ~100 tokens: ~0.9 s per batch that batching
does not multiply. What grows with the batch is the prefill of each image's ~729 vision tokens and
its share of the KV cache: ~0.1 s per image. So: 1.0 s for one image ("on the order of a second
unbatched"), 1.7 s for 8 (0.21 s per image, "a few tenths batched"). Estimates, not measurements:
set them with ``--fixed`` and ``--per-image`` once a GPU has measured the real ones
(``bench/gpu.sh``).

Answers are the published grounding and OCR outputs (tests/fixtures/varco), with boxes shifted
per request so no two images get the same regions. Not part of the product package on purpose.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from varco_labeler.engine.base import Engine, Request, Result
from varco_labeler.labelstudio.templates import label_config
from varco_labeler.varco import Task, parse

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "varco"
# Labels for the grounding answer's phrases (two cats, a pink blanket, two remote controls).
LABEL_CONFIG = label_config("grounding", ["Cat", "Remote", "Blanket"])
PROMPT_TOKENS = 729 + 20  # one 384 px tile of SigLIP tokens and the chat template around the prompt
MODEL_VERSION = "simulated-gpu-14b"
# A file each batch's start and end (Unix time) and size are appended to: when the "GPU" was busy.
TRACE_ENV = "VARCO_BENCH_GPU_TRACE"
_NUMBER = re.compile(r"\d\.\d+|[01](?![\d.])")


@dataclass(frozen=True)
class GpuTimes:
    """Seconds a batch takes on the simulated GPU: ``fixed + per_image * batch``."""

    fixed: float = 0.9
    per_image: float = 0.1

    def batch(self, size: int) -> float:
        return self.fixed + self.per_image * size

    def images_per_second(self, batch_size: int) -> float:
        """The engine's own throughput at this batch size: the ceiling for everything else."""
        return batch_size / self.batch(batch_size)


class SimulatedGpuEngine(Engine):
    """Sleeps ``times.batch(n)`` per batch of up to ``max_batch_size`` requests, one batch at a
    time (one GPU), and answers each request with a realistic VARCO output."""

    def __init__(
        self,
        times: GpuTimes = GpuTimes(),
        max_batch_size: int = 8,
        model_version: str = MODEL_VERSION,
    ) -> None:
        self.times = times
        self.max_batch_size = max_batch_size
        self.model_version = model_version
        self.answers = {
            Task.GROUNDING: (FIXTURES / "grounding_two_cats.txt").read_text().strip(),
            Task.OCR: (FIXTURES / "ocr_street_sign.txt").read_text().strip(),
        }
        self._gpu = threading.Lock()  # one device: concurrent callers queue for it
        self._serial = itertools.count()
        self.busy_seconds = 0.0  # time spent "on the GPU", for checking what a run measured
        self.trace = os.environ.get(TRACE_ENV)

    def generate(self, requests: Sequence[Request]) -> list[Result]:
        results: list[Result] = []
        for start in range(0, len(requests), self.max_batch_size):
            batch = requests[start : start + self.max_batch_size]
            with self._gpu:
                started, wall = time.perf_counter(), time.time()
                time.sleep(self.times.batch(len(batch)))
                seconds = time.perf_counter() - started
                self.busy_seconds += seconds
                if self.trace:
                    with open(self.trace, "a") as trace:
                        trace.write(f"{wall:.6f} {wall + seconds:.6f} {len(batch)}\n")
            results += [self._answer(request, seconds) for request in batch]
        return results

    def _answer(self, request: Request, seconds: float) -> Result:
        template = self.answers.get(request.task, self.answers[Task.GROUNDING])
        raw = _shifted(template, (next(self._serial) % 97) / 1000)
        parsed = parse(raw)
        scores: list[float | None] = [0.9] * len(parsed.grounded)
        completion_tokens = len(raw) // 3  # about what the Qwen tokenizer makes of such text
        return Result(raw, parsed, scores, PROMPT_TOKENS, completion_tokens, seconds)


def _shifted(raw: str, offset: float) -> str:
    """The output with every box coordinate moved by ``offset`` (kept inside [0, 1])."""

    def move(match: re.Match[str]) -> str:
        return f"{min(1.0, float(match.group()) + offset):.3g}"

    parts = re.split(r"(<bbox>.*?</bbox>)", raw, flags=re.S)
    return "".join(_NUMBER.sub(move, part) if part.startswith("<bbox>") else part for part in parts)


def _add_times(parser: argparse.ArgumentParser) -> None:
    defaults = GpuTimes()
    parser.add_argument("--fixed", type=float, default=defaults.fixed, help="s per batch")
    parser.add_argument(
        "--per-image", type=float, default=defaults.per_image, help="s per image in a batch"
    )


def main(argv: list[str] | None = None) -> int:
    from bench import zero

    parser = argparse.ArgumentParser(prog="python -m bench.simgpu", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    worker = commands.add_parser("worker", help="varco-worker with the simulated GPU")
    worker.add_argument("--redis-url", required=True)
    worker.add_argument("--queue", default=None, help="queue name (env VARCO_QUEUE)")
    worker.add_argument("--name", default=None)
    serve = commands.add_parser("serve", help="the embedded backend with the simulated GPU")
    serve.add_argument("--port", type=int, required=True)
    for command in (worker, serve):
        _add_times(command)
    args = parser.parse_args(argv)
    times = GpuTimes(args.fixed, args.per_image)

    def engine(batch_size: int) -> Engine:
        return SimulatedGpuEngine(times, max_batch_size=batch_size)

    if args.command == "worker":
        return zero.run_worker(args, engine)
    return zero.run_server(args, engine)


if __name__ == "__main__":
    sys.exit(main())
