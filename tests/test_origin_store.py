"""The origin's store and reconciler, on SQLite and on the shared PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, select

from liveclass.origin.api.models import ClassInfo, ClassStatus
from liveclass.origin.classlog import Backlog, ClassLogError, MemoryClassLog
from liveclass.origin.contract import Audience, LogEvent
from liveclass.origin.outages import Dependency, Outages, Reachability
from liveclass.origin.reconcile import (
    CONSUMER,
    GROUP,
    Backoff,
    Reconciler,
    Reconcilers,
    State,
    StoreFailed,
)
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


async def test_a_late_leave_from_the_old_edge_keeps_the_new_session_open(
    store: Store, memory_log: MemoryClassLog, class_id: str
) -> None:
    def on(edge: str, entry: LogEvent) -> LogEvent:
        entry.edge_id = edge
        return entry

    # Ada moves from edge A to edge B; A's leave reaches the log last. Bob
    # has two devices on edge A and closes one.
    entries = await memory_log.append(
        class_id,
        [
            on("edge-a", joined("ada")),
            on("edge-a", joined("bob", "Bob")),
            on("edge-a", joined("bob", "Bob")),
            on("edge-b", joined("ada")),
            on("edge-a", left("ada")),
            on("edge-a", left("bob")),
        ],
    )
    await store.persist(class_id, entries)
    report = await store.report(class_id)
    assert report is not None
    sessions = [(a.user_id, a.left_at is None) for a in report.attendance]
    assert sessions == [("ada", False), ("bob", False), ("bob", True), ("ada", True)]


async def test_a_dead_edges_sessions_end_when_it_was_last_heard_of(
    store: Store, memory_log: MemoryClassLog, class_id: str
) -> None:
    """Edge A dies: its sessions end at its last entry's time, not edge B's.
    Edge C was only taken for dead (its entries were held): its roster
    closes what it had open and opens a session per connection again."""

    def on(edge: str, entry: LogEvent, ts: float) -> LogEvent:
        entry.edge_id, entry.ts = edge, ts
        return entry

    def edge_entry(edge: str, ts: float, **data: Any) -> LogEvent:
        entry = LogEvent(type="presence.edge", audience=Audience.EDGES, data=data)
        return on(edge, entry, ts)

    gone = LogEvent(
        type="presence.gone",
        audience=Audience.EDGES,
        data={"edge_id": "edge-a", "process": None, "last_seen": 103.0},
    )
    roster = [["cy", "Cy", "student"], ["cy", "Cy", "student"]]
    entries = await memory_log.append(
        class_id,
        [
            on("edge-a", joined("ada"), 100.0),
            on("edge-b", joined("bob", "Bob"), 100.0),
            on("edge-c", joined("cy", "Cy"), 101.0),
            edge_entry("edge-a", 103.0, count=1),
            on("edge-b", gone, 113.0),
            edge_entry("edge-c", 114.0, count=2, reset=True, roster=roster),
        ],
    )
    await store.persist(class_id, entries)
    await store.persist(class_id, entries)  # a replay changes nothing
    report = await store.report(class_id)
    assert report is not None
    sessions = [(a.user_id, a.joined_at, a.left_at) for a in report.attendance]
    assert sessions == [
        ("ada", 100.0, 103.0),
        ("bob", 100.0, None),
        ("cy", 101.0, 114.0),
        ("cy", 114.0, None),
        ("cy", 114.0, None),
    ]


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


# --- the consumer group: acknowledged only after the commit ----------------


class FlakyStore(Store):
    """The store, but every call fails with ``error`` while ``down`` is set,
    as a database that went away does."""

    def __init__(self, store: Store) -> None:
        super().__init__(store.engine)
        self.down = False
        self.error: Exception = ConnectionRefusedError(111, "Connect call failed")
        self.calls_while_down = 0
        self._failed = asyncio.Event()

    async def failures(self, count: int) -> None:
        """Return once ``count`` calls have failed."""
        while self.calls_while_down < count:
            await self._failed.wait()

    def _check(self) -> None:
        if self.down:
            self.calls_while_down += 1
            self._failed.set()
            self._failed = asyncio.Event()
            raise self.error

    async def offset(self, class_id: str) -> int:
        self._check()
        return await super().offset(class_id)

    async def persist(self, class_id: str, entries: Sequence[LogEvent]) -> int:
        self._check()
        return await super().persist(class_id, entries)


class AckFails(MemoryClassLog):
    """An in-process log whose next ``fail_acks`` acknowledgements fail, as
    when Redis goes away right after a commit."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_acks = 0

    async def ack(self, class_id: str, group: str, seqs: Sequence[int]) -> None:
        if self.fail_acks:
            self.fail_acks -= 1
            raise ClassLogError("connection reset")
        await super().ack(class_id, group, seqs)


async def test_a_failed_commit_leaves_entries_pending_for_the_retry(
    store: Store, memory_log: MemoryClassLog, class_id: str
) -> None:
    flaky = FlakyStore(store)
    story = await memory_log.append(class_id, class_story())
    reconciler = Reconciler(flaky, memory_log, class_id, batch=6)
    assert await reconciler.step() == 6

    flaky.down = True
    with pytest.raises(StoreFailed):
        await reconciler.step()
    reconciler.offset = None  # what run() does after a database failure
    # Delivered, not acknowledged: still the log's, not lost.
    assert await memory_log.backlog(class_id, GROUP) == Backlog(6, 2)

    flaky.down = False
    assert await reconciler.drain() == 8
    assert await memory_log.backlog(class_id, GROUP) == Backlog(0, 0)
    report = await store.report(class_id)
    assert report is not None
    # The votes batch was folded before the failure and again at the retry:
    # each vote still counts once.
    [poll] = report.polls
    assert (poll.counts, poll.votes) == ([2, 1], 3)
    assert [c.seq for c in report.chat] == [3, 4]
    assert await store.offset(class_id) == story[-1].seq


async def test_entries_committed_but_not_acked_are_not_stored_twice(
    store: Store, class_id: str
) -> None:
    log = AckFails()
    await log.append(class_id, class_story())
    reconciler = Reconciler(store, log, class_id)
    log.fail_acks = 1
    with pytest.raises(ClassLogError):
        await reconciler.step()
    assert await store.offset(class_id) == 14  # committed...
    assert (await log.backlog(class_id, GROUP)).pending == 14  # ...not acked

    first = await store.report(class_id)
    # A new origin: the pending entries come back, at or below the offset,
    # and are acknowledged without being stored again.
    again = Reconciler(store, log, class_id)
    assert await again.drain() == 14
    assert await log.backlog(class_id, GROUP) == Backlog(0, 0)
    assert await store.report(class_id) == first


async def test_a_restarted_reconciler_finishes_what_was_pending(
    store: Store, memory_log: MemoryClassLog, class_id: str
) -> None:
    await memory_log.append(class_id, class_story())
    # An origin delivered everything to itself and died before the commit.
    await memory_log.create_group(class_id, GROUP, 0)
    await memory_log.read_group(class_id, GROUP, CONSUMER)
    assert await memory_log.backlog(class_id, GROUP) == Backlog(14, 0)

    assert await Reconciler(store, memory_log, class_id).drain() == 14
    report = await store.report(class_id)
    assert report is not None
    assert [c.text for c in report.chat] == ["hello", "spam"]
    assert await memory_log.backlog(class_id, GROUP) == Backlog(0, 0)


async def test_replayed_entries_are_stored_once(store: Store, class_id: str) -> None:
    """The same entries (same ids, same numbers) read again from scratch, as
    after Redis failed over to a replica that had not seen the acks."""
    first_log, second_log = MemoryClassLog(), MemoryClassLog()
    entries = await first_log.append(class_id, class_story())
    await Reconciler(store, first_log, class_id).drain()
    first = await store.report(class_id)

    for entry in entries:
        await second_log.append(class_id, [entry])
    async with store.engine.begin() as conn:
        await conn.execute(
            delete(schema.log_offsets).where(schema.log_offsets.c.class_id == class_id)
        )
    assert await Reconciler(store, second_log, class_id).drain() == 14

    again = await store.report(class_id)
    assert again == first
    assert again is not None
    assert len(again.chat) == 2 and len(again.attendance) == 3


async def test_an_outage_is_logged_once_and_retried_with_a_capped_backoff(
    store: Store,
    memory_log: MemoryClassLog,
    class_id: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    flaky = FlakyStore(store)
    flaky.down = True
    outages = Outages()
    reconciler = Reconciler(
        flaky,
        memory_log,
        class_id,
        wait_s=0.02,
        retry_s=0.01,
        max_retry_s=0.04,
        outages=outages,
    )
    caplog.set_level(logging.DEBUG, logger="liveclass.origin")
    task = asyncio.create_task(reconciler.run())
    await memory_log.append(class_id, [joined("u1"), chat("u1", "during")])
    await asyncio.wait_for(flaky.failures(15), 10)
    assert reconciler.state is State.STORE_UNREACHABLE
    assert outages.state(Dependency.STORE) is Reachability.UNREACHABLE

    flaky.down = False
    await memory_log.append(class_id, [LogEvent(type="class.ended")])
    await asyncio.wait_for(task, 10)

    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("database unreachable (")
    assert warnings[1].startswith("database reachable again after ")
    assert outages.state(Dependency.STORE) is Reachability.OK
    report = await store.report(class_id)
    assert report is not None
    assert [c.text for c in report.chat] == ["during"]


async def test_a_database_refusal_is_logged_once_with_its_cause(
    store: Store,
    memory_log: MemoryClassLog,
    class_id: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    flaky = FlakyStore(store)
    flaky.down = True
    flaky.error = ValueError("column missing")
    reconciler = Reconciler(
        flaky, memory_log, class_id, wait_s=0.02, retry_s=0.01, max_retry_s=0.02
    )
    task = asyncio.create_task(reconciler.run())
    await asyncio.wait_for(flaky.failures(10), 10)
    assert reconciler.state is State.FAILING
    flaky.down = False
    await memory_log.append(class_id, [LogEvent(type="class.ended")])
    await asyncio.wait_for(task, 10)

    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage() for r in warnings] == [
        f"class {class_id}: could not persist (column missing); retrying",
        f"class {class_id}: persisting again",
    ]
    assert warnings[0].exc_info is not None


def test_backoff_doubles_up_to_its_cap() -> None:
    backoff = Backoff(0.5, 5.0)
    delays = [backoff.next() for _ in range(8)]
    assert 0.4 <= delays[0] <= 0.5
    assert all(0.8 * 5.0 <= d <= 5.0 for d in delays[4:])
    backoff.reset()
    assert backoff.next() <= 0.5
