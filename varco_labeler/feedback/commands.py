"""Plain functions behind ``varco-labeler export`` and ``varco-labeler report``.

A source is ``store`` (the feedback store: SQLite under MODEL_DIR, or ``database_url``), a path
to a Label Studio JSON export, or ``label-studio`` (a live project's snapshot export, which needs
LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY and ``project``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from varco_labeler.feedback.annotations import AnnotationFilter, AnnotationInfo, index_annotations
from varco_labeler.feedback.export import PREFERENCE_FORMATS, export
from varco_labeler.feedback.pairing import Example, PairingStats, pair_tasks
from varco_labeler.feedback.report import build_report, render_table
from varco_labeler.feedback.sources import (
    SourceError,
    examples_from_export,
    examples_from_store,
    snapshot_export,
)
from varco_labeler.feedback.store import FeedbackStore
from varco_labeler.feedback.task_files import read_task_file
from varco_labeler.labelstudio.config import read_label_config
from varco_labeler.labelstudio.images import ImageFetcher
from varco_labeler.settings import Settings

Feedback = tuple[list[Example], dict[int, AnnotationInfo]]


def load_examples(source: str, settings: Settings, **options: Any) -> list[Example]:
    """The examples of :func:`load_feedback`, without what is known of their annotations."""
    return load_feedback(source, settings, **options)[0]


def load_feedback(
    source: str,
    settings: Settings,
    *,
    database_url: str | None = None,
    label_config: Path | None = None,
    project: int | None = None,
    stats: PairingStats | None = None,
    every_version: bool = False,
    needs_model_side: str | None = None,
    only: AnnotationFilter | None = None,
) -> Feedback:
    """Examples from ``store``, ``label-studio`` or Label Studio task files (a file or folder),
    and who made each annotation, when and how long it took (by annotation id).

    ``every_version``: one example per model version of a task (a report). ``needs_model_side``
    names what needs the predictions: a file without any (JSON_MIN) is refused for it. ``only``
    keeps the examples whose annotation passes the filter.
    """
    examples, index = _load(
        source,
        settings,
        database_url=database_url,
        label_config=label_config,
        project=project,
        stats=stats,
        every_version=every_version,
        needs_model_side=needs_model_side,
    )
    if only is not None:
        examples = only.apply(examples, index)
    return examples, index


def _load(
    source: str,
    settings: Settings,
    *,
    database_url: str | None,
    label_config: Path | None,
    project: int | None,
    stats: PairingStats | None,
    every_version: bool,
    needs_model_side: str | None,
) -> Feedback:
    config_xml = label_config.read_text(encoding="utf-8") if label_config else None
    if source == "label-studio":
        if not (settings.label_studio_url and settings.label_studio_api_key and project):
            raise SourceError("set LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY and --project")
        from varco_labeler.labelstudio.client import sdk_client

        client = sdk_client(settings.label_studio_url, settings.label_studio_api_key)
        tasks, xml = snapshot_export(client, project)
        examples = pair_tasks(
            tasks, xml, f"label-studio:{project}", stats, every_version=every_version
        )
        return examples, index_annotations(tasks)
    store = FeedbackStore(database_url, model_dir=settings.model_dir)
    try:
        if source == "store":
            examples = examples_from_store(
                store, project, config_xml, stats, every_version=every_version
            )
            # The annotations' who/when/how long, read from the same tables.
            stored = store.tasks(project)
            return examples, index_annotations({"annotations": t.annotations} for t in stored)
        path = Path(source)
        if not path.exists():
            raise SourceError(
                f"{source}: not 'store', 'label-studio' or a Label Studio task file or folder"
            )
        if config_xml is None and project is not None:
            config_xml = store.label_config(project)
        if config_xml is None:
            raise SourceError(f"{source}: pass --label-config (or --project known to the store)")
        fetcher = ImageFetcher.from_settings(settings)
        try:
            examples = examples_from_export(
                path,
                config_xml,
                store=store,
                stats=stats,
                every_version=every_version,
                needs_model_side=needs_model_side,
                image_size=lambda ref: fetcher.fetch(ref)[0].size,  # upright, as LS shows it
            )
        finally:
            fetcher.close()
        # Annotations only (no image sizes needed): who, when, how long.
        tasks = read_task_file(path, read_label_config(config_xml)).tasks
        return examples, index_annotations(tasks)
    finally:
        store.close()


def run_export(
    source: str,
    fmt: str,
    out_dir: Path,
    *,
    database_url: str | None = None,
    label_config: Path | None = None,
    project: int | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    only: AnnotationFilter | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Pair, filter (``only``: annotator, date, review state), then export; images are fetched
    as the worker fetches them (Label Studio with the API key, VARCO_ALLOWED_IMAGE_HOSTS,
    VARCO_LOCAL_IMAGE_ROOTS). The summary says how each example was paired (``pairing.rules``)
    and how many the filter left out (``filtered_out``)."""
    settings = settings or Settings.from_env()
    stats = PairingStats()
    examples, index = load_feedback(
        source,
        settings,
        database_url=database_url,
        label_config=label_config,
        project=project,
        stats=stats,
        needs_model_side=f"{fmt} preference pairs" if fmt in PREFERENCE_FORMATS else None,
    )
    kept = only.apply(examples, index) if only is not None else examples
    fetcher = ImageFetcher.from_settings(settings)
    try:
        summary = export(kept, fmt, out_dir, val_fraction, seed, images=fetcher)
    finally:
        fetcher.close()
    return {**summary, "filtered_out": len(examples) - len(kept), "pairing": vars(stats)}


def run_report(
    source: str,
    *,
    out_json: Path | None = None,
    out_html: Path | None = None,
    database_url: str | None = None,
    label_config: Path | None = None,
    project: int | None = None,
    worst: int = 20,
    only: AnnotationFilter | None = None,
    settings: Settings | None = None,
) -> tuple[dict[str, Any], str]:
    """The report as data and as a terminal table; writes JSON and HTML when asked. Each
    prediction of a task is scored under its own model version. The HTML page draws the tasks
    to review first on their images, fetched as the worker fetches them, and links each to
    Label Studio when LABEL_STUDIO_URL is set."""
    settings = settings or Settings.from_env()
    examples, index = load_feedback(
        source,
        settings,
        database_url=database_url,
        label_config=label_config,
        project=project,
        every_version=True,
        needs_model_side="a report on the pre-labels",
        only=only,
    )
    report = build_report(examples, worst=worst, annotations=index)
    if source == "store":
        report["loop_rounds"] = loop_rounds(database_url, settings, project)
    if out_json:
        out_json.write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")
    if out_html:
        from varco_labeler.feedback.report_html import render_html  # matplotlib: only here

        fetcher = ImageFetcher.from_settings(settings)
        try:
            page = render_html(report, images=fetcher, label_studio_url=settings.label_studio_url)
        finally:
            fetcher.close()
        out_html.write_text(page, encoding="utf-8")
    return report, render_table(report)


def loop_rounds(
    database_url: str | None, settings: Settings, project: int | None
) -> list[dict[str, Any]]:
    """The active-learning loop's rounds and rollbacks (of a project), newest first."""
    from varco_labeler.feedback.loop_records import LoopRecords

    store = FeedbackStore(database_url, model_dir=settings.model_dir)
    try:
        return [r.to_json() for r in LoopRecords(store).rounds(project)]
    finally:
        store.close()


def run_train(
    dataset_dir: Path, base_model: str | Path, out_dir: Path, **options: Any
) -> dict[str, Any]:
    """Fine-tune ``base_model`` on a trl-sft / trl-dpo export; ``options`` are those of
    :func:`varco_labeler.feedback.train.train`. Returns the training summary as JSON data."""
    from varco_labeler.feedback.train import train  # needs the train extra (torch, trl, peft)

    return train(dataset_dir, base_model, out_dir, **options).to_json()
