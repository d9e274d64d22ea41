"""Persisting class-log entries: one statement or two per entry type.

Every function here is idempotent by the entry's ``id`` or by the natural key
of what it stores (a poll's id, a quiz's id), so replaying a stretch of the
log after a crash stores nothing twice.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import Table, and_, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from liveclass.origin.contract import (
    PRESENCE_CHANGES,
    LogEvent,
    presence_events,
    roster_items,
)
from liveclass.origin.store import schema

logger = logging.getLogger(__name__)


class BadEntry(ValueError):
    """A class-log entry lacks a field its type needs; it is skipped."""


def insert(connection: AsyncConnection, table: Table) -> Any:
    """An INSERT supporting ``on_conflict_*`` on this connection's dialect."""
    name = connection.dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"database {name!r} is not supported")


def _field(event: LogEvent, name: str, kind: type | tuple[type, ...]) -> Any:
    value = event.data.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise BadEntry(f"{event.type} #{event.seq}: data.{name} missing or wrong type")
    return value


async def _member_joined(conn: AsyncConnection, cls: str, event: LogEvent) -> None:
    statement = insert(conn, schema.attendance).values(
        class_id=cls,
        event_id=event.id,
        join_seq=event.seq,
        user_id=_field(event, "user_id", str),
        name=event.data.get("name") or "",
        role=event.data.get("role") or "student",
        joined_at=event.ts,
        edge_id=event.edge_id,
    )
    await conn.execute(statement.on_conflict_do_nothing())


async def _member_left(
    conn: AsyncConnection, cls: str, event: LogEvent, opened_before: str = ""
) -> None:
    # One connection ended: the oldest open session of this member on this
    # edge, opened before this entry. Not a session on another edge (the
    # member moved there, and this edge's entry came late), nor a later one
    # (on replay it must stay open). Within one presence.changes entry,
    # "before" is by change id (``opened_before``: this change's own).
    table = schema.attendance
    before = table.c.join_seq < event.seq
    if opened_before:
        earlier = and_(table.c.join_seq == event.seq, table.c.event_id < opened_before)
        before = or_(before, earlier)
    oldest = (
        select(table.c.id)
        .where(
            and_(
                table.c.class_id == cls,
                table.c.user_id == _field(event, "user_id", str),
                table.c.edge_id == event.edge_id,
                table.c.left_at.is_(None),
                before,
            )
        )
        .order_by(table.c.join_seq)
        .limit(1)
        .scalar_subquery()
    )
    await conn.execute(
        update(table).where(table.c.id == oldest).values(left_at=event.ts)
    )


async def _presence_changes(conn: AsyncConnection, cls: str, event: LogEvent) -> None:
    # Each change is stored as the entry it stands for, in order, under an
    # id derived from the merged entry's: replaying it stores nothing twice.
    for change in presence_events(event):
        if change.type == "member.joined":
            await _member_joined(conn, cls, change)
        else:
            await _member_left(conn, cls, change, opened_before=change.id)


async def _close_sessions(
    conn: AsyncConnection, cls: str, edge_id: str | None, seq: int, at: float
) -> None:
    """Close, at ``at``, every session still open on ``edge_id`` (on any
    edge if None) that an entry before ``seq`` opened."""
    sessions = schema.attendance
    where = [
        sessions.c.class_id == cls,
        sessions.c.left_at.is_(None),
        sessions.c.join_seq < seq,
    ]
    if edge_id is not None:
        where.append(sessions.c.edge_id == edge_id)
    await conn.execute(update(sessions).where(and_(*where)).values(left_at=at))


async def _presence_gone(conn: AsyncConnection, cls: str, event: LogEvent) -> None:
    # Edges took an edge for dead and dropped its members: its sessions end
    # when it was last heard of. Sessions are kept per edge, not per
    # process, so a process of a multi-process edge leaves its sessions to
    # their member.left or the class end.
    if event.data.get("process") is not None:
        return
    last_seen = _field(event, "last_seen", (int, float))
    edge_id = _field(event, "edge_id", str)
    await _close_sessions(conn, cls, edge_id, event.seq, last_seen)


async def _presence_edge(conn: AsyncConnection, cls: str, event: LogEvent) -> None:
    # A reset: the edge (re)opened the class, so whoever it held before is
    # gone (a restart), or it says again who it holds (a roster): their
    # sessions before end here and the roster's begin, one per connection,
    # under ids derived from the entry's, so a replay stores nothing twice.
    if event.data.get("worker") is not None:
        return  # per-process rosters: see _presence_gone
    if event.data.get("reset"):
        await _close_sessions(conn, cls, event.edge_id, event.seq, event.ts)
    for i, data in roster_items(event):
        session = event.model_copy(
            update={"id": f"{event.id}:{i:06d}", "type": "member.joined", "data": data}
        )
        await _member_joined(conn, cls, session)


async def _chat_message(conn: AsyncConnection, cls: str, event: LogEvent) -> None:
    statement = insert(conn, schema.chat_messages).values(
        class_id=cls,
        seq=event.seq,
        event_id=event.id,
        user_id=event.actor or event.data.get("user_id"),
        name=event.data.get("name") or "",
        text=_field(event, "text", str),
        ts=event.ts,
        deleted=False,
    )
    await conn.execute(statement.on_conflict_do_nothing())


async def _chat_deleted(conn: AsyncConnection, cls: str, event: LogEvent) -> None:
    table = schema.chat_messages
    await conn.execute(
        update(table)
        .where(and_(table.c.class_id == cls, table.c.seq == _field(event, "seq", int)))
        .values(deleted=True)
    )


async def _poll_opened(conn: AsyncConnection, cls: str, event: LogEvent) -> None:
    statement = insert(conn, schema.polls).values(
        class_id=cls,
        poll_id=_field(event, "poll_id", str),
        question=_field(event, "question", str),
        options=_field(event, "options", list),
        opened_at=event.ts,
    )
    await conn.execute(statement.on_conflict_do_nothing())


async def _poll_closed(conn: AsyncConnection, cls: str, event: LogEvent) -> None:
    if "counts" not in event.data:
        # The close's first step: the results come with the entry that
        # makes the poll final (the reconciler's fold fills them in).
        return
    # Upsert: a closing seen without its opening (trimmed log) still counts.
    counts = _field(event, "counts", list)
    votes = event.data.get("votes")
    if not isinstance(votes, int):
        votes = sum(c for c in counts if isinstance(c, int))
    closed = {"counts": counts, "votes": votes, "closed_at": event.ts}
    statement = insert(conn, schema.polls).values(
        class_id=cls,
        poll_id=_field(event, "poll_id", str),
        question=event.data.get("question") or "",
        options=event.data.get("options") or [],
        opened_at=event.ts,
        **closed,
    )
    await conn.execute(
        statement.on_conflict_do_update(
            index_elements=["class_id", "poll_id"], set_=closed
        )
    )


async def _quiz_asked(conn: AsyncConnection, cls: str, event: LogEvent) -> None:
    statement = insert(conn, schema.quiz_results).values(
        class_id=cls,
        quiz_id=_field(event, "quiz_id", str),
        question=_field(event, "question", str),
    )
    await conn.execute(statement.on_conflict_do_nothing())


async def _quiz_closed(conn: AsyncConnection, cls: str, event: LogEvent) -> None:
    if "leaderboard" not in event.data:
        return  # the close's first step, as for a poll
    correct = event.data.get("correct")
    result = {
        "correct": correct if isinstance(correct, int) else None,
        "leaderboard": _field(event, "leaderboard", list),
    }
    statement = insert(conn, schema.quiz_results).values(
        class_id=cls,
        quiz_id=_field(event, "quiz_id", str),
        question=event.data.get("question") or "",
        **result,
    )
    if event.data.get("question"):
        result["question"] = event.data["question"]
    await conn.execute(
        statement.on_conflict_do_update(
            index_elements=["class_id", "quiz_id"], set_=result
        )
    )


async def _recording_ready(conn: AsyncConnection, cls: str, event: LogEvent) -> None:
    recording = {
        "playlist_url": _field(event, "playlist_url", str),
        "duration_s": float(_field(event, "duration_s", (int, float))),
    }
    statement = insert(conn, schema.recordings).values(class_id=cls, **recording)
    await conn.execute(
        statement.on_conflict_do_update(index_elements=["class_id"], set_=recording)
    )


async def _class_ended(conn: AsyncConnection, cls: str, event: LogEvent) -> None:
    table = schema.classes
    await conn.execute(
        update(table)
        .where(and_(table.c.class_id == cls, table.c.status != "ended"))
        .values(status="ended", ended_at=event.ts)
    )
    # Edges close every connection at the end, but their member.left
    # entries may never reach the log; the end closes what is still open.
    await _close_sessions(conn, cls, None, event.seq, event.ts)


Handler = Callable[[AsyncConnection, str, LogEvent], Awaitable[None]]

HANDLERS: dict[str, Handler] = {
    "member.joined": _member_joined,
    "member.left": _member_left,
    PRESENCE_CHANGES: _presence_changes,
    "presence.gone": _presence_gone,
    "presence.edge": _presence_edge,
    "chat.message": _chat_message,
    "chat.deleted": _chat_deleted,
    "poll.opened": _poll_opened,
    "poll.closed": _poll_closed,
    "quiz.asked": _quiz_asked,
    "quiz.closed": _quiz_closed,
    "recording.ready": _recording_ready,
    "class.ended": _class_ended,
}
"""The entry types the origin persists; the others are the edges' business."""


async def apply(conn: AsyncConnection, class_id: str, event: LogEvent) -> None:
    """Persist one entry, if its type is one the origin keeps.

    A malformed entry is logged and skipped: one bad writer must not stop
    the class's persistence.
    """
    handler = HANDLERS.get(event.type)
    if handler is None:
        return
    try:
        await handler(conn, class_id, event)
    except BadEntry as exc:
        logger.warning("skipped class-log entry: %s", exc, extra={"class_id": class_id})
