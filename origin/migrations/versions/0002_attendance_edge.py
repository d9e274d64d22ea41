"""Attendance sessions remember their edge.

A member that moves from one edge to another has two sessions; the first
edge's ``member.left`` may reach the log after the second edge's
``member.joined``, and must close only the session it opened.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add attendance.edge_id (empty for sessions stored before)."""
    with op.batch_alter_table("attendance") as batch:
        batch.add_column(
            sa.Column("edge_id", sa.String(64), nullable=False, server_default="")
        )


def downgrade() -> None:
    """Drop attendance.edge_id."""
    with op.batch_alter_table("attendance") as batch:
        batch.drop_column("edge_id")
