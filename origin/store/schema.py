"""The origin's tables, as SQLAlchemy Core metadata.

The migrations in ``liveclass.origin.migrations`` create these tables; this
module is what queries are written against. A change here needs a new
migration. Times are seconds since the Unix epoch (double precision), like
the class log's ``ts``.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Double,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

classes = Table(
    "classes",
    metadata,
    Column("class_id", String(64), primary_key=True),
    Column("title", String(200), nullable=False),
    Column("status", String(16), nullable=False),
    Column("max_members", Integer, nullable=False),
    Column("created_at", Double, nullable=False),
    Column("started_at", Double),
    Column("ended_at", Double),
)

attendance = Table(
    "attendance",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("class_id", String(64), nullable=False, index=True),
    # The member.joined entry that opened this session: storing is
    # idempotent by it, and a member.left closes only sessions opened
    # before it in the log.
    Column("event_id", String(64), nullable=False, unique=True),
    Column("join_seq", Integer, nullable=False),
    Column("user_id", String(128), nullable=False),
    Column("name", String(200), nullable=False),
    Column("role", String(16), nullable=False),
    Column("joined_at", Double, nullable=False),
    Column("left_at", Double),
    # The edge the member joined through: its member.left closes only
    # that edge's session (the member may already be on another one).
    Column("edge_id", String(64), nullable=False, server_default=""),
)

chat_messages = Table(
    "chat_messages",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("class_id", String(64), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("event_id", String(64), nullable=False, unique=True),
    Column("user_id", String(128)),
    Column("name", String(200), nullable=False),
    Column("text", Text, nullable=False),
    Column("ts", Double, nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    UniqueConstraint("class_id", "seq", name="uq_chat_messages_class_seq"),
)

polls = Table(
    "polls",
    metadata,
    Column("class_id", String(64), primary_key=True),
    Column("poll_id", String(64), primary_key=True),
    Column("question", Text, nullable=False),
    Column("options", JSON, nullable=False),
    Column("counts", JSON),
    Column("votes", Integer),
    Column("opened_at", Double, nullable=False),
    Column("closed_at", Double),
)

quiz_results = Table(
    "quiz_results",
    metadata,
    Column("class_id", String(64), primary_key=True),
    Column("quiz_id", String(64), primary_key=True),
    Column("question", Text, nullable=False),
    Column("correct", Integer),
    Column("leaderboard", JSON),
)

recordings = Table(
    "recordings",
    metadata,
    Column("class_id", String(64), primary_key=True),
    Column("playlist_url", Text, nullable=False),
    Column("duration_s", Double, nullable=False),
)

log_offsets = Table(
    "log_offsets",
    metadata,
    Column("class_id", String(64), primary_key=True),
    Column("last_seq", Integer, nullable=False),
)
