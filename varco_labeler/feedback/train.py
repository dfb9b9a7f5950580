"""Fine-tune a VARCO-VISION checkpoint on an exported feedback set (``trl-sft`` or ``trl-dpo``).

TRL's SFTTrainer / DPOTrainer with a LoRA adapter on the language model by default. The result
is a directory the engine loads like any checkpoint, and a new model version, so that the report
can compare the trained model's pre-labels with the old one's:

    out_dir/adapter/             the LoRA adapter (PEFT format), when trained with LoRA
    out_dir/model/               the merged full model and its processor (left padding), with
                                 varco_profile.json naming the base checkpoint's profile, so the
                                 engine serves it like the base whatever the directory is called
    out_dir/train_summary.json   what was trained on, how, the new model version, and the base
                                 and trained models scored on the validation split (``evaluation``)

Runs as one process, or unchanged under ``accelerate launch`` / ``torchrun`` with several (data
parallel; FSDP or DeepSpeed through an accelerate config): every process trains, the main one
saves, merges and evaluates. ``load_in_4bit`` trains a LoRA adapter on a 4-bit base (QLoRA, one
GPU, bitsandbytes); the merged model is then made from the base reloaded in full precision.
Needs the ``train`` extra (trl, peft).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from varco_labeler.engine.profiles import TRAIN_SUMMARY_FILE, profile_for, write_profile

log = logging.getLogger(__name__)

METHODS = ("sft", "dpo")
_FORMAT_OF = {"sft": "trl-sft", "dpo": "trl-dpo"}
_COLUMNS = {
    "sft": {"images", "prompt", "completion"},
    "dpo": {"images", "prompt", "chosen", "rejected"},
}
# The language model's attention and MLP projections (Qwen2 and Qwen3 name them alike). A regex,
# because a plain list of names would also match the SigLIP tower's q_proj/k_proj/v_proj.
DEFAULT_TARGET_MODULES = (
    r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
)
# Per method, with LoRA / full fine-tuning: LoRA needs a ~10x larger step; DPO moves a trained
# policy and wants far smaller steps than SFT (TRL's own DPO default is 1e-6).
_LEARNING_RATES = {
    ("sft", True): 2e-4,
    ("sft", False): 2e-5,
    ("dpo", True): 5e-6,
    ("dpo", False): 1e-6,
}
SUMMARY_FILE = TRAIN_SUMMARY_FILE


class TrainError(ValueError):
    """The dataset or the options cannot be trained on; the message says why."""


@dataclass(frozen=True)
class TrainSummary:
    model_version: str
    method: str
    base_model: str
    dataset_dir: str
    lora: bool
    train_examples: int
    validation_examples: int
    steps: int
    epochs: float
    final_loss: float | None  # the last logged training loss
    train_loss: float | None  # mean over the run, as the trainer reports it
    eval_loss: float | None  # on the validation split, when the export has one
    seconds: float
    model_dir: str
    adapter_dir: str | None
    created_at: str
    hyperparameters: dict[str, Any]
    profile: str  # the base checkpoint's profile, written into model_dir (varco_profile.json)
    processes: int  # training processes (data parallel), 1 without a launcher
    # Base and trained model on the validation split: {"split", "examples", "base", "trained"}
    # (each the report's figures, see feedback.evaluate), or None without a validation split.
    evaluation: dict[str, Any] | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def train(
    dataset_dir: Path,
    base_model: str | Path,
    out_dir: Path,
    *,
    method: str | None = None,
    lora: bool = True,
    lora_r: int = 16,
    lora_alpha: int = 32,
    lora_dropout: float = 0.05,
    target_modules: str | list[str] | None = None,
    epochs: float = 1.0,
    max_steps: int = -1,
    learning_rate: float | None = None,
    batch_size: int = 1,
    gradient_accumulation: int = 8,
    beta: float = 0.1,
    max_length: int | None = None,
    bf16: bool | None = None,
    gradient_checkpointing: bool | None = None,
    logging_steps: int = 10,
    save_steps: int | None = None,
    seed: int = 0,
    model_version: str | None = None,
    load_in_4bit: bool = False,
    attn_implementation: str | None = None,
    evaluate: bool = True,
    eval_batch_size: int = 8,
) -> TrainSummary:
    """Train ``base_model`` on the export in ``dataset_dir`` and write ``out_dir`` (see module).

    ``method``: ``sft`` or ``dpo``; by default the one the export was made for. ``target_modules``:
    a regex (full match, PEFT's rule) or a list of module names (matched anywhere, the vision tower
    included); the default is the language model's projections. Full fine-tuning (``lora=False``)
    keeps the vision tower frozen too. ``learning_rate`` defaults per method and LoRA (see
    ``_LEARNING_RATES``). ``max_length`` None never truncates: a cut sequence could lose image
    tokens. ``bf16`` and ``gradient_checkpointing`` default to on with CUDA. ``save_steps`` keeps
    checkpoints under ``out_dir/checkpoints``. ``model_version`` defaults to
    ``{base name}+{method}-{hash of the base, the data and the recipe}``. ``load_in_4bit``:
    QLoRA (needs LoRA, CUDA and bitsandbytes). ``evaluate``: score the base and the trained
    model on the validation split (greedy generation, ``eval_batch_size`` images at a time).
    """
    import torch

    started = time.perf_counter()
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    files = _train_files(dataset_dir)
    method = method or _method_of(dataset_dir, files)
    if method not in METHODS:
        raise TrainError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if lora and lora_r < 1:
        raise TrainError("lora_r must be at least 1")
    if load_in_4bit:
        _check_qlora(lora)
    try:
        # Before hours of training: the trained model is served with the base's profile.
        profile = profile_for(base_model)
    except ValueError as error:
        raise TrainError(str(error)) from None
    cuda = torch.cuda.is_available()
    bf16 = (cuda and torch.cuda.is_bf16_supported()) if bf16 is None else bf16
    gradient_checkpointing = cuda if gradient_checkpointing is None else gradient_checkpointing
    if learning_rate is None:
        learning_rate = _LEARNING_RATES[(method, lora)]
    hyperparameters: dict[str, Any] = {
        "lora_r": lora_r if lora else None,
        "lora_alpha": lora_alpha if lora else None,
        "lora_dropout": lora_dropout if lora else None,
        "target_modules": (target_modules or DEFAULT_TARGET_MODULES) if lora else None,
        "epochs": epochs,
        "max_steps": max_steps,
        "learning_rate": learning_rate,
        "batch_size": batch_size,
        "gradient_accumulation": gradient_accumulation,
        "beta": beta if method == "dpo" else None,
        "max_length": max_length,
        "bf16": bf16,
        "seed": seed,
        "load_in_4bit": load_in_4bit,
    }
    version = model_version or _default_version(base_model, method, lora, files, hyperparameters)
    # The datasets cache only has to outlive this run; keep it out of the output.
    with tempfile.TemporaryDirectory(prefix="varco-train-") as cache:
        splits = _load_splits(dataset_dir, files, method, cache)
        out_dir.mkdir(parents=True, exist_ok=True)
        train_set, eval_set = splits["train"], splits.get("validation")
        steps_per_epoch = math.ceil(len(train_set) / (batch_size * gradient_accumulation))
        total_steps = max_steps if max_steps > 0 else math.ceil(epochs * steps_per_epoch)
        trainer = _trainer(
            method=method,
            base_model=base_model,
            train_set=train_set,
            eval_set=eval_set,
            peft_config=_lora_config(lora_r, lora_alpha, lora_dropout, target_modules)
            if lora
            else None,
            args={
                "output_dir": str(out_dir / "checkpoints"),
                "num_train_epochs": epochs,
                "max_steps": max_steps,
                "learning_rate": learning_rate,
                "per_device_train_batch_size": batch_size,
                "per_device_eval_batch_size": batch_size,
                "gradient_accumulation_steps": gradient_accumulation,
                "bf16": bf16,
                "gradient_checkpointing": gradient_checkpointing,
                "max_length": max_length,
                "logging_steps": max(1, min(logging_steps, total_steps)),
                "save_strategy": "steps" if save_steps else "no",
                **({"save_steps": save_steps} if save_steps else {}),
                "use_cpu": not cuda,  # bf16 without CUDA is refused unless said explicitly
                "seed": seed,
                "report_to": [],
                **({"beta": beta} if method == "dpo" else {}),
            },
            dtype=torch.bfloat16 if bf16 else torch.float32,
            load_in_4bit=load_in_4bit,
            attn_implementation=attn_implementation,
        )
        result = trainer.train()
        # Collective under several processes: every process takes part.
        eval_loss = trainer.evaluate()["eval_loss"] if eval_set is not None else None
        model_dir, adapter_dir = _save(trainer, base_model, out_dir, lora, bf16)
        main = trainer.accelerator.is_main_process
        if main:
            write_profile(model_dir, profile)
        trainer.accelerator.wait_for_everyone()
    processes = trainer.accelerator.num_processes
    evaluation = None
    if main and evaluate and eval_set is not None:
        evaluation = _evaluate_both(base_model, model_dir, version, dataset_dir, eval_batch_size)
    if not main:  # the main process writes the summary; the others only trained
        return _summary_of_rank(version, method, base_model, dataset_dir, lora, processes)
    checkpoints = out_dir / "checkpoints"
    if checkpoints.is_dir() and not any(checkpoints.iterdir()):
        checkpoints.rmdir()  # the trainer makes it even when it saves nothing
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    summary = TrainSummary(
        model_version=version,
        method=method,
        base_model=str(base_model),
        dataset_dir=str(dataset_dir),
        lora=lora,
        train_examples=len(train_set),
        validation_examples=len(eval_set) if eval_set is not None else 0,
        steps=result.global_step,
        epochs=float(trainer.state.epoch or 0.0),
        final_loss=float(losses[-1]) if losses else None,
        train_loss=float(result.training_loss),
        eval_loss=float(eval_loss) if eval_loss is not None else None,
        seconds=round(time.perf_counter() - started, 2),
        model_dir=str(model_dir),
        adapter_dir=str(adapter_dir) if adapter_dir else None,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        hyperparameters=hyperparameters,
        profile=profile.name,
        processes=processes,
        evaluation=evaluation,
    )
    text = json.dumps(summary.to_json(), indent=1, ensure_ascii=False)
    (out_dir / SUMMARY_FILE).write_text(text, encoding="utf-8")
    # A copy travels with the model directory, so a copied model still says what it is.
    (model_dir / SUMMARY_FILE).write_text(text, encoding="utf-8")
    log.info("trained %s in %.0f s: %d steps", version, summary.seconds, summary.steps)
    return summary


# -- the dataset -----------------------------------------------------------------------------
def _train_files(dataset_dir: Path) -> dict[str, list[Path]]:
    """The export's Parquet files by split; a clear error for anything that is not one."""
    if not dataset_dir.is_dir():
        raise TrainError(f"{dataset_dir}: no such directory")
    files = {
        split: sorted((dataset_dir / "data").glob(f"{split}-*.parquet"))
        for split in ("train", "validation")
    }
    if not files["train"]:
        fmt = _export_format(dataset_dir)
        what = f"a {fmt} export" if fmt else "not an export of varco-labeler"
        raise TrainError(
            f"{dataset_dir}: {what}, with no data/train-*.parquet; train on a trl-sft or trl-dpo "
            "export (varco-labeler export SOURCE --format trl-sft|trl-dpo --out DIR)"
        )
    return {split: paths for split, paths in files.items() if paths}


def _export_format(dataset_dir: Path) -> str | None:
    try:
        summary = json.loads((dataset_dir / "export_summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return summary.get("format") if isinstance(summary, dict) else None


def _method_of(dataset_dir: Path, files: dict[str, list[Path]]) -> str:
    """The method an export was made for: from its summary, else from its columns."""
    fmt = _export_format(dataset_dir)
    for method, fmt_name in _FORMAT_OF.items():
        if fmt == fmt_name:
            return method
    import pyarrow.parquet as pq

    columns = set(pq.read_schema(files["train"][0]).names)
    for method, wanted in _COLUMNS.items():
        if columns == wanted:
            return method
    raise TrainError(
        f"{dataset_dir}: columns {sorted(columns)} are neither trl-sft "
        f"{sorted(_COLUMNS['sft'])} nor trl-dpo {sorted(_COLUMNS['dpo'])}"
    )


def _load_splits(
    dataset_dir: Path, files: dict[str, list[Path]], method: str, cache: str
) -> dict[str, Any]:
    from datasets import load_dataset

    splits = load_dataset(
        "parquet",
        data_files={split: [str(p) for p in paths] for split, paths in files.items()},
        cache_dir=cache,
    )
    columns = set(splits["train"].column_names)
    if columns != _COLUMNS[method]:
        other = next(m for m in METHODS if m != method)
        hint = ""
        if columns == _COLUMNS[other]:
            hint = f"; it is a {_FORMAT_OF[other]} export: use method {other}"
        raise TrainError(
            f"{dataset_dir}: {method} needs a {_FORMAT_OF[method]} export with columns "
            f"{sorted(_COLUMNS[method])}, found {sorted(columns)}{hint}"
        )
    if len(splits["train"]) == 0:
        raise TrainError(f"{dataset_dir}: the train split is empty")
    return dict(splits)


def _default_version(
    base_model: str | Path,
    method: str,
    lora: bool,
    files: dict[str, list[Path]],
    hyperparameters: dict[str, Any],
) -> str:
    """``{base name}+{method}-{8 hex}``: the same base, data and recipe give the same version.

    A local base is identified by its files' names, sizes and times (hashing weights would take
    minutes), so a base rebuilt at the same path gives a new version.
    """
    digest = hashlib.sha256()
    digest.update(json.dumps([str(base_model), method, lora, hyperparameters]).encode())
    base_dir = Path(base_model)
    if base_dir.is_dir():
        for path in sorted(p for p in base_dir.rglob("*") if p.is_file()):
            stat = path.stat()
            digest.update(
                f"{path.relative_to(base_dir)}:{stat.st_size}:{stat.st_mtime_ns}".encode()
            )
    for path in (p for paths in files.values() for p in paths):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    base_name = Path(str(base_model).rstrip("/")).name
    return f"{base_name}+{method}-{digest.hexdigest()[:8]}"


# -- the trainer -----------------------------------------------------------------------------
def _lora_config(r: int, alpha: int, dropout: float, target_modules: str | list[str] | None) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules or DEFAULT_TARGET_MODULES,
        task_type="CAUSAL_LM",
    )


def _trainer(
    *,
    method: str,
    base_model: str | Path,
    train_set: Any,
    eval_set: Any,
    peft_config: Any,
    args: dict[str, Any],
    dtype: Any,
    load_in_4bit: bool = False,
    attn_implementation: str | None = None,
) -> Any:
    import trl
    from transformers import AutoModelForImageTextToText, AutoProcessor

    options: dict[str, Any] = {"dtype": dtype}
    if attn_implementation:
        options["attn_implementation"] = attn_implementation
    if load_in_4bit:
        options["quantization_config"] = _qlora_config(dtype)
    model = AutoModelForImageTextToText.from_pretrained(base_model, **options)
    if load_in_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=bool(args.get("gradient_checkpointing"))
        )
    if peft_config is None:
        # Full fine-tuning updates the language model and the projector; the vision tower stays.
        for name, parameter in model.named_parameters():
            if "vision_tower" in name:
                parameter.requires_grad = False
    config_class, trainer_class = (
        (trl.SFTConfig, trl.SFTTrainer) if method == "sft" else (trl.DPOConfig, trl.DPOTrainer)
    )
    return trainer_class(
        model=model,
        args=config_class(**args),
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=AutoProcessor.from_pretrained(base_model),
        peft_config=peft_config,
    )


def _save(
    trainer: Any, base_model: str | Path, out_dir: Path, lora: bool, bf16: bool
) -> tuple[Path, Path | None]:
    """Save through the trainer (it gathers FSDP and DeepSpeed shards; every process calls it),
    then, on the main process only, merge a LoRA adapter into the base reloaded in full
    precision (a 4-bit base cannot be merged into) and save it with its processor."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model_dir, adapter_dir = out_dir / "model", None
    if lora:
        adapter_dir = out_dir / "adapter"
        trainer.save_model(str(adapter_dir))
    else:
        trainer.save_model(str(model_dir))
    if not trainer.accelerator.is_main_process:
        return model_dir, adapter_dir
    if lora:
        from peft import PeftModel

        dtype = torch.bfloat16 if bf16 else torch.float32
        base = AutoModelForImageTextToText.from_pretrained(base_model, dtype=dtype)
        merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
        merged.save_pretrained(model_dir)
    # A fresh processor, as the base model has it, with the left padding batched generation needs
    # (the published 14B-HF tokenizer does not set it).
    processor = AutoProcessor.from_pretrained(base_model)
    processor.tokenizer.padding_side = "left"
    processor.save_pretrained(model_dir)
    return model_dir, adapter_dir


def _check_qlora(lora: bool) -> None:
    import importlib.util

    import torch

    if not lora:
        raise TrainError("4-bit loading trains a LoRA adapter (QLoRA): drop --no-lora")
    if not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None:
        raise TrainError("4-bit loading (QLoRA) needs a CUDA GPU and bitsandbytes")


def _qlora_config(dtype: Any) -> Any:
    """QLoRA's recipe: NF4 weights, double quantisation, compute in the training dtype."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
        # The vision tower and projector stay in full precision: small, and not trained.
        llm_int8_skip_modules=["vision_tower", "multi_modal_projector", "lm_head"],
    )


# -- evaluation on the held-out split --------------------------------------------------------
def _evaluate_both(
    base_model: str | Path, model_dir: Path, version: str, dataset_dir: Path, batch_size: int
) -> dict[str, Any]:
    """The base and the trained model on the validation split: images neither trained on."""
    import torch

    from varco_labeler.engine.transformers_engine import TransformersEngine
    from varco_labeler.feedback.evaluate import evaluate_engine, load_split

    items = load_split(dataset_dir, "validation")
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    scores = {}
    for name, model, model_version in (
        ("base", base_model, None),
        ("trained", model_dir, version),
    ):
        engine = TransformersEngine(
            model, device=device, max_batch_size=batch_size, model_version=model_version
        )
        scores[name] = evaluate_engine(engine, items, batch_size=batch_size)
        scores[name].pop("worst_tasks")
        del engine  # one model in memory at a time
    log.info(
        "validation F1 (IoU 0.5): base %.3f, trained %.3f on %d example(s)",
        scores["base"]["micro"]["f1"],
        scores["trained"]["micro"]["f1"],
        len(items),
    )
    return {"split": "validation", "examples": len(items), **scores}


def _summary_of_rank(
    version: str,
    method: str,
    base_model: str | Path,
    dataset_dir: Path,
    lora: bool,
    processes: int,
) -> TrainSummary:
    """What a process other than the main one returns: it wrote nothing."""
    return TrainSummary(
        model_version=version,
        method=method,
        base_model=str(base_model),
        dataset_dir=str(dataset_dir),
        lora=lora,
        train_examples=0,
        validation_examples=0,
        steps=0,
        epochs=0.0,
        final_loss=None,
        train_loss=None,
        eval_loss=None,
        seconds=0.0,
        model_dir="",
        adapter_dir=None,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        hyperparameters={},
        profile="",
        processes=processes,
        evaluation=None,
    )
