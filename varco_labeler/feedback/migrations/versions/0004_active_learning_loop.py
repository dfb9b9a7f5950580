"""The active-learning loop's records: its rounds (and rollbacks), step by step; which corrected
tasks it holds out; whether a project's loop is paused.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

Three new tables; nothing existing changes.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROUND_INDEX = "ix_feedback_loop_rounds_project_number"
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "feedback_loop_rounds",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("project", sa.Integer(), nullable=True),
        sa.Column("number", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("decision", sa.String(32), nullable=True),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("data_until", sa.DateTime(), nullable=True),
        sa.Column("serving_version", sa.String(256), nullable=True),
        sa.Column("candidate_version", sa.String(256), nullable=True),
        sa.Column("candidate_model", sa.Text(), nullable=True),
        sa.Column("serving_score", sa.Float(), nullable=True),
        sa.Column("candidate_score", sa.Float(), nullable=True),
        sa.Column("details", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
    )
    op.create_index(ROUND_INDEX, "feedback_loop_rounds", ["project", "number"], unique=True)
    op.create_table(
        "feedback_loop_split",
        sa.Column("project", _ID, primary_key=True, autoincrement=False),
        sa.Column("task_id", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("held_out", sa.Boolean(), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
    )
    op.create_table(
        "feedback_loop_control",
        sa.Column("project", _ID, primary_key=True, autoincrement=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("changed_at", sa.DateTime(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("feedback_loop_control")
    op.drop_table("feedback_loop_split")
    op.drop_index(ROUND_INDEX, table_name="feedback_loop_rounds")
    op.drop_table("feedback_loop_rounds")
