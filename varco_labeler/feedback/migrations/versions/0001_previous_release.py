"""The schema of the last release without migrations (commit e4a277f): five tables.

Revision ID: 0001
Revises:
Create Date: 2026-01-01

A store made before migrations has these tables but no ``alembic_version``: the store stamps it
at this revision instead of running it. One made by a development build may lack some of them:
the missing ones are created and the rest left alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Label Studio ids are 64-bit in PostgreSQL; SQLite auto-increments only INTEGER primary keys.
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    present = set(sa.inspect(op.get_bind()).get_table_names())

    if "feedback_projects" not in present:
        op.create_table(
            "feedback_projects",
            sa.Column("id", Id, primary_key=True, autoincrement=False),
            sa.Column("title", sa.String(512), nullable=True),
            sa.Column("label_config", sa.Text(), nullable=True),
            sa.Column("updated_at", sa.DateTime(), nullable=False),
        )

    if "feedback_tasks" not in present:
        op.create_table(
            "feedback_tasks",
            sa.Column("id", Id, primary_key=True, autoincrement=False),
            sa.Column("project", sa.Integer(), nullable=True),
            sa.Column("data", sa.JSON(), nullable=False),
            sa.Column("updated_at", sa.DateTime(), nullable=False),
        )
        op.create_index("ix_feedback_tasks_project", "feedback_tasks", ["project"])

    if "feedback_predictions" not in present:
        op.create_table(
            "feedback_predictions",
            sa.Column("id", Id, primary_key=True, autoincrement=True),
            sa.Column("task_id", sa.BigInteger(), nullable=True),
            sa.Column("project", sa.Integer(), nullable=True),
            sa.Column("image", sa.Text(), nullable=False),
            sa.Column("width", sa.Integer(), nullable=True),
            sa.Column("height", sa.Integer(), nullable=True),
            sa.Column("prompt", sa.Text(), nullable=False),
            sa.Column("task_kind", sa.String(32), nullable=False),
            sa.Column("raw", sa.Text(), nullable=False),
            sa.Column("regions", sa.JSON(), nullable=False),
            sa.Column("result", sa.JSON(), nullable=False),
            sa.Column("model_version", sa.String(256), nullable=False),
            sa.Column("scores", sa.JSON(), nullable=True),
            sa.Column("score", sa.Float(), nullable=True),
            sa.Column("created_at", sa.DateTime(), nullable=False),
        )
        op.create_index(
            "ix_feedback_predictions_task", "feedback_predictions", ["task_id", "created_at"]
        )

    if "feedback_annotations" not in present:
        op.create_table(
            "feedback_annotations",
            sa.Column("id", Id, primary_key=True, autoincrement=False),
            sa.Column("task_id", sa.BigInteger(), nullable=True),
            sa.Column("project", sa.Integer(), nullable=True),
            sa.Column("result", sa.JSON(), nullable=False),
            sa.Column("prediction", sa.JSON(), nullable=True),
            sa.Column("was_cancelled", sa.Boolean(), nullable=False),
            sa.Column("ground_truth", sa.Boolean(), nullable=False),
            sa.Column("completed_by", sa.Integer(), nullable=True),
            sa.Column("lead_time", sa.Float(), nullable=True),
            sa.Column("created_at", sa.DateTime(), nullable=True),
            sa.Column("updated_at", sa.DateTime(), nullable=False),
            sa.Column("deleted", sa.Boolean(), nullable=False),
        )
        op.create_index("ix_feedback_annotations_task_id", "feedback_annotations", ["task_id"])

    if "feedback_events" not in present:
        op.create_table(
            "feedback_events",
            sa.Column("id", Id, primary_key=True, autoincrement=True),
            sa.Column("action", sa.String(64), nullable=False),
            sa.Column("project", sa.Integer(), nullable=True),
            sa.Column("annotation_ids", sa.JSON(), nullable=True),
            sa.Column("body", sa.JSON(), nullable=True),
            sa.Column("received_at", sa.DateTime(), nullable=False),
        )
        op.create_index("ix_feedback_events_action", "feedback_events", ["action"])


def downgrade() -> None:
    for table in (
        "feedback_events",
        "feedback_annotations",
        "feedback_predictions",
        "feedback_tasks",
        "feedback_projects",
    ):
        op.drop_table(table)
