"""Plain functions behind ``varco-labeler export`` and ``varco-labeler report``.

A source is ``store`` (the feedback store: SQLite under MODEL_DIR, or ``database_url``), a path
to a Label Studio JSON export, or ``label-studio`` (a live project's snapshot export, which needs
LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY and ``project``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from varco_labeler.feedback.export import PREFERENCE_FORMATS, export
from varco_labeler.feedback.pairing import Example, PairingStats
from varco_labeler.feedback.report import build_report, render_html, render_table
from varco_labeler.feedback.sources import (
    SourceError,
    examples_from_export,
    examples_from_label_studio,
    examples_from_store,
)
from varco_labeler.feedback.store import FeedbackStore
from varco_labeler.labelstudio.images import ImageFetcher
from varco_labeler.settings import Settings


def load_examples(
    source: str,
    settings: Settings,
    *,
    database_url: str | None = None,
    label_config: Path | None = None,
    project: int | None = None,
    stats: PairingStats | None = None,
    every_version: bool = False,
    needs_model_side: str | None = None,
) -> list[Example]:
    """Examples from ``store``, ``label-studio`` or Label Studio task files (a file or folder).

    ``every_version``: one example per model version of a task (a report). ``needs_model_side``
    names what needs the predictions: a file without any (JSON_MIN) is refused for it.
    """
    config_xml = label_config.read_text(encoding="utf-8") if label_config else None
    if source == "label-studio":
        if not (settings.label_studio_url and settings.label_studio_api_key and project):
            raise SourceError("set LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY and --project")
        return examples_from_label_studio(
            settings.label_studio_url,
            settings.label_studio_api_key,
            project,
            stats,
            every_version=every_version,
        )
    store = FeedbackStore(database_url, model_dir=settings.model_dir)
    try:
        if source == "store":
            return examples_from_store(
                store, project, config_xml, stats, every_version=every_version
            )
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
            return examples_from_export(
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
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Pair, then export; images are fetched as the worker fetches them (Label Studio with the
    API key, VARCO_ALLOWED_IMAGE_HOSTS, VARCO_LOCAL_IMAGE_ROOTS). The summary says how each
    example was paired (``pairing.rules``)."""
    settings = settings or Settings.from_env()
    stats = PairingStats()
    examples = load_examples(
        source,
        settings,
        database_url=database_url,
        label_config=label_config,
        project=project,
        stats=stats,
        needs_model_side=f"{fmt} preference pairs" if fmt in PREFERENCE_FORMATS else None,
    )
    fetcher = ImageFetcher.from_settings(settings)
    try:
        summary = export(examples, fmt, out_dir, val_fraction, seed, images=fetcher)
    finally:
        fetcher.close()
    return {**summary, "pairing": vars(stats)}


def run_report(
    source: str,
    *,
    out_json: Path | None = None,
    out_html: Path | None = None,
    database_url: str | None = None,
    label_config: Path | None = None,
    project: int | None = None,
    worst: int = 20,
    settings: Settings | None = None,
) -> tuple[dict[str, Any], str]:
    """The report as data and as a terminal table; writes JSON and HTML when asked. Each
    prediction of a task is scored under its own model version."""
    examples = load_examples(
        source,
        settings or Settings.from_env(),
        database_url=database_url,
        label_config=label_config,
        project=project,
        every_version=True,
        needs_model_side="a report on the pre-labels",
    )
    report = build_report(examples, worst=worst)
    if out_json:
        out_json.write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")
    if out_html:
        out_html.write_text(render_html(report), encoding="utf-8")
    return report, render_table(report)


def run_train(
    dataset_dir: Path, base_model: str | Path, out_dir: Path, **options: Any
) -> dict[str, Any]:
    """Fine-tune ``base_model`` on a trl-sft / trl-dpo export; ``options`` are those of
    :func:`varco_labeler.feedback.train.train`. Returns the training summary as JSON data."""
    from varco_labeler.feedback.train import train  # needs the train extra (torch, trl, peft)

    return train(dataset_dir, base_model, out_dir, **options).to_json()
