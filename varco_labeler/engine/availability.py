"""Can this process have the model? Decided before loading, and said in one paragraph when not.

:func:`check_model` looks for the checkpoint local-first (a directory, then the hub cache, then the
hub itself with a short timeout, never a download) and weighs it against the device it would run
on; :func:`unavailable_from_load` turns what loading itself raised into the same
:class:`ModelUnavailable`; :func:`report` prints the paragraph ``serve``, ``varco-worker``,
``predict`` and ``prelabel`` end with. Nothing heavy is imported here at module level: torch and
huggingface_hub only inside the checks, so the light backend can import this module.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import re
import shutil
import sys
import textwrap
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from varco_labeler.settings import Settings

log = logging.getLogger(__name__)

# A command that could not have its model exits with this status (2 is a usage or setting error).
EXIT_MODEL_UNAVAILABLE = 3
SMALL_MODEL = "NCSOFT/VARCO-VISION-2.0-1.7B"
# Over this much in weights a model is refused without a GPU unless --allow-cpu: a 14B checkpoint
# (~30 GB) takes minutes per image on a CPU, while the 1.7B one (~4.3 GB) is slow but usable.
CPU_WEIGHTS_LIMIT = 8 * 1024**3
# Weights are not all a model needs: activations, the KV cache and the vision tower's buffers.
HEADROOM = 1.2
# The hub is asked once, briefly: offline, it may hang rather than fail.
HUB_TIMEOUT = 10.0
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_GB = 1024**3


class ModelUnavailable(Exception):
    """The model cannot be had here. ``reason``: what failed, one sentence without a full stop;
    ``cause``: the underlying error's one line, if any; ``hint``: a way forward specific to this
    failure (the general ones are always offered)."""

    def __init__(
        self, model: str, reason: str, *, cause: str | None = None, hint: str = ""
    ) -> None:
        super().__init__(f"cannot load the model {model}: {reason}")
        self.model, self.reason, self.cause, self.hint = model, reason, cause, hint

    def paragraph(self, command: str, rerun: str | None = None) -> str:
        """What ``command`` (``varco-labeler serve``) prints: what failed, then the ways forward;
        ``rerun``: how to run it again with the tiny model's VARCO_MODEL (default: ``command``).
        """
        command, rerun = _as_typed(command), _as_typed(rerun or command)
        cause = f" ({self.cause})" if self.cause else ""
        hint = f" {self.hint}" if self.hint else ""
        if command.endswith("varco-worker"):
            elsewhere = "or run varco-worker on a machine with a GPU, with the same REDIS_URL"
        else:
            elsewhere = (
                "or run the model on GPU machines elsewhere (REDIS_URL here, varco-worker there)"
            )
        text = (
            f"{command}: cannot load the model {self.model}: {self.reason}{cause}.{hint} "
            "Ways forward: set VARCO_MODEL (or --model) to a local checkpoint directory; or use "
            f"the smaller {SMALL_MODEL} (about 4.3 GB: a small GPU, or a CPU, slowly); "
            f"{elsewhere}; or try the whole loop with the tiny test model: "
            f"{_as_typed('varco-labeler')} tiny-model /tmp/tiny && VARCO_MODEL=/tmp/tiny {rerun}"
        )
        return textwrap.fill(text, width=100, break_on_hyphens=False, break_long_words=False)


@dataclass(frozen=True)
class ModelCheck:
    """Where the model was found and what it will run on."""

    model: str
    # Loadable with no network at all: a directory, or a complete copy in the hub cache.
    local: bool
    where: str
    weights_bytes: int | None = None
    device: str | None = None

    def summary(self) -> str:
        size = f", {gigabytes(self.weights_bytes)} of weights" if self.weights_bytes else ""
        on = f", on {self.device}" if self.device else ""
        return f"{self.model}: {self.where}{size}{on}"


def add_allow_cpu_argument(parser: argparse._ActionsContainer) -> None:
    parser.add_argument(
        "--allow-cpu",
        action="store_const",
        const=True,
        help=f"load a checkpoint of over {CPU_WEIGHTS_LIMIT // _GB} GB on a machine without a "
        "GPU anyway (minutes per image; env VARCO_ALLOW_CPU)",
    )


def check_model(settings: Settings, *, device: str | None = None) -> ModelCheck:
    """Whether ``settings.model`` can be loaded here, without loading it; ModelUnavailable if
    not. ``device``: the one asked for (default: the first GPU, else the CPU; asking for the CPU
    allows it)."""
    model = str(settings.model)
    if settings.openai_url:
        return ModelCheck(model, local=False, where=f"served by {settings.openai_url}")
    missing = [name for name in ("torch", "transformers") if importlib.util.find_spec(name) is None]
    if missing:
        raise ModelUnavailable(
            model,
            f"{' and '.join(missing)} not installed here",
            hint="Install the engine with pip install 'varco-labeler[worker]'.",
        )
    found = locate(model)
    target = _device(device)
    if found.weights_bytes:
        _check_fits(model, found.weights_bytes, settings, target, asked_for_cpu=device == "cpu")
    return ModelCheck(model, found.local, found.where, found.weights_bytes, target)


def locate(model: str) -> ModelCheck:
    """The checkpoint's whereabouts, local first: a directory, a complete copy in the hub cache,
    else the hub (asked once, briefly); ModelUnavailable when none has it."""
    path = Path(model).expanduser()
    if path.exists() or not _HUB_ID.match(model):
        weights = _check_directory(model, path)
        return ModelCheck(model, local=True, where=f"local directory {path}", weights_bytes=weights)
    cached = local_copy(model)
    if cached is not None:
        weights = _check_directory(model, cached)
        return ModelCheck(model, local=True, where=f"hub cache {cached}", weights_bytes=weights)
    return _ask_hub(model)


def local_copy(model: str) -> Path | None:
    """A complete copy of hub model ``model`` in the hub cache, without any network."""
    if not _HUB_ID.match(model) or Path(model).exists():
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    config = try_to_load_from_cache(model, "config.json")
    if not isinstance(config, str):
        return None
    snapshot = Path(config).parent
    try:
        _check_directory(model, snapshot)
    except ModelUnavailable:  # a partial download: the hub has to finish it
        return None
    return snapshot


def unavailable_from_load(model: str, error: BaseException) -> ModelUnavailable:
    """What loading raised (OSError from the hub client or a broken directory, out of memory),
    as the one paragraph's reason; the full trace stays on the error for LOG_LEVEL=DEBUG."""
    name = type(error).__name__
    if "OutOfMemory" in name or isinstance(error, MemoryError):
        reason = "the device ran out of memory while loading it"
        hint = "On a GPU, --load-in-4bit needs about a quarter of the memory."
        return ModelUnavailable(model, reason, cause=_one_line(error), hint=hint)
    return ModelUnavailable(model, "loading it failed", cause=_one_line(error))


def report(
    error: ModelUnavailable, command: str, log_level: str = "INFO", rerun: str | None = None
) -> int:
    """Print the paragraph (and, at LOG_LEVEL=DEBUG, the full trace first); the exit status."""
    if log_level.upper() == "DEBUG":
        traceback.print_exception(error, file=sys.stderr)
    print(error.paragraph(command, rerun), file=sys.stderr)
    return EXIT_MODEL_UNAVAILABLE


def system_memory() -> tuple[int | None, int | None]:
    """(available, total) bytes of RAM; None where the system does not say."""
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
    except OSError:
        lines = []
    info = {}
    for line in lines:
        key, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            info[key] = int(value.split()[0]) * 1024
    total = info.get("MemTotal")
    if total is None and hasattr(os, "sysconf"):
        try:
            total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            total = None
    return info.get("MemAvailable"), total


def gpus() -> list[tuple[str, int, int]]:
    """(name, free bytes, total bytes) of each CUDA GPU this process sees; [] without torch."""
    if importlib.util.find_spec("torch") is None:
        return []
    import torch

    if not torch.cuda.is_available():
        return []
    found = []
    for index in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(index)
        found.append((f"cuda:{index} {torch.cuda.get_device_name(index)}", free, total))
    return found


def gigabytes(size: int) -> str:
    return f"{size / _GB:.1f} GB"


# -- the checks --------------------------------------------------------------------------------


def _check_directory(model: str, path: Path) -> int:
    """A loadable checkpoint directory's weight bytes; ModelUnavailable naming what is wrong."""
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        hint = "" if "/" in model else " (a hub model is named OWNER/NAME)"
        raise ModelUnavailable(model, f"{path} {what}{hint}")
    config = path / "config.json"
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except FileNotFoundError:
        raise ModelUnavailable(
            model, f"{path} has no config.json: not a checkpoint directory, or an incomplete copy"
        ) from None
    except (OSError, ValueError, AttributeError) as error:
        raise ModelUnavailable(model, f"{config} is unreadable", cause=_one_line(error)) from None
    if not model_type:
        raise ModelUnavailable(model, f"{config} names no model_type: not a transformers model")
    files = {p.name: p for p in path.iterdir()}
    weights = _weight_files(model, path, files)
    if not weights:
        raise ModelUnavailable(
            model,
            f"{path} holds no weights (model.safetensors, its shards, or pytorch_model.bin): an "
            "incomplete copy",
        )
    return sum(weight.stat().st_size for weight in weights)


def _weight_files(model: str, path: Path, files: dict[str, Path]) -> list[Path]:
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if index_name not in files:
            continue
        try:
            shards = set(
                json.loads(files[index_name].read_text(encoding="utf-8"))["weight_map"].values()
            )
        except (OSError, ValueError, KeyError, AttributeError) as error:
            raise ModelUnavailable(
                model, f"{path / index_name} is unreadable", cause=_one_line(error)
            ) from None
        missing = sorted(shard for shard in shards if shard not in files)
        if missing:
            raise ModelUnavailable(
                model,
                f"{path} lacks {len(missing)} of its {len(shards)} weight shards "
                f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}): "
                "an incomplete copy",
            )
        return [files[shard] for shard in sorted(shards)]
    return [files[name] for name in ("model.safetensors", "pytorch_model.bin") if name in files]


def _ask_hub(model: str) -> ModelCheck:
    from huggingface_hub import HfApi, constants, is_offline_mode
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if is_offline_mode():
        raise ModelUnavailable(
            model,
            "HF_HUB_OFFLINE is set and the hub cache holds no complete copy",
            hint="Download it where the hub can be reached (hf download "
            f"{model} --local-dir DIR) and copy DIR here.",
        )
    try:
        info = HfApi().model_info(model, files_metadata=True, timeout=HUB_TIMEOUT)
    except GatedRepoError as error:
        raise ModelUnavailable(
            model,
            "the hub holds it behind an access request",
            cause=_one_line(error),
            hint="Accept its terms on the hub and set HF_TOKEN.",
        ) from None
    except RepositoryNotFoundError:
        raise ModelUnavailable(
            model, f"the model hub ({constants.ENDPOINT}) has no model of that name"
        ) from None
    except Exception as error:  # the hub client's network errors have no common base
        raise ModelUnavailable(
            model,
            f"there is no local copy and the model hub ({constants.ENDPOINT}) cannot be reached",
            cause=_one_line(error),
        ) from None
    siblings = {s.rfilename: s.size or 0 for s in info.siblings or () if "/" not in s.rfilename}
    weights = [name for name in siblings if name.endswith(".safetensors")] or [
        name for name in siblings if name.endswith(".bin") and name.startswith("pytorch_model")
    ]
    size = sum(siblings[name] for name in weights) or None
    return ModelCheck(model, local=False, where="on the hub, to download", weights_bytes=size)


def _device(requested: str | None) -> str:
    import torch

    if requested:
        return str(torch.device(requested))
    return "cuda:0" if torch.cuda.is_available() else "cpu"


def _check_fits(
    model: str, weights: int, settings: Settings, device: str, *, asked_for_cpu: bool
) -> None:
    needed = int(_loaded_bytes(weights, settings) * HEADROOM)
    if device.startswith("cuda"):
        import torch

        free, total = torch.cuda.mem_get_info(torch.device(device))
        if needed > free:
            raise ModelUnavailable(
                model,
                f"it needs about {gigabytes(needed)} of GPU memory and {device} has "
                f"{gigabytes(free)} free of {gigabytes(total)}",
                hint="--load-in-4bit needs about a quarter of that (bitsandbytes).",
            )
        return
    if weights > CPU_WEIGHTS_LIMIT and not (settings.allow_cpu or asked_for_cpu):
        raise ModelUnavailable(
            model,
            f"there is no GPU here, and its {gigabytes(weights)} of weights would take minutes "
            "per image on a CPU",
            hint="--allow-cpu (or VARCO_ALLOW_CPU=1) loads it anyway.",
        )
    available, total = system_memory()
    if available is not None and needed > available:
        raise ModelUnavailable(
            model,
            f"it needs about {gigabytes(needed)} of memory and this machine has "
            f"{gigabytes(available)} available of {gigabytes(total or available)}",
        )


def _loaded_bytes(weights: int, settings: Settings) -> int:
    """Memory for the weights as loaded (checkpoints are published in 16 bits)."""
    if settings.load_in_4bit:
        return weights // 4
    if settings.load_in_8bit:
        return weights // 2
    if settings.load_dtype == "float32":
        return weights * 2
    return weights


def _as_typed(command: str) -> str:
    """``command`` as this user can type it: ``./scripts/run.sh`` when that started us (it says
    so in VARCO_INVOKED_AS), else our console script by its path when it is not on PATH."""
    program, _, rest = command.partition(" ")
    if program == "varco-labeler" and os.environ.get("VARCO_INVOKED_AS"):
        program = os.environ["VARCO_INVOKED_AS"]
    elif program in ("varco-labeler", "varco-worker") and shutil.which(program) is None:
        beside = Path(sys.argv[0]).parent / program
        if beside.is_file():
            program = str(beside)
    return f"{program} {rest}".rstrip()


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
