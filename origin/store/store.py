"""The origin's database: classes, and what the reconciler persisted."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from liveclass.origin.api.models import (
    AttendanceRow,
    ChatRow,
    ClassInfo,
    ClassReport,
    ClassStatus,
    PollRow,
    QuizRow,
    RecordingInfo,
)
from liveclass.origin.contract import LogEvent
from liveclass.origin.store import events, migrate, schema

logger = logging.getLogger(__name__)


class ClassExists(Exception):
    """A class with this id already exists."""


class Store:
    """SQLAlchemy Core over SQLite (the default) or PostgreSQL.

    Open it with :meth:`open`, bring its schema up to date with
    :meth:`migrate`, and :meth:`close` it when done.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @classmethod
    def open(cls, url: str) -> Store:
        """Connect to the database at ``url`` (``sqlite+aiosqlite:///path`` or
        ``postgresql+asyncpg://...``); a SQLite file's folder is created."""
        parsed = make_url(url)
        options: dict[str, Any] = {}
        if parsed.get_backend_name() == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            # The API and every reconciler write; wait for the lock instead
            # of failing with "database is locked".
            options["connect_args"] = {"timeout": 30}
        else:
            options["pool_pre_ping"] = True
        return cls(create_async_engine(url, **options))

    async def migrate(self) -> None:
        """Apply the shipped migrations up to the newest."""
        await migrate.upgrade(self.engine)

    async def close(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()

    # --- classes ---------------------------------------------------------

    async def create_class(self, info: ClassInfo) -> None:
        """Store a new class. Raises :class:`ClassExists`."""
        row = {
            "class_id": info.id,
            "title": info.title,
            "status": info.status.value,
            "max_members": info.max_members,
            "created_at": info.created_at,
            "started_at": info.started_at,
            "ended_at": info.ended_at,
        }
        try:
            async with self.engine.begin() as conn:
                await conn.execute(schema.classes.insert().values(**row))
        except IntegrityError:
            raise ClassExists(info.id) from None

    async def get_class(self, class_id: str) -> ClassInfo | None:
        """The class with this id, or None."""
        table = schema.classes
        async with self.engine.connect() as conn:
            result = await conn.execute(
                select(table).where(table.c.class_id == class_id)
            )
            row = result.mappings().first()
        return None if row is None else _class_info(row)

    async def list_classes(
        self, status: ClassStatus | None = None, *, ended_after: float | None = None
    ) -> list[ClassInfo]:
        """Every class (or those with ``status``, or that ended after the
        time ``ended_after``), newest first."""
        table = schema.classes
        query = select(table).order_by(table.c.created_at.desc())
        if status is not None:
            query = query.where(table.c.status == status.value)
        if ended_after is not None:
            query = query.where(table.c.ended_at > ended_after)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [_class_info(row) for row in rows]

    async def transition(
        self, class_id: str, before: ClassStatus, after: ClassStatus
    ) -> bool:
        """Move a class from ``before`` to ``after``, stamping the time.

        Returns False when the class is not in ``before`` (or is missing):
        the check and the change are one statement, so two racing requests
        cannot both succeed.
        """
        table = schema.classes
        stamp = {ClassStatus.LIVE: "started_at", ClassStatus.ENDED: "ended_at"}
        values: dict[str, Any] = {"status": after.value}
        if after in stamp:
            values[stamp[after]] = time.time()
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(table)
                .where(table.c.class_id == class_id, table.c.status == before.value)
                .values(**values)
            )
        return bool(result.rowcount)

    # --- reconciliation --------------------------------------------------

    async def offset(self, class_id: str) -> int:
        """The number of the last class-log entry persisted, 0 for none."""
        table = schema.log_offsets
        async with self.engine.connect() as conn:
            result = await conn.execute(
                select(table.c.last_seq).where(table.c.class_id == class_id)
            )
            value = result.scalar()
        return int(value or 0)

    async def persist(self, class_id: str, entries: Sequence[LogEvent]) -> int:
        """Store ``entries`` and move the class's offset past them, atomically.

        Returns the new offset, which never moves back. The entries and the
        offset commit together, so a reader that finds an entry at or below
        the offset after a crash knows it is stored; storing is idempotent
        besides, so a second reader (or a replay) stores nothing twice.
        """
        if not entries:
            return await self.offset(class_id)
        last = max(entry.seq for entry in entries)
        async with self.engine.begin() as conn:
            for entry in entries:
                await events.apply(conn, class_id, entry)
            await _advance(conn, class_id, last)
        return await self.offset(class_id)

    # --- reports ---------------------------------------------------------

    async def report(self, class_id: str) -> ClassReport | None:
        """Everything persisted about a class, or None if there is no class."""
        info = await self.get_class(class_id)
        if info is None:
            return None
        async with self.engine.connect() as conn:
            attendance = await _rows(conn, schema.attendance, class_id, "join_seq")
            chat = await _rows(conn, schema.chat_messages, class_id, "seq")
            polls = await _rows(conn, schema.polls, class_id, "opened_at")
            quizzes = await _rows(conn, schema.quiz_results, class_id, "quiz_id")
            recording = await _rows(conn, schema.recordings, class_id, "class_id")
        return ClassReport(
            class_=info,
            attendance=[AttendanceRow.model_validate(r) for r in attendance],
            chat=[ChatRow.model_validate(r) for r in chat],
            polls=[PollRow.model_validate(r) for r in polls],
            quizzes=[
                QuizRow.model_validate({**r, "leaderboard": r["leaderboard"] or []})
                for r in quizzes
            ],
            recording=RecordingInfo.model_validate(recording[0]) if recording else None,
        )


def _class_info(row: Any) -> ClassInfo:
    return ClassInfo(
        id=row["class_id"],
        title=row["title"],
        status=ClassStatus(row["status"]),
        max_members=row["max_members"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        ended_at=row["ended_at"],
    )


async def _rows(
    conn: AsyncConnection, table: Any, class_id: str, order: str
) -> list[dict[str, Any]]:
    result = await conn.execute(
        select(table).where(table.c.class_id == class_id).order_by(table.c[order])
    )
    return [dict(row) for row in result.mappings()]


async def _advance(conn: AsyncConnection, class_id: str, last: int) -> None:
    table = schema.log_offsets
    statement = events.insert(conn, table).values(class_id=class_id, last_seq=last)
    # Never backwards: a replay of old entries must not make the next read
    # start over.
    await conn.execute(
        statement.on_conflict_do_update(
            index_elements=["class_id"],
            set_={"last_seq": last},
            where=table.c.last_seq < last,
        )
    )
