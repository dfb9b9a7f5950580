"""What reconciling with Label Studio needs: Label Studio's prediction ids, the prediction an
annotation started from, task drafts, webhook notifications waiting to be read back, and where
``sync`` got to in each project.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30

Every existing row is kept. Events received before this revision were applied as they came, so
they read ``applied``; the new columns start empty and ``sync`` fills them.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PREDICTION_INDEX = "ix_feedback_predictions_label_studio_id"
EVENT_INDEX = "ix_feedback_events_state"
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("feedback_predictions") as batch:
        batch.add_column(sa.Column("label_studio_id", sa.BigInteger(), nullable=True))
        batch.create_index(PREDICTION_INDEX, ["label_studio_id"], unique=True)
    with op.batch_alter_table("feedback_annotations") as batch:
        batch.add_column(sa.Column("parent_prediction", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("feedback_tasks") as batch:
        batch.add_column(sa.Column("drafts", sa.JSON(), nullable=True))
    with op.batch_alter_table("feedback_events") as batch:
        batch.add_column(
            sa.Column("state", sa.String(16), nullable=False, server_default="applied")
        )
        batch.create_index(EVENT_INDEX, ["state"])
    op.create_table(
        "feedback_sync",
        sa.Column("project", _ID, primary_key=True, autoincrement=False),
        sa.Column("cursor", sa.DateTime(), nullable=True),
        sa.Column("synced_at", sa.DateTime(), nullable=True),
        sa.Column("stats", sa.JSON(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("feedback_sync")
    with op.batch_alter_table("feedback_events") as batch:
        batch.drop_index(EVENT_INDEX)
        batch.drop_column("state")
    with op.batch_alter_table("feedback_tasks") as batch:
        batch.drop_column("drafts")
    with op.batch_alter_table("feedback_annotations") as batch:
        batch.drop_column("parent_prediction")
    with op.batch_alter_table("feedback_predictions") as batch:
        batch.drop_index(PREDICTION_INDEX)
        batch.drop_column("label_studio_id")
