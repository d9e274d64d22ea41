"""The origin's store and reconciler, on SQLite and on the shared PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import delete, select

from liveclass.origin.api.models import ClassInfo, ClassStatus
from liveclass.origin.classlog import MemoryClassLog
from liveclass.origin.contract import Audience, LogEvent
from liveclass.origin.reconcile import Reconciler, Reconcilers
from liveclass.origin.store import ClassExists, Store, schema

TABLES = [
    schema.attendance,
    schema.chat_messages,
    schema.polls,
    schema.quiz_results,
    schema.recordings,
    schema.log_offsets,
    schema.classes,
]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, class_id: str
) -> AsyncIterator[Store]:
    """A migrated store; on PostgreSQL the test's rows are removed after."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path}/origin.db"
    else:
        url = request.getfixturevalue("postgres_url")
    opened = Store.open(url)
    await opened.migrate()
    await opened.create_class(
        ClassInfo(
            id=class_id,
            title="Physics",
            status=ClassStatus.LIVE,
            max_members=100,
            created_at=1.0,
        )
    )
    yield opened
    # The database may be shared: remove only this test's class.
    async with opened.engine.begin() as conn:
        for table in TABLES:
            await conn.execute(delete(table).where(table.c.class_id == class_id))
    await opened.close()


def joined(user: str, name: str = "Ada") -> LogEvent:
    return LogEvent(
        type="member.joined",
        audience=Audience.STAFF,
        data={"user_id": user, "name": name, "role": "student"},
    )


def left(user: str) -> LogEvent:
    return LogEvent(type="member.left", audience=Audience.STAFF, data={"user_id": user})


def chat(user: str, text: str) -> LogEvent:
    return LogEvent(
        type="chat.message",
        actor=user,
        data={"text": text, "name": "Ada", "role": "student"},
    )


def class_story() -> list[LogEvent]:
    """A short class: two members, chat, a poll, a quiz, a recording."""
    return [
        joined("u1"),  # 1
        joined("u2", "Bob"),  # 2
        chat("u1", "hello"),  # 3
        chat("u2", "spam"),  # 4
        LogEvent(type="chat.deleted", data={"seq": 4}),  # 5
        LogEvent(
            type="poll.opened",
            data={"poll_id": "p1", "question": "Q?", "options": ["a", "b"]},
        ),  # 6
        # Votes arrive in per-tick batches; Bob changes his mind, and a
        # third member votes. The closing entry carries no counts: every
        # reader folds them from the batches.
        LogEvent(
            type="poll.votes",
            audience=Audience.EDGES,
            data={
                "poll_id": "p1",
                "votes": [["u1", 0, 1.0], ["u2", 1, 1.0], ["u2", 0, 2.0], ["u3", 1, 2]],
            },
        ),  # 7
        LogEvent(type="poll.closed", data={"poll_id": "p1"}),  # 8
        LogEvent(
            type="quiz.asked",
            ts=100.0,
            data={
                "quiz_id": "q1",
                "question": "2+2?",
                "options": ["3", "4"],
                "correct": 1,
                "asked_at": 100.0,
                "duration_s": 20.0,
            },
        ),  # 9
        LogEvent(
            type="quiz.answers",
            audience=Audience.EDGES,
            data={"quiz_id": "q1", "answers": [["u1", "Ada", 1, 104.0]]},
        ),  # 10
        LogEvent(type="quiz.closed", data={"quiz_id": "q1"}),  # 11
        left("u1"),  # 12
        joined("u1"),  # 13: Ada comes back
        LogEvent(
            type="recording.ready",
            data={"playlist_url": "https://e/rec.m3u8", "duration_s": 60},
        ),  # 14
    ]


async def test_reconciler_persists_every_kind(
    store: Store, memory_log: MemoryClassLog, class_id: str
) -> None:
    await memory_log.append(class_id, class_story())

    reconciler = Reconciler(store, memory_log, class_id)
    assert await reconciler.drain() == 14
    assert await store.offset(class_id) == 14

    report = await store.report(class_id)
    assert report is not None
    sessions = [(a.user_id, a.left_at is None) for a in report.attendance]
    assert sessions == [("u1", False), ("u2", True), ("u1", True)]
    assert [(c.seq, c.text, c.deleted) for c in report.chat] == [
        (3, "hello", False),
        (4, "spam", True),
    ]
    assert report.chat[0].user_id == "u1"
    [poll] = report.polls
    assert (poll.options, poll.counts, poll.votes) == (["a", "b"], [2, 1], 3)
    assert poll.closed_at is not None
    [quiz] = report.quizzes
    assert (quiz.question, quiz.correct) == ("2+2?", 1)
    assert quiz.leaderboard[0]["score"] == 900
    assert report.recording is not None
    assert report.recording.duration_s == 60.0


async def test_replay_stores_nothing_twice(
    store: Store, memory_log: MemoryClassLog, class_id: str
) -> None:
    entries = await memory_log.append(class_id, class_story())
    await store.persist(class_id, entries)
    first = await store.report(class_id)

    # A crash before the offset moved, or a second origin: the same entries
    # again. Ada's second session must stay open despite the replayed leave.
    await store.persist(class_id, entries)
    await store.persist(class_id, entries[11:])
    again = await store.report(class_id)

    assert again == first
    assert again is not None
    assert len(again.attendance) == 3
    assert again.attendance[2].left_at is None


async def test_class_end_closes_sessions(
    store: Store, memory_log: MemoryClassLog, class_id: str
) -> None:
    await memory_log.append(class_id, [joined("u1"), joined("u2")])
    await memory_log.append(class_id, [LogEvent(type="class.ended")])
    reconciler = Reconciler(store, memory_log, class_id)
    await reconciler.drain()

    assert reconciler.ended
    report = await store.report(class_id)
    assert report is not None
    assert report.class_.status is ClassStatus.ENDED
    assert all(a.left_at is not None for a in report.attendance)


async def test_malformed_entry_is_skipped(
    store: Store, memory_log: MemoryClassLog, class_id: str
) -> None:
    await memory_log.append(
        class_id,
        [
            LogEvent(type="chat.message", data={"text": 5}),
            LogEvent(type="member.joined", data={}),
            chat("u1", "still here"),
        ],
    )
    await Reconciler(store, memory_log, class_id).drain()

    report = await store.report(class_id)
    assert report is not None
    assert [c.text for c in report.chat] == ["still here"]
    assert await store.offset(class_id) == 3


async def test_trimmed_history_is_skipped(store: Store, class_id: str) -> None:
    log = MemoryClassLog(retention=2)
    await log.append(class_id, [chat("u1", str(n)) for n in range(5)])

    reconciler = Reconciler(store, log, class_id)
    await reconciler.drain()

    report = await store.report(class_id)
    assert report is not None
    assert [c.text for c in report.chat] == ["3", "4"]


async def test_reconcilers_follow_the_log_until_the_end(
    store: Store, memory_log: MemoryClassLog, class_id: str
) -> None:
    reconcilers = Reconcilers(store, memory_log, wait_s=0.05)
    reconcilers.start(class_id)
    reconcilers.start(class_id)  # a second start is a no-op
    assert reconcilers.running() == [class_id]

    await memory_log.append(class_id, [joined("u1"), chat("u1", "hi")])
    await memory_log.append(class_id, [LogEvent(type="class.ended")])
    await reconcilers.finished(class_id, 10)

    assert reconcilers.running() == []
    assert await store.offset(class_id) == 3
    await reconcilers.close()


async def test_migrations_are_idempotent(store: Store) -> None:
    await store.migrate()
    async with store.engine.connect() as conn:
        rows = (await conn.execute(select(schema.classes.c.class_id))).all()
    assert rows


async def test_class_ids_are_unique(store: Store, class_id: str) -> None:
    info = await store.get_class(class_id)
    assert info is not None
    with pytest.raises(ClassExists):
        await store.create_class(info)
    assert not await store.transition(class_id, ClassStatus.CREATED, ClassStatus.LIVE)
    assert await store.transition(class_id, ClassStatus.LIVE, ClassStatus.ENDED)


async def test_a_restarted_reconciler_refolds_open_poll_votes(
    store: Store, memory_log: MemoryClassLog, class_id: str
) -> None:
    story = class_story()
    await memory_log.append(class_id, story[:7])  # the poll is open, votes in
    assert await Reconciler(store, memory_log, class_id).drain() == 7

    # The origin restarts; the new reconciler never saw the votes batch.
    await memory_log.append(class_id, story[7:])
    assert await Reconciler(store, memory_log, class_id).drain() == 7

    report = await store.report(class_id)
    assert report is not None
    [poll] = report.polls
    assert (poll.counts, poll.votes) == ([2, 1], 3)
