"""Fixtures for the feedback tests: a fresh store and an image reader that needs no server."""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PIL import Image

from varco_labeler.feedback.store import FeedbackStore

# The colours the tiny model was taught on (engine.tiny.RED / BLUE), without importing torch here.
RED, BLUE = (220, 30, 30), (30, 30, 220)


class PngImages:
    """Serves image references as small PNGs: red for ``a.png``, blue for anything else (the
    colours the tiny model was taught on)."""

    def read_bytes(self, ref: str) -> bytes:
        buffer = io.BytesIO()
        Image.new("RGB", (48, 40), RED if "a.png" in ref else BLUE).save(buffer, "PNG")
        return buffer.getvalue()


@pytest.fixture
def png_images() -> PngImages:
    return PngImages()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FeedbackStore]:
    store = FeedbackStore(model_dir=tmp_path / "model-dir")
    yield store
    store.close()


POSTGRES_URL = os.environ.get(
    "VARCO_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@pytest.fixture
def postgres_schemas() -> Iterator[Callable[[str], str]]:
    """Makes fresh schemas of the local PostgreSQL and gives a URL for each (its ``search_path``
    puts every table, ``alembic_version`` too, in it); all dropped afterwards. Without a server the
    test is skipped, except in CI (``CI`` set), where PostgreSQL runs and must be tested."""
    import sqlalchemy

    pytest.importorskip("psycopg", reason="psycopg is not installed: pip install psycopg[binary]")
    admin = sqlalchemy.create_engine(POSTGRES_URL)
    try:
        with admin.connect():
            pass
    except sqlalchemy.exc.OperationalError as error:
        admin.dispose()
        reason = f"PostgreSQL is not reachable at {POSTGRES_URL}: {error.orig}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    schemas: list[str] = []

    def new(prefix: str) -> str:
        schema = f"{prefix}_{uuid.uuid4().hex[:8]}"
        with admin.begin() as conn:
            conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
        schemas.append(schema)
        separator = "&" if "?" in POSTGRES_URL else "?"
        return f"{POSTGRES_URL}{separator}options=-csearch_path%3D{schema}"

    yield new
    with admin.begin() as conn:
        for schema in schemas:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
    admin.dispose()
