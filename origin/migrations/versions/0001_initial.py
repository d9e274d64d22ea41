"""Initial schema: classes, attendance, chat, polls, quizzes, recordings.

Revision ID: 0001
Revises:
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create every table."""
    op.create_table(
        "classes",
        sa.Column("class_id", sa.String(64), primary_key=True),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("max_members", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("started_at", sa.Double),
        sa.Column("ended_at", sa.Double),
    )
    op.create_table(
        "attendance",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("class_id", sa.String(64), nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False, unique=True),
        sa.Column("join_seq", sa.Integer, nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("joined_at", sa.Double, nullable=False),
        sa.Column("left_at", sa.Double),
    )
    op.create_index("ix_attendance_class_id", "attendance", ["class_id"])
    op.create_table(
        "chat_messages",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("class_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False, unique=True),
        sa.Column("user_id", sa.String(128)),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("ts", sa.Double, nullable=False),
        sa.Column("deleted", sa.Boolean, nullable=False),
        sa.UniqueConstraint("class_id", "seq", name="uq_chat_messages_class_seq"),
    )
    op.create_table(
        "polls",
        sa.Column("class_id", sa.String(64), primary_key=True),
        sa.Column("poll_id", sa.String(64), primary_key=True),
        sa.Column("question", sa.Text, nullable=False),
        sa.Column("options", sa.JSON, nullable=False),
        sa.Column("counts", sa.JSON),
        sa.Column("votes", sa.Integer),
        sa.Column("opened_at", sa.Double, nullable=False),
        sa.Column("closed_at", sa.Double),
    )
    op.create_table(
        "quiz_results",
        sa.Column("class_id", sa.String(64), primary_key=True),
        sa.Column("quiz_id", sa.String(64), primary_key=True),
        sa.Column("question", sa.Text, nullable=False),
        sa.Column("correct", sa.Integer),
        sa.Column("leaderboard", sa.JSON),
    )
    op.create_table(
        "recordings",
        sa.Column("class_id", sa.String(64), primary_key=True),
        sa.Column("playlist_url", sa.Text, nullable=False),
        sa.Column("duration_s", sa.Double, nullable=False),
    )
    op.create_table(
        "log_offsets",
        sa.Column("class_id", sa.String(64), primary_key=True),
        sa.Column("last_seq", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    """Drop every table."""
    for table in (
        "log_offsets",
        "recordings",
        "quiz_results",
        "polls",
        "chat_messages",
        "attendance",
        "classes",
    ):
        op.drop_table(table)
