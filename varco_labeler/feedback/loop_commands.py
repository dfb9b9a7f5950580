"""``varco-labeler loop``: the active-learning loop of a project, and ``loop status``,
``loop rollback VERSION``, ``loop pause`` and ``loop resume``."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from typing import Any

from varco_labeler.feedback.loop_records import LoopRecords, RoundRecord, State, round_line

# After a failed round the loop waits this many polls before trying again.
FAILURE_BACKOFF = 10


def add_command(commands: argparse._SubParsersAction) -> None:
    loop = commands.add_parser(
        "loop",
        help="active learning: retrain on a project's corrections, promote a better model, "
        "re-label (also: loop status | rollback | pause | resume)",
        description="Run a project's active-learning loop: after every --every new corrections "
        "(the store is synced from Label Studio first) a round splits the corrected tasks into "
        "train and held out (a held-out task never trains), trains a candidate from the serving "
        "model (LoRA by default) into MODEL_DIR/loop/PROJECT/ROUND, scores it against the serving "
        "model on the held-out tasks, and promotes it only if it is better by --min-gain: it is "
        "published as the new release (workers load it between jobs), the unlabelled tasks are "
        "pre-labelled again with it, and Label Studio shows its predictions. Every round is "
        "written down step by step: a crash resumes it. Needs the train extra, LABEL_STUDIO_URL "
        "and LABEL_STUDIO_API_KEY, and the same MODEL_DIR (or REDIS_URL) as the backend.",
    )
    loop.add_argument("--project", type=int, help="the Label Studio project id")
    loop.add_argument(
        "--every",
        type=int,
        default=50,
        metavar="K",
        help="new corrections that start a round (default: %(default)s)",
    )
    loop.add_argument(
        "--min-gain",
        type=float,
        default=0.01,
        metavar="G",
        help="how much better (held-out box F1; OCR: with 1 - CER) a candidate must score to be "
        "promoted (default: %(default)s)",
    )
    loop.add_argument(
        "--held-out-share",
        type=float,
        default=0.2,
        metavar="S",
        help="share of the corrected tasks held out to judge candidates (default: %(default)s)",
    )
    loop.add_argument("--once", action="store_true", help="run one round if due, then exit")
    loop.add_argument(
        "--force", action="store_true", help="with --once: start a round on any new correction"
    )
    loop.add_argument(
        "--interval",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how often the loop looks for new corrections (default: %(default)s)",
    )
    loop.add_argument(
        "--no-relabel",
        action="store_true",
        help="after a promotion, do not pre-label the unlabelled tasks again",
    )
    loop.add_argument("--method", choices=["sft", "dpo"], default="sft", help="default: sft")
    loop.add_argument("--no-lora", action="store_true", help="full fine-tuning instead of LoRA")
    loop.add_argument("--lora-r", type=int, help="LoRA rank (train's default: 16)")
    loop.add_argument("--epochs", type=float, help="train's default: 1")
    loop.add_argument("--max-steps", type=int, help="optimiser steps per round (over --epochs)")
    loop.add_argument("--lr", type=float, help="learning rate (train's default per method)")
    loop.add_argument("--batch-size", type=int, help="per device (train's default: 1)")
    loop.add_argument("--grad-accum", type=int, help="train's default: 8")
    loop.add_argument("--seed", type=int, help="train's default: 0")
    loop.add_argument(
        "--eval-batch-size", type=int, default=8, help="images per scoring batch (default: 8)"
    )
    loop.add_argument("--json", action="store_true", help="print each round as a JSON line")
    loop.add_argument("--database-url", help="the feedback store (env VARCO_DATABASE_URL)")
    loop.set_defaults(handler=_loop)

    actions = loop.add_subparsers(dest="loop_command", metavar="ACTION")
    status = actions.add_parser("status", help="the loop's rounds, releases and state")
    _project(status, required=False)
    status.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    status.add_argument("--limit", type=int, default=20, help="rounds shown (default: 20)")
    status.set_defaults(handler=_status)

    rollback = actions.add_parser(
        "rollback",
        help="publish an earlier release again (workers load it between jobs)",
        description="Make an earlier release current again; with --project, Label Studio shows "
        "that version's predictions again. The rollback is recorded with the rounds.",
    )
    rollback.add_argument("version", help="a version from `loop status` (releases)")
    _project(rollback, required=False)
    rollback.set_defaults(handler=_rollback)

    pause = actions.add_parser("pause", help="start no new round until `loop resume`")
    _project(pause, required=True)
    pause.add_argument("--reason", help="why, for `loop status`")
    pause.set_defaults(handler=_pause)
    resume = actions.add_parser("resume", help="let the loop start rounds again")
    _project(resume, required=True)
    resume.set_defaults(handler=_resume)


def _project(parser: argparse.ArgumentParser, *, required: bool) -> None:
    # SUPPRESS: a --project given before the action is kept.
    parser.add_argument(
        "--project",
        type=int,
        required=required,
        default=argparse.SUPPRESS,
        help="the Label Studio project id",
    )
    parser.add_argument(
        "--database-url",
        default=argparse.SUPPRESS,
        help="the feedback store (env VARCO_DATABASE_URL)",
    )


# -- the loop ------------------------------------------------------------------------------------
def _loop(args: argparse.Namespace) -> int:
    from varco_labeler.feedback.loop import LoopError, LoopOptions, RoundRunner

    if args.project is None:
        print(
            "error: give --project N (or an action: status, rollback, pause, resume)",
            file=sys.stderr,
        )
        return 2
    settings = _settings()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    train = {
        "lora": not args.no_lora,
        "lora_r": args.lora_r,
        "epochs": args.epochs,
        "max_steps": args.max_steps,
        "learning_rate": args.lr,
        "batch_size": args.batch_size,
        "gradient_accumulation": args.grad_accum,
        "seed": args.seed,
    }
    try:
        options = LoopOptions(
            every=args.every,
            min_gain=args.min_gain,
            held_out_share=args.held_out_share,
            method=args.method,
            train={k: v for k, v in train.items() if v is not None},
            eval_batch_size=args.eval_batch_size,
            relabel=not args.no_relabel,
        )
        store = _store(args, settings)
        runner = RoundRunner(settings, store, args.project, options)
    except (ValueError, LoopError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.once:
        round_ = runner.run_once(force=args.force)
        _say(round_, runner, args.json)
        return 1 if round_ is not None and round_.state == State.FAILED else 0
    # docker stop: finish as Ctrl-C does; a round cut short resumes on the next start.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        while True:
            round_ = runner.run_once()
            _say(round_, runner, args.json)
            failed = round_ is not None and round_.state == State.FAILED
            time.sleep(args.interval * (FAILURE_BACKOFF if failed else 1))
    except KeyboardInterrupt:
        print("loop stopped", file=sys.stderr)
        return 0


def _say(round_: RoundRecord | None, runner: Any, as_json: bool) -> None:
    if round_ is not None:
        print(json.dumps(round_.to_json()) if as_json else round_line(round_.to_json()), flush=True)
    elif not as_json:
        if runner.records.paused(runner.project):
            why = "the loop is paused"
        else:
            why = f"{runner.pending()} new correction(s), a round needs {runner.options.every}"
        print(f"project {runner.project}: no round ({why})", flush=True)


# -- status, rollback, pause ---------------------------------------------------------------------
def _status(args: argparse.Namespace) -> int:
    from varco_labeler.releases import ReleaseChannel, ReleaseError

    settings = _settings()
    store = _store(args, settings)
    records = LoopRecords(store)
    project = getattr(args, "project", None)
    rounds = records.rounds(project, limit=args.limit)
    try:
        releases = ReleaseChannel.for_settings(settings).history()
        release_error = None
    except ReleaseError as error:
        releases, release_error = [], str(error)
    status: dict[str, Any] = {
        "project": project,
        "releases": [release.to_json() for release in releases],
        "rounds": [round_.to_json() for round_ in rounds],
    }
    if project is not None:
        since = records.counted_until(project)
        status["paused"] = records.paused(project)
        status["pause_reason"] = records.pause_reason(project)
        status["new_corrections"] = records.corrections(project, since)[0]
    store.close()
    if getattr(args, "json", False):
        print(json.dumps(status, indent=1, ensure_ascii=False))
        return 0
    current = releases[0] if releases else None
    lines = [
        "current release: "
        + (
            f"{current.version} ({current.model}), since {current.published_at}"
            if current
            else f"none published: the workers run {settings.version}"
        )
    ]
    if release_error:
        lines.append(f"releases: {release_error}")
    if project is not None:
        why = f" ({status['pause_reason']})" if status["pause_reason"] else ""
        state = f"PAUSED{why}, `loop resume` to go on" if status["paused"] else "not paused"
        lines.append(
            f"project {project}: {state}; "
            f"{status['new_corrections']} correction(s) since the last round"
        )
    lines += [round_line(round_) for round_ in status["rounds"]] or ["no round yet"]
    earlier = [r.version for r in releases[1:] if r.version != current.version]
    if earlier:
        lines.append(
            "earlier releases (loop rollback VERSION): " + ", ".join(dict.fromkeys(earlier))
        )
    print("\n".join(lines))
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from varco_labeler.feedback.loop_relabel import show_least_certain_first
    from varco_labeler.releases import Release, ReleaseChannel, ReleaseError

    settings = _settings()
    channel = ReleaseChannel.for_settings(settings)
    try:
        history = channel.history()
    except ReleaseError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    target = next((r for r in history if r.version == args.version), None)
    if target is None:
        known = ", ".join(dict.fromkeys(r.version for r in history)) or "none"
        print(f"error: no release {args.version!r}; published: {known}", file=sys.stderr)
        return 2
    current = history[0]
    if current.version == target.version:
        print(f"{target.version} is already the current release", file=sys.stderr)
        return 0
    note = f"rollback from {current.version}"
    channel.publish(Release.new(target.model, target.version, note))
    project = getattr(args, "project", None)
    store = _store(args, settings)
    LoopRecords(store).record_rollback(
        project, from_version=current.version, to_version=target.version, note=note
    )
    store.close()
    if project is not None and settings.label_studio_url:
        show_least_certain_first(settings, project, target.version)
    print(f"rolled back: {current.version} -> {target.version} ({target.model})")
    return 0


def _pause(args: argparse.Namespace) -> int:
    return _set_paused(args, True)


def _resume(args: argparse.Namespace) -> int:
    return _set_paused(args, False)


def _set_paused(args: argparse.Namespace, paused: bool) -> int:
    settings = _settings()
    store = _store(args, settings)
    LoopRecords(store).set_paused(args.project, paused, getattr(args, "reason", None))
    store.close()
    print(f"project {args.project}: loop {'paused' if paused else 'resumed'}")
    return 0


def _settings() -> Any:
    from varco_labeler.settings import Settings, SettingsError

    try:
        return Settings.from_env()
    except SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def _store(args: argparse.Namespace, settings: Any) -> Any:
    from varco_labeler.feedback.store import FeedbackStore
    from varco_labeler.settings import reveal

    url = getattr(args, "database_url", None) or reveal(settings.database_url)
    return FeedbackStore(url, model_dir=settings.model_dir)
