"""The ``varco-labeler`` command."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from varco_labeler import doctor, releases, runs
from varco_labeler.engine.load import add_loading_arguments, loading_flags
from varco_labeler.engine.profiles import DEFAULT_MODEL
from varco_labeler.feedback import loop_commands
from varco_labeler.feedback.store import StoreUnavailable
from varco_labeler.labelstudio import LabelConfigError, ordering, read_label_config
from varco_labeler.labelstudio.import_file import convert_lines

if TYPE_CHECKING:
    from varco_labeler.settings import Settings


def _convert(args: argparse.Namespace) -> int:
    from varco_labeler.policy import Policy, PolicyError, parse_extra_params
    from varco_labeler.settings import Settings, SettingsError

    try:
        config = read_label_config(Path(args.label_config).read_text(encoding="utf-8"))
        extra = parse_extra_params(args.extra_params)
        if args.fallback_label:
            extra["fallback_label"] = args.fallback_label
        policy = Policy.resolve(Settings.from_env(), config, extra, version=args.model_version)
    except (OSError, LabelConfigError, PolicyError, SettingsError) as error:
        print(f"error: {args.label_config}: {error}", file=sys.stderr)
        return 2
    tasks, bad, regions = [], 0, 0
    with open(
        args.input or sys.stdin.fileno(), encoding="utf-8", closefd=bool(args.input)
    ) as source:
        for task, report in convert_lines(source, policy):
            where = f"line {report.line}" + (f" ({report.image})" if report.image else "")
            if task is None:
                bad += 1
                print(f"{where}: skipped: {report.error}", file=sys.stderr)
                continue
            tasks.append(task)
            regions += report.regions
            if args.verbose:
                for reason in report.dropped:
                    print(f"{where}: dropped {reason}", file=sys.stderr)
            elif report.dropped:
                print(
                    f"{where}: dropped {len(report.dropped)} item(s); -v lists them",
                    file=sys.stderr,
                )
    json.dump(tasks, sys.stdout, ensure_ascii=False, indent=1)
    sys.stdout.write("\n")
    print(
        f"wrote {len(tasks)} task(s) with {regions} region(s); skipped {bad} bad line(s)",
        file=sys.stderr,
    )
    return 1 if bad else 0


_PREDICT_AGAIN = "varco-labeler predict IMAGE"


def _predict(args: argparse.Namespace) -> int:
    from varco_labeler.engine.availability import ModelUnavailable, report
    from varco_labeler.engine.load import load_engine
    from varco_labeler.engine.predict import run_predict
    from varco_labeler.policy import Policy

    missing = [image for image in args.images if not Path(image).is_file()]
    if missing:
        print(f"error: no such image file: {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.task in ("question", "referring") and not args.prompt:
        print(f"error: --task {args.task} needs --prompt", file=sys.stderr)
        return 2
    settings = _settings(
        model=args.model,
        batch_size=args.batch_size,
        openai_url=args.openai_url,
        profile=args.profile,
        **loading_flags(args),
    )
    policy = Policy.resolve(settings, task=args.task, prompt=args.prompt)
    options = {} if settings.openai_url else {"device": args.device}
    try:
        engine = load_engine(settings, **options)
    except ModelUnavailable as error:
        return report(error, "varco-labeler predict", settings.log_level, rerun=_PREDICT_AGAIN)
    records = run_predict(
        engine,
        policy,
        args.images,
        batch_size=settings.batch_size,
        max_new_tokens=args.max_new_tokens,
    )
    for record in records:
        print(json.dumps(record, ensure_ascii=False), flush=True)
    return 0


def _settings(**flags: object) -> Settings:
    """Settings from the environment and flags; a wrong value ends the command (status 2)."""
    from varco_labeler.settings import Settings, SettingsError

    try:
        return Settings.from_env(**flags)
    except SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def _tiny_model(args: argparse.Namespace) -> int:
    from varco_labeler.engine.tiny import TEACHING, build_tiny_model, read_lessons

    if args.size != "tiny" or args.random or args.image_size:
        return _random_model(args)
    if args.steps is not None and args.steps < 0:
        print("error: --steps must be 0 or more", file=sys.stderr)
        return 2
    lessons = list(TEACHING)
    try:
        if args.lessons:
            taught = read_lessons(args.lessons)
            lessons = lessons + taught if args.keep_default_lessons else taught
        path = build_tiny_model(
            Path(args.dir),
            text_model=args.text_model,
            lessons=lessons,
            teaching_steps=args.steps,
        )
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"tiny model written to {path} ({len(lessons)} lesson(s))", file=sys.stderr)
    return 0


def _random_model(args: argparse.Namespace) -> int:
    if args.size == "tiny" or not args.random:
        message = "error: --size 14b|1.7b goes with --random (and --image-size with both)"
        print(message, file=sys.stderr)
        return 2
    if args.lessons or args.steps is not None:
        print("error: a --random model is not taught: drop --lessons and --steps", file=sys.stderr)
        return 2
    from varco_labeler.engine.random_model import build_random_model

    print(f"building a random {args.size} model (minutes, and its size in RAM)", file=sys.stderr)
    try:
        path = build_random_model(Path(args.dir), args.size, image_size=args.image_size)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"random {args.size} model written to {path}", file=sys.stderr)
    return 0


def _export(args: argparse.Namespace) -> int:
    from varco_labeler.feedback.commands import run_export
    from varco_labeler.feedback.sources import SourceError

    try:
        summary = run_export(
            args.source,
            args.format,
            Path(args.out),
            database_url=args.database_url,
            label_config=Path(args.label_config) if args.label_config else None,
            project=args.project,
            val_fraction=args.val_fraction,
            seed=args.seed,
            only=_annotation_filter(args),
        )
    except (SourceError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1, ensure_ascii=False))
    return 0


def _report(args: argparse.Namespace) -> int:
    from varco_labeler.feedback.commands import run_report
    from varco_labeler.feedback.sources import SourceError

    try:
        _, table = run_report(
            args.source,
            out_json=Path(args.json) if args.json else None,
            out_html=Path(args.html) if args.html else None,
            database_url=args.database_url,
            label_config=Path(args.label_config) if args.label_config else None,
            project=args.project,
            worst=args.worst,
            only=_annotation_filter(args),
        )
    except (SourceError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(table)
    return 0


def _train(args: argparse.Namespace) -> int:
    from varco_labeler.feedback.commands import run_train
    from varco_labeler.feedback.train import TrainError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = run_train(
            Path(args.dataset),
            args.base_model,
            Path(args.out),
            method=args.method,
            lora=not args.no_lora,
            lora_r=args.lora_r,
            lora_alpha=args.lora_alpha,
            target_modules=args.target_modules,
            epochs=args.epochs,
            max_steps=args.max_steps,
            learning_rate=args.lr,
            batch_size=args.batch_size,
            gradient_accumulation=args.grad_accum,
            beta=args.beta,
            max_length=args.max_length,
            bf16=args.bf16,
            gradient_checkpointing=args.gradient_checkpointing,
            save_steps=args.save_steps,
            seed=args.seed,
            model_version=args.model_version,
            load_in_4bit=args.load_in_4bit,
            attn_implementation=args.attn_implementation,
            evaluate=args.evaluate,
            eval_batch_size=args.eval_batch_size,
        )
    except TrainError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:  # under a launcher, the main process speaks
        print(json.dumps(summary, indent=1, ensure_ascii=False))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from varco_labeler.feedback.evaluate import EvaluateError, evaluate

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    settings = {"openai_url": args.openai_url, "profile": args.profile, **loading_flags(args)}
    _settings(model=args.model, **settings)  # a wrong setting ends here (status 2)
    options = {} if args.openai_url else {"device": args.device}
    try:
        result = evaluate(
            args.model,
            Path(args.dataset),
            args.split,
            batch_size=args.batch_size,
            engine_options=options,
            settings_overrides=settings,
        )
    except (EvaluateError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=1, ensure_ascii=False)
    if args.json:
        Path(args.json).write_text(text, encoding="utf-8")
    micro, found = result["micro"] or {}, result["map"] or {}
    print(
        f"{result['model_version']} on {result['examples']} {args.split} example(s): "
        f"P {micro.get('precision', 0):.3f} R {micro.get('recall', 0):.3f} "
        f"F1 {micro.get('f1', 0):.3f} (IoU 0.5), mAP@[.5:.95] {found.get('map') or 0:.3f}"
        + (f", OCR CER {result['ocr']['cer']:.3f}" if (result["ocr"] or {}).get("cer") else "")
    )
    return 0


def _annotation_filter(args: argparse.Namespace) -> object:
    from varco_labeler.feedback.annotations import AnnotationFilter, parse_since

    names = frozenset(n.strip() for n in (args.annotator or "").split(",") if n.strip())
    try:
        since = parse_since(args.since) if args.since else None
    except ValueError:
        print(f"error: --since {args.since!r}: not an ISO date or time", file=sys.stderr)
        raise SystemExit(2) from None
    return AnnotationFilter(names, since, args.reviewed_only)


def _label_config(args: argparse.Namespace) -> int:
    from varco_labeler.labelstudio.templates import label_config

    labels = [label.strip() for label in (args.labels or "").split(",") if label.strip()]
    print(label_config(args.kind, labels, prompt_box=args.prompt_box), end="")
    return 0


def _add_source_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        nargs="?",
        default="store",
        help="'store' (the feedback store; default), a Label Studio JSON export file, or "
        "'label-studio' (a live project's snapshot export: needs LABEL_STUDIO_URL, "
        "LABEL_STUDIO_API_KEY and --project)",
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("VARCO_DATABASE_URL"),
        help="feedback store URL (env VARCO_DATABASE_URL; default: SQLite under MODEL_DIR)",
    )
    parser.add_argument(
        "--label-config", metavar="FILE", help="the project's label config, for an export file"
    )
    parser.add_argument("--project", type=int, help="Label Studio project id")


def _add_annotation_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--annotator",
        metavar="ID_OR_EMAIL,...",
        help="only annotations by these annotators (Label Studio user ids or e-mails)",
    )
    parser.add_argument(
        "--since",
        metavar="DATE",
        help="only annotations made or updated at or after this ISO date/time (UTC if no zone)",
    )
    parser.add_argument(
        "--reviewed-only",
        action="store_true",
        help="only reviewed annotations: marked ground truth, or accepted in a review",
    )


def _add_extra_params_argument(parser: argparse.ArgumentParser, default: str = "none") -> None:
    parser.add_argument(
        "--extra-params",
        metavar="JSON",
        help="the project's model settings, as typed into Label Studio's Extra params: "
        '{"task": "ocr", "fallback_label": "Other", "ocr_label": "Text", "min_score": 0.5, '
        '"question": "..."} (' + default + ")",
    )


def _prelabel(args: argparse.Namespace) -> int:
    from varco_labeler.engine.availability import ModelUnavailable, report
    from varco_labeler.labelstudio import LabelConfigError
    from varco_labeler.policy import PolicyError, parse_extra_params
    from varco_labeler.prelabel import Selection, prelabel_folder, prelabel_project
    from varco_labeler.queue import QueueUnavailable
    from varco_labeler.settings import Settings, SettingsError

    if (args.project is None) == (args.images is None):
        print("error: give --project ID or --images DIR", file=sys.stderr)
        return 2
    if args.images and not args.label_config:
        print("error: --images needs --label-config", file=sys.stderr)
        return 2
    try:
        settings = Settings.from_env(
            model=args.model,
            redis_url=args.redis_url,
            batch_size=args.batch_size,
            profile=args.profile,
        )
        logging.basicConfig(level=settings.log_level, format="%(levelname)s %(name)s: %(message)s")
        extra = parse_extra_params(args.extra_params) if args.extra_params else None
        if args.images:
            tasks, summary = prelabel_folder(
                settings,
                Path(args.images),
                Path(args.label_config).read_text(encoding="utf-8"),
                args.url_prefix,
                extra_params=extra,
            )
            with open(args.out, "w", encoding="utf-8") if args.out else sys.stdout as out:
                json.dump(tasks, out, ensure_ascii=False, indent=1)
        else:
            ids = frozenset(int(t) for t in args.tasks.split(",")) if args.tasks else None
            selection = Selection(args.unlabelled, args.view, ids)
            summary = prelabel_project(settings, args.project, selection, extra_params=extra)
    except ModelUnavailable as error:  # no queue, and the model cannot be had here
        return report(error, "varco-labeler prelabel", settings.log_level)
    except (
        SettingsError,
        LabelConfigError,
        PolicyError,
        QueueUnavailable,
        ValueError,
        OSError,
    ) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(summary.text(), file=sys.stderr)
    return 130 if summary.interrupted else 1 if summary.failed else 0


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from varco_labeler.backend import Backend
    from varco_labeler.feedback.store import FeedbackStore
    from varco_labeler.labelstudio.labels import warm_up
    from varco_labeler.queue import EMBEDDED, InlineDispatcher, RQDispatcher
    from varco_labeler.server import create_app

    settings = _settings(
        model=args.model,
        redis_url=args.redis_url,
        port=args.port,
        host=args.host,
        log_level=args.log_level,
        batch_size=args.batch_size,
        profile=args.profile,
        **loading_flags(args),
    )
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Opened first: a wrong VARCO_DATABASE_URL fails before minutes of model loading.
    feedback = FeedbackStore(settings.database_url, model_dir=settings.model_dir)
    if settings.embedded:
        from varco_labeler import jobs
        from varco_labeler.engine.availability import ModelUnavailable, report

        logging.getLogger("varco-labeler").info(
            "embedded mode (no REDIS_URL): loading %s in this process", settings.model
        )
        # The current model release (MODEL_DIR/releases.json), else --model; swapped between
        # batches when one is published.
        try:
            context = jobs.build_context(settings, follow_releases=EMBEDDED)
        except ModelUnavailable as error:
            return report(error, "varco-labeler serve", settings.log_level)
        jobs.install(context)
        dispatcher = InlineDispatcher(jobs.predict_batch, settings.batch_size, jobs.engine_version)
    else:
        dispatcher = RQDispatcher(settings)
    backend = Backend(settings, dispatcher, feedback)
    if settings.embedded:  # the jobs run in this process: /metrics shows theirs too
        backend.metrics.watch(jobs.metrics())
    reconciler = None
    if settings.label_studio_url and settings.label_studio_api_key:
        from varco_labeler.feedback.reconciler import Reconciler
        from varco_labeler.labelstudio.client import LabelStudioClient

        # Few retries per call: the reconciler waits and tries again by itself.
        client = LabelStudioClient(
            settings.label_studio_url, settings.label_studio_api_key, attempts=2
        )
        reconciler = Reconciler(feedback, client, settings.sync_interval)
    app = create_app(backend, feedback, reconciler)
    warm_up()
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level.lower())
    return 0


def _sync(args: argparse.Namespace) -> int:
    from varco_labeler.feedback.store import FeedbackStore
    from varco_labeler.feedback.sync import SyncError, sync_project
    from varco_labeler.labelstudio.client import LabelStudioClient, LabelStudioError

    settings = _settings()
    logging.basicConfig(level=settings.log_level, format="%(levelname)s %(name)s: %(message)s")
    if not (settings.label_studio_url and settings.label_studio_api_key):
        print("error: set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY", file=sys.stderr)
        return 2
    store = FeedbackStore(args.database_url or settings.database_url, settings.model_dir)
    projects = args.project or store.projects()
    if not projects:
        print(
            "error: no project to sync: pass --project N (with --all, the store knows no "
            "project yet: none was connected to this backend or synced)",
            file=sys.stderr,
        )
        return 2
    failed = 0
    with LabelStudioClient(settings.label_studio_url, settings.label_studio_api_key) as client:
        for project in projects:
            try:
                report = sync_project(store, client, project, full=args.full, progress=True)
            except (SyncError, LabelStudioError) as error:
                print(f"error: project {project}: {error}", file=sys.stderr)
                failed += 1
                continue
            print(json.dumps(report.to_json()) if args.json else report.summary())
    store.close()
    return 1 if failed else 0


def _add_sync(commands: argparse._SubParsersAction) -> None:
    sync = commands.add_parser(
        "sync",
        help="reconcile the feedback store with Label Studio (annotations, skips, drafts, "
        "deletions, predictions)",
        description="Make the feedback store hold exactly what Label Studio holds, through its "
        "API (LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY): every task changed since the last sync "
        "is read in full, then Label Studio's counts are compared with the store's to catch bulk "
        "deletions, bulk-imported predictions and deleted tasks. Idempotent and resumable: run "
        "it after the backend was down, or let `serve` run it (VARCO_SYNC_INTERVAL).",
    )
    which = sync.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--project", type=int, action="append", help="a Label Studio project id (repeatable)"
    )
    which.add_argument(
        "--all",
        action="store_true",
        help="every project the store knows: connected to this backend, or synced before",
    )
    sync.add_argument(
        "--full", action="store_true", help="read every task again, not only the changed ones"
    )
    sync.add_argument("--database-url", help="the feedback store (env VARCO_DATABASE_URL)")
    sync.add_argument(
        "--json", action="store_true", help="print each project's report as a JSON line"
    )
    sync.set_defaults(handler=_sync)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="varco-labeler",
        description="Pre-label images in Label Studio with NCSOFT VARCO-VISION, and turn "
        "corrections into training data.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    convert = commands.add_parser(
        "convert",
        help="turn raw VARCO-VISION outputs into a Label Studio import file",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Turn raw VARCO-VISION outputs into a Label Studio import file (tasks with predictions).

Input: JSON Lines, one model output per line. The lines `varco-labeler predict` prints go in as
they are (their "regions" are used, already post-processed for the checkpoint); outputs from
elsewhere give the raw text instead, which is parsed:
  {"image": PATH_OR_URL, "regions": [...] | "output": RAW_TEXT, "task"?: "grounding"|"ocr",
   "width"?: W, "height"?: H, "model_version"?: V, "labels"?: [...]}
"task" defaults to the project policy's (OCR when the config has a per-region TextArea).
Image sizes are read from local files when not given; URLs need "width" and "height".
"labels" lists a task's own labels when the config takes them from task data.

Output: the import file on stdout; import it in Label Studio or with the SDK.
Bad lines are reported on stderr with their number and skipped (exit status 1);
the rest is still written. Phrases that match no label are dropped unless --fallback-label.""",
    )
    convert.add_argument("input", nargs="?", help="JSON Lines file (default: stdin)")
    convert.add_argument(
        "--label-config", required=True, metavar="FILE", help="the project's label config XML"
    )
    convert.add_argument(
        "--model-version",
        default="varco-import",
        help="model_version of lines that do not carry one (default: %(default)s)",
    )
    convert.add_argument(
        "--fallback-label",
        metavar="LABEL",
        help="label for grounded phrases that match no label (default: drop them)",
    )
    _add_extra_params_argument(convert)
    convert.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="list every dropped item, not just a count per line",
    )
    convert.set_defaults(handler=_convert)

    config = commands.add_parser(
        "label-config",
        help="print a Label Studio label config for grounding, OCR or referring",
        description="Print a label config to paste into Label Studio (project Settings > "
        "Labeling Interface > Code). grounding: labelled boxes; ocr: boxes with a per-region "
        "transcription (the backend runs OCR for it); referring: draw a box in interactive mode "
        "and the model's answer about it lands in the region's text box; nothing is pre-labelled "
        'when a task opens (set extra_params {"task": "grounding"} to pre-label it in bulk). '
        "Every config offers the smart tool: switch on Auto-Annotation, pick a label, then the "
        "smart tool, and draw.",
    )
    config.add_argument("kind", choices=["grounding", "ocr", "referring"])
    config.add_argument(
        "--labels", metavar="A,B,...", help="box labels (default: Object; Text,Handwriting; Region)"
    )
    config.add_argument(
        "--prompt-box",
        action="store_true",
        help="add a text box where a typed phrase is grounded (interactive)",
    )
    config.set_defaults(handler=_label_config)

    predict = commands.add_parser(
        "predict",
        help="run the model on local images and print one JSON line per image",
        description="Run VARCO-VISION on local images: one JSON line per image with the raw "
        "output, regions (normalised x1, y1, x2, y2 boxes with phrase or text and a confidence) "
        "and timing. The quickest way to try a checkpoint.",
    )
    predict.add_argument("images", nargs="+", metavar="IMAGE")
    predict.add_argument(
        "--model",
        help=f"checkpoint id or local path (default: env VARCO_MODEL or {DEFAULT_MODEL})",
    )
    predict.add_argument(
        "--task",
        choices=["grounding", "ocr", "question", "referring"],
        default="grounding",
        help="default: %(default)s",
    )
    predict.add_argument(
        "--prompt",
        help="the question (question task) or a full prompt that replaces the task's standard one",
    )
    predict.add_argument("--batch-size", type=int, help="default: env VARCO_BATCH_SIZE or 8")
    predict.add_argument("--max-new-tokens", type=int, help="default: the checkpoint profile's")
    predict.add_argument("--device", help="cuda:0, cpu, ... (default: cuda:0 if available)")
    add_loading_arguments(predict)
    predict.add_argument(
        "--profile",
        help="checkpoint profile to run the model under, e.g. VARCO-VISION-2.0-1.7B-OCR "
        "(env VARCO_PROFILE; default: the one saved with the model, else by its name)",
    )
    predict.add_argument(
        "--openai-url",
        metavar="URL",
        help="use an OpenAI-compatible server such as vLLM "
        "(e.g. http://localhost:8000/v1) instead of loading the model here",
    )
    predict.set_defaults(handler=_predict)

    tiny = commands.add_parser(
        "tiny-model",
        help="build the tiny offline VARCO-shaped model used by tests and benchmarks",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Build a ~140k-parameter LlavaOnevision model with a byte-level tokenizer, the VARCO
special tokens and the real chat template, entirely offline, and teach it a few
answers (solid red and blue images) so that its outputs parse. Seconds on a CPU.

--lessons FILE teaches your own answers instead (or as well, with
--keep-default-lessons). FILE is JSON Lines, one lesson a line:

{"image": "sign.png", "prompt": "<ocr>", "answer": "<char>S</char><bbox>0.1, 0.3, 0.2, 0.6</bbox>"}
{"image": "/data/cat.jpg", "prompt": "<gro>\\nDescribe the image in detail.", "answer": "..."}

Relative image paths resolve against FILE's folder. The prompt must be the one the
model will be asked (see varco_labeler.varco.prompt_for); the answer comes back
exactly for that image and prompt, e.g. one <char> item per character like
VARCO-VISION-2.0-1.7B-OCR. Long answers need more teaching: the default --steps is
150 per 1,000 answer tokens (a byte or a tag each), at least 150; one 40-character
OCR answer with boxes (190 steps) takes 40-60 s on one CPU thread.

--size 14b|1.7b --random writes instead a model with the real checkpoint's
architecture (VARCO-VISION-14B-HF: Qwen2.5-14B + SigLIP, ~15.2B parameters, ~30 GB
in bf16; 2.0-1.7B: Qwen3-1.7B + SigLIP2, ~2.1B, ~4.3 GB), vocabulary size and
image resolution, with random weights: its answers are noise, its cost per token is
the real one (for `python -m bench --only batching --model DIR` on a GPU). It needs
that much free RAM and disk to build.""",
    )
    tiny.add_argument("dir", help="output directory")
    tiny.add_argument(
        "--size",
        choices=["tiny", "14b", "1.7b"],
        default="tiny",
        help="tiny (default), or a real checkpoint's architecture (needs --random)",
    )
    tiny.add_argument(
        "--random",
        action="store_true",
        help="with --size 14b|1.7b: random weights, nothing taught (the only choice there)",
    )
    tiny.add_argument(
        "--image-size",
        type=int,
        metavar="PX",
        help="with --size: tiles of PX pixels instead of the real 384 (fewer vision tokens: "
        "for CPU tests only)",
    )
    tiny.add_argument(
        "--text-model",
        choices=["qwen2", "qwen3"],
        default="qwen2",
        help="qwen2 like VARCO-VISION-14B-HF, qwen3 like 2.0 (default: %(default)s)",
    )
    tiny.add_argument(
        "--lessons",
        metavar="FILE",
        help="JSON Lines of {image, prompt, answer} to teach instead of the built-in lessons",
    )
    tiny.add_argument(
        "--keep-default-lessons",
        action="store_true",
        help="with --lessons: teach the built-in red/blue lessons as well",
    )
    tiny.add_argument(
        "--steps",
        type=int,
        metavar="N",
        help="teaching steps (default: 150 per 1,000 answer tokens, at least 150; 0 leaves the "
        "weights random)",
    )
    tiny.set_defaults(handler=_tiny_model)

    prelabel = commands.add_parser(
        "prelabel",
        help="pre-label a whole Label Studio project (or a folder of images) through the queue",
        description="Pre-label every task of a project (or the unlabelled ones, a Data Manager "
        "view, or given task ids) without Label Studio's 100 s /predict limit: batches go "
        "through the queue to varco-worker processes (or run here without REDIS_URL), and the "
        "predictions are pushed into the project with the SDK. Tasks that already have a "
        "prediction of this model version are skipped, so running it again resumes or does "
        "nothing. Ctrl-C stops cleanly. Needs LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY. "
        "With --images DIR it pre-labels image files instead and writes an import file.",
    )
    prelabel.add_argument("--project", type=int, help="Label Studio project id")
    prelabel.add_argument("--unlabelled", action="store_true", help="only tasks not yet labelled")
    prelabel.add_argument("--view", type=int, help="only the tasks of this Data Manager view (id)")
    prelabel.add_argument("--tasks", metavar="ID,ID,...", help="only these task ids")
    prelabel.add_argument("--images", metavar="DIR", help="pre-label the images in a folder")
    prelabel.add_argument("--label-config", metavar="FILE", help="label config, with --images")
    prelabel.add_argument(
        "--url-prefix",
        help="with --images: task image = prefix + relative "
        "path, e.g. '/data/local-files/?d=photos/' (default: absolute path)",
    )
    prelabel.add_argument(
        "--out", metavar="FILE", help="with --images: the import file (default: stdout)"
    )
    prelabel.add_argument("--model", help="checkpoint id or local path (env VARCO_MODEL)")
    prelabel.add_argument(
        "--redis-url",
        help="the workers' queue (env REDIS_URL); unset: run the model in this process",
    )
    prelabel.add_argument("--batch-size", type=int, help="tasks per job (env VARCO_BATCH_SIZE)")
    prelabel.add_argument(
        "--profile", help="checkpoint profile, without a queue (env VARCO_PROFILE; see predict)"
    )
    _add_extra_params_argument(
        prelabel,
        "default with --project: those of the model connected to the project in Label Studio",
    )
    prelabel.set_defaults(handler=_prelabel)

    export = commands.add_parser(
        "export",
        help="turn corrected labels into training data (TRL SFT/DPO, LLaVA, HF dataset)",
        description="Pair each task's human annotation (ground truth first, then the latest; "
        "skipped and deleted ones dropped) with the model's pre-label and write a "
        "self-contained training set: the images copied in, answers in the exact form the "
        "model emits, a deterministic train/validation split by task, and a dataset card. "
        "trl-sft: prompt/completion + images; trl-dpo: prompt/chosen (the correction)/rejected "
        "(the pre-label), only where they differ materially; llava and llava-dpo: LLaVA(-NeXT) "
        "JSON; hf: a Hugging Face dataset (parquet, images embedded).",
    )
    _add_source_arguments(export)
    export.add_argument(
        "--format", required=True, choices=["trl-sft", "trl-dpo", "llava", "llava-dpo", "hf"]
    )
    export.add_argument("--out", required=True, metavar="DIR", help="output directory")
    export.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="share of tasks in the validation split (default: %(default)s)",
    )
    export.add_argument("--seed", type=int, default=0, help="split seed (default: %(default)s)")
    _add_annotation_filters(export)
    export.set_defaults(handler=_export)

    report = commands.add_parser(
        "report",
        help="how good were the pre-labels: box F1, OCR CER, review effort per model version",
        description="Compare pre-labels with the human corrections, per model version and per "
        "label: box precision, recall and F1 at IoU 0.5 (Hungarian matching), mean IoU, OCR "
        "CER and NED, review effort (accepted, adjusted, deleted, added; acceptance rate), and "
        "the lowest-scoring tasks to review first. Prints a table; --json and --html write more.",
    )
    _add_source_arguments(report)
    report.add_argument("--json", metavar="FILE", help="write the report as JSON")
    report.add_argument("--html", metavar="FILE", help="write an HTML page with charts")
    report.add_argument(
        "--worst",
        type=int,
        default=20,
        help="how many tasks to list for review first (default: %(default)s)",
    )
    _add_annotation_filters(report)
    report.set_defaults(handler=_report)

    train = commands.add_parser(
        "train",
        help="fine-tune a checkpoint on a trl-sft or trl-dpo export (LoRA by default)",
        description="Fine-tune VARCO-VISION on an exported feedback set with TRL: SFTTrainer for "
        "a trl-sft export, DPOTrainer for trl-dpo, with LoRA on the language model's attention "
        "and MLP projections unless --no-lora (full fine-tuning; the vision tower stays frozen "
        "either way). Writes OUT/adapter (the LoRA adapter), OUT/model (the merged model and its "
        "processor: give it to --model or VARCO_MODEL) and OUT/train_summary.json (steps, "
        "losses, dataset sizes and the new model version, e.g. VARCO-VISION-14B-HF+sft-1a2b3c4d). "
        "Needs the train extra (pip install 'varco-labeler[train]'); real checkpoints need a GPU.",
    )
    train.add_argument("dataset", metavar="DATASET_DIR", help="a trl-sft or trl-dpo export")
    train.add_argument("--base-model", required=True, help="checkpoint id or local path")
    train.add_argument("--out", required=True, metavar="DIR", help="output directory")
    train.add_argument("--method", choices=["sft", "dpo"], help="default: the export's format")
    train.add_argument("--no-lora", action="store_true", help="full fine-tuning instead of LoRA")
    train.add_argument("--lora-r", type=int, default=16, help="LoRA rank (default: %(default)s)")
    train.add_argument("--lora-alpha", type=int, default=32, help="default: %(default)s")
    train.add_argument(
        "--target-modules",
        metavar="REGEX",
        help="LoRA targets, a regex over full module names (default: the language "
        "model's q/k/v/o and gate/up/down projections)",
    )
    train.add_argument("--epochs", type=float, default=1.0, help="default: %(default)s")
    train.add_argument(
        "--max-steps",
        type=int,
        default=-1,
        help="stop after N optimiser steps (overrides --epochs)",
    )
    train.add_argument(
        "--lr",
        type=float,
        help="learning rate (default: 2e-4 SFT with LoRA, 2e-5 SFT full, 5e-6 DPO "
        "with LoRA, 1e-6 DPO full)",
    )
    train.add_argument("--batch-size", type=int, default=1, help="per device (default: 1)")
    train.add_argument(
        "--grad-accum", type=int, default=8, help="gradient accumulation steps (default: 8)"
    )
    train.add_argument("--beta", type=float, default=0.1, help="DPO beta (default: 0.1)")
    train.add_argument(
        "--max-length",
        type=int,
        help="truncate longer sequences (default: never; a cut can lose image tokens)",
    )
    train.add_argument(
        "--bf16", action=argparse.BooleanOptionalAction, help="default: on with a CUDA GPU"
    )
    train.add_argument(
        "--gradient-checkpointing",
        action=argparse.BooleanOptionalAction,
        help="default: on with a CUDA GPU",
    )
    train.add_argument(
        "--save-steps", type=int, help="keep a checkpoint every N steps in OUT/checkpoints"
    )
    train.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    train.add_argument(
        "--model-version", help="default: BASE+METHOD-HASH of the base, the data and the recipe"
    )
    train.add_argument(
        "--load-in-4bit",
        action="store_true",
        help="QLoRA: a LoRA adapter on the base loaded in 4 bits (one CUDA GPU, bitsandbytes)",
    )
    train.add_argument(
        "--attn-implementation", help="eager, sdpa, flash_attention_2 (default: transformers')"
    )
    train.add_argument(
        "--evaluate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="score the base and the trained model on the validation split into "
        "train_summary.json (default: on)",
    )
    train.add_argument(
        "--eval-batch-size", type=int, default=8, help="images per generation batch (default: 8)"
    )
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser(
        "evaluate",
        help="score a model on an exported dataset's held-out split against the human answers",
        description="Run a model on a split of a dataset written by export (any format) and "
        "score its answers against the human ones with the report's metrics: box precision, "
        "recall and F1 at IoU 0.5, COCO mAP@[.5:.95], label confusion and page-level OCR "
        "CER/NED (missed and made-up text included). Judge a fine-tune on the validation split: "
        "images it never trained on (the export splits by image content).",
    )
    evaluate.add_argument("dataset", metavar="DATASET", help="a folder written by export")
    evaluate.add_argument("--model", required=True, help="checkpoint id or local path")
    evaluate.add_argument(
        "--split",
        choices=["validation", "train"],
        default="validation",
        help="default: %(default)s",
    )
    evaluate.add_argument("--json", metavar="OUT", help="write the full result as JSON")
    evaluate.add_argument("--batch-size", type=int, default=8, help="default: %(default)s")
    evaluate.add_argument("--device", help="cuda:0, cpu, ... (default: cuda:0 if available)")
    add_loading_arguments(evaluate)
    evaluate.add_argument("--profile", help="checkpoint profile (env VARCO_PROFILE; see predict)")
    evaluate.add_argument(
        "--openai-url", metavar="URL", help="an OpenAI-compatible server (vLLM) serving the model"
    )
    evaluate.set_defaults(handler=_evaluate)

    serve = commands.add_parser(
        "serve",
        help="run the Label Studio ML backend (embedded model, or a queue to GPU workers)",
        description="Run the ML backend Label Studio connects to (Settings > Model > Connect "
        "model, URL http://HOST:9090). Without REDIS_URL the model runs in this process (one "
        "workstation). With REDIS_URL this process only forwards work to varco-worker processes "
        "on the queue and needs no GPU. Other settings come from the environment: "
        "LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY, BASIC_AUTH_USER, BASIC_AUTH_PASS, MODEL_DIR, "
        "VARCO_ALLOWED_IMAGE_HOSTS, VARCO_LOCAL_IMAGE_ROOTS (see the README).",
    )
    serve.add_argument("--model", help="checkpoint id or local path (env VARCO_MODEL)")
    serve.add_argument("--redis-url", help="queue mode: the workers' Redis (env REDIS_URL)")
    serve.add_argument("--host", help="address to listen on (default 0.0.0.0)")
    serve.add_argument("--port", type=int, help="port to listen on (env PORT, default 9090)")
    serve.add_argument("--batch-size", type=int, help="tasks per GPU batch (env VARCO_BATCH_SIZE)")
    serve.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR (env LOG_LEVEL)")
    serve.add_argument(
        "--profile", help="checkpoint profile, embedded mode (env VARCO_PROFILE; see predict)"
    )
    add_loading_arguments(serve)
    serve.set_defaults(handler=_serve)
    _add_sync(commands)
    runs.add_command(commands)  # status, cancel
    releases.add_command(commands)  # publish, list
    doctor.add_command(commands)
    ordering.add_command(commands)  # least certain first
    loop_commands.add_command(commands)  # loop, loop status|rollback|pause|resume
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except StoreUnavailable as error:
        print(f"varco-labeler {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
