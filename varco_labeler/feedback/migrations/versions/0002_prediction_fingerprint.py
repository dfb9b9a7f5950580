"""Predictions are recorded once: a unique ``fingerprint``; the unused ``scores`` goes.

Revision ID: 0002
Revises: 0001
Create Date: 2026-01-02

Existing rows keep every other value and get a NULL fingerprint (NULLs never collide in a unique
index, in SQLite or PostgreSQL). A store that a development build already gave the column or the
index (the pre-migration ``ALTER TABLE`` stop-gap) keeps them. SQLite drops a column by copying
the table (batch mode), inside the store's migration transaction.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "feedback_predictions"
INDEX = "ix_feedback_predictions_fingerprint"


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    columns = {column["name"] for column in inspector.get_columns(TABLE)}
    indexes = {index["name"]: index for index in inspector.get_indexes(TABLE)}
    with op.batch_alter_table(TABLE) as batch:
        if "fingerprint" not in columns:
            batch.add_column(sa.Column("fingerprint", sa.String(64), nullable=True))
        if INDEX in indexes and not indexes[INDEX]["unique"]:
            batch.drop_index(INDEX)
        if INDEX not in indexes or not indexes[INDEX]["unique"]:
            batch.create_index(INDEX, ["fingerprint"], unique=True)
        if "scores" in columns:
            batch.drop_column("scores")


def downgrade() -> None:
    with op.batch_alter_table(TABLE) as batch:
        batch.add_column(sa.Column("scores", sa.JSON(), nullable=True))
        batch.drop_index(INDEX)
        batch.drop_column("fingerprint")
