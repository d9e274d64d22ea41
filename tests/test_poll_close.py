"""The two-step close of a poll: votes edges hold at the close still count,
and every reader of the log (each edge, the origin) agrees on the result."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from liveclass.edge_node.batcher import Batcher
from liveclass.edge_node.room import CLOSE_GRACE_S, ClassRoom
from liveclass.edge_node.rules import ClassState
from liveclass.edge_node.rules.validate import (
    closing_entry,
    finalize_entry,
    flushed_entry,
)
from liveclass.origin.api.models import ClassInfo, ClassReport, ClassStatus
from liveclass.origin.classlog import MemoryClassLog
from liveclass.origin.contract import Audience, LogEvent
from liveclass.origin.reconcile import Reconciler
from liveclass.origin.store import Store

CLOSE_TS = 100.0


def opened() -> LogEvent:
    data = {"poll_id": "p1", "question": "Q?", "options": ["a", "b"]}
    return LogEvent(type="poll.opened", edge_id="edge-a", ts=10.0, data=data)


def votes(edge: str, *cast: tuple[str, int, float]) -> LogEvent:
    return LogEvent(
        type="poll.votes",
        edge_id=edge,
        audience=Audience.EDGES,
        data={"poll_id": "p1", "votes": [list(v) for v in cast]},
    )


def closed(*expected: str) -> LogEvent:
    entry = closing_entry("poll.closed", "poll_id", "p1", expected)
    entry.edge_id, entry.ts = "edge-a", CLOSE_TS
    return entry


def flushed(edge: str) -> LogEvent:
    return flushed_entry("poll", "p1", edge)


def fold_all(entries: Sequence[LogEvent]) -> list[LogEvent | None]:
    """Fold ``entries`` (numbered from 1) on a fresh edge state; what each
    delivers to members."""
    state = ClassState("c1")
    return [
        state.fold(e.model_copy(update={"seq": i})).deliver
        for i, e in enumerate(entries, 1)
    ]


def results(delivered: list[LogEvent | None]) -> list[dict[str, Any]]:
    return [d.data for d in delivered if d is not None and d.type == "poll.closed"]


async def reconciled(tmp_path: Path, entries: Sequence[LogEvent]) -> ClassReport:
    """The report the origin stores after reconciling ``entries``."""
    store = Store.open(f"sqlite+aiosqlite:///{tmp_path}/origin.db")
    log = MemoryClassLog()
    try:
        await store.migrate()
        info = ClassInfo(
            id="c1",
            title="Physics",
            status=ClassStatus.LIVE,
            max_members=100,
            created_at=1.0,
        )
        await store.create_class(info)
        await log.append("c1", list(entries))
        await Reconciler(store, log, "c1").drain()
        report = await store.report("c1")
        assert report is not None
        return report
    finally:
        await log.close()
        await store.close()


async def stored(tmp_path: Path, entries: Sequence[LogEvent]) -> dict[str, Any]:
    """The poll as the origin stores it after reconciling ``entries``."""
    [poll] = (await reconciled(tmp_path, entries)).polls
    return {"counts": poll.counts, "votes": poll.votes}


async def test_a_vote_held_on_a_second_edge_during_the_close_still_counts(
    tmp_path: Path,
) -> None:
    log = [
        opened(),
        votes("edge-a", ("ann", 0, 50.0)),
        closed("edge-a", "edge-b"),
        flushed("edge-a"),
        # Edge B took Bob's vote before the close, and held it for its tick.
        votes("edge-b", ("bob", 1, 99.0)),
        flushed("edge-b"),
    ]
    delivered = fold_all(log)
    # Members see nothing at the close, and the results at the last marker.
    assert delivered[2] is None and delivered[3] is None
    [result] = results(delivered)
    assert delivered[5] is not None and delivered[5].audience is Audience.ALL
    assert (result["counts"], result["votes"]) == ([1, 1], 2)
    assert await stored(tmp_path, log) == {"counts": [1, 1], "votes": 2}


async def test_a_dead_expected_edge_is_finalized_without(tmp_path: Path) -> None:
    log = [
        opened(),
        votes("edge-a", ("ann", 0, 50.0)),
        closed("edge-a", "edge-gone"),
        flushed("edge-a"),
        finalize_entry("poll", "p1"),
        # Too late: the poll is final.
        votes("edge-gone", ("bob", 1, 99.0)),
        flushed("edge-gone"),
        finalize_entry("poll", "p1"),
    ]
    delivered = fold_all(log)
    [result] = results(delivered)
    assert delivered[4] is not None and result["counts"] == [1, 0]
    assert await stored(tmp_path, log) == {"counts": [1, 0], "votes": 1}


async def test_a_vote_stamped_after_the_close_never_counts(tmp_path: Path) -> None:
    log = [
        opened(),
        closed("edge-a"),
        votes("edge-a", ("ann", 0, CLOSE_TS), ("bob", 1, CLOSE_TS + 0.01)),
        flushed("edge-a"),
    ]
    [result] = results(fold_all(log))
    assert result["counts"] == [1, 0]
    assert await stored(tmp_path, log) == {"counts": [1, 0], "votes": 1}


async def test_edges_that_sent_votes_are_expected_even_if_the_writer_missed_them(
    tmp_path: Path,
) -> None:
    log = [
        opened(),
        votes("edge-c", ("cat", 1, 50.0)),
        closed("edge-a"),
        flushed("edge-a"),  # not final: edge C sent votes, it may hold more
        votes("edge-c", ("dan", 1, 99.0)),
        flushed("edge-c"),
    ]
    delivered = fold_all(log)
    assert delivered[3] is None
    [result] = results(delivered)
    assert result["counts"] == [0, 2]
    assert await stored(tmp_path, log) == {"counts": [0, 2], "votes": 2}


def test_a_close_without_expected_edges_is_final_at_once() -> None:
    # From a writer that knows no second step, or the class's end.
    entry = closing_entry("poll.closed", "poll_id", "p1")
    delivered = fold_all([opened(), votes("edge-a", ("ann", 1, 50.0)), entry])
    assert delivered[2] is not None and delivered[2].data["counts"] == [0, 1]


async def until_head(log: MemoryClassLog, seq: int) -> None:
    for _ in range(200):
        if await log.head("c1") >= seq:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the log did not reach {seq}")


async def test_the_room_flushes_held_votes_before_its_marker_and_finalizes() -> None:
    log = MemoryClassLog()
    batcher = Batcher(log, tick_s=5.0)  # votes would wait for a long tick
    batcher.start()
    room = ClassRoom("c1", log, "edge-b", batcher.add)
    try:
        await log.append("c1", [opened()])
        await room.apply(await log.read("c1", 0))
        # A chat message leaves at once and starts the tick: the vote that
        # follows is held for it.
        batcher.add_now("c1", [LogEvent(type="chat.message", data={"text": "hi"})])
        await until_head(log, 2)
        batcher.add_now("c1", [votes("edge-b", ("bob", 1, 99.0))])
        await asyncio.sleep(0.05)
        assert batcher.held("c1") == 1
        close = closing_entry("poll.closed", "poll_id", "p1", ["edge-b", "edge-x"])
        close.ts = time.time()
        [close] = await log.append("c1", [close])
        await room.apply([close])
        await until_head(log, 5)
        entries = await log.read("c1", close.seq)
        assert [e.type for e in entries] == ["poll.votes", "poll.flushed"]
        await room.apply(entries)
        assert "p1" in room.state.polls.closing  # edge X has not flushed

        # Edge X is gone: after the grace, this edge finalizes.
        await room.tick(time.time())
        await room.tick(time.time() + CLOSE_GRACE_S + 0.1)
        await batcher.flush()
        [finalize] = await log.read("c1", 5)
        assert finalize.type == "poll.finalize"
        await room.apply([finalize])
        assert not room.state.polls.closing
    finally:
        await batcher.stop()
        await log.close()


async def test_a_question_closes_in_two_steps_too(tmp_path: Path) -> None:
    data = {
        "quiz_id": "q1",
        "question": "2+2?",
        "options": ["3", "4"],
        "correct": 1,
        "asked_at": 90.0,
        "duration_s": 20.0,
    }

    def answers(edge: str, *given: tuple[str, str, int, float]) -> LogEvent:
        return LogEvent(
            type="quiz.answers",
            edge_id=edge,
            audience=Audience.EDGES,
            data={"quiz_id": "q1", "answers": [list(a) for a in given]},
        )

    close = closing_entry("quiz.closed", "quiz_id", "q1", ["edge-a", "edge-b"])
    close.ts = CLOSE_TS
    log = [
        LogEvent(type="quiz.asked", edge_id="edge-a", ts=90.0, data=data),
        answers("edge-a", ("ann", "Ann", 1, 95.0)),
        close,
        flushed_entry("quiz", "q1", "edge-a"),
        # Bob answered on edge B before the close; Cat after it.
        answers("edge-b", ("bob", "Bob", 1, 99.0), ("cat", "Cat", 1, 101.0)),
        flushed_entry("quiz", "q1", "edge-b"),
    ]
    state = ClassState("c1")
    folded = [state.fold(e.model_copy(update={"seq": i})) for i, e in enumerate(log, 1)]
    assert folded[2].deliver is None and folded[3].deliver is None
    final = folded[5]
    assert final.deliver is not None and final.deliver.type == "quiz.closed"
    assert final.quiz_result is not None and set(final.quiz_result.points) == {
        "ann",
        "bob",
    }
    board = final.deliver.data["leaderboard"]
    assert [row["user_id"] for row in board] == ["ann", "bob"]

    [quiz] = (await reconciled(tmp_path, log)).quizzes
    assert quiz.leaderboard == board


def test_an_edge_of_several_processes_is_flushed_once_each_marker_is_in() -> None:
    # With --workers, each process holds its own members' votes.
    log = [
        opened(),
        closed("edge-a"),
        flushed_entry("poll", "p1", "edge-a", 0, 2),
        votes("edge-a", ("bob", 1, 99.0)),
        flushed_entry("poll", "p1", "edge-a", 1, 2),
    ]
    delivered = fold_all(log)
    assert delivered[2] is None
    [result] = results(delivered)
    assert result["counts"] == [0, 1]
