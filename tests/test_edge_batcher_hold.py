"""The batcher while the class log does not answer: it holds, shows, bounds,
and then appends everything once, in order."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import pytest

from liveclass.edge_node import batcher as batcher_module
from liveclass.edge_node.batcher import Batcher
from liveclass.origin.classlog import ClassLogError, MemoryClassLog
from liveclass.origin.contract import LogEvent


class GatedLog(MemoryClassLog):
    """A log that can be paused (appends wait, as on a frozen Redis) or down
    (appends fail at once, as when Redis refuses connections)."""

    def __init__(self) -> None:
        super().__init__()
        self.open = asyncio.Event()
        self.open.set()
        self.down = False
        self.sizes: list[int] = []

    async def append(self, class_id: str, events: Sequence[LogEvent]) -> list[LogEvent]:
        await self.open.wait()
        if self.down:
            raise ClassLogError("connection refused")
        self.sizes.append(len(events))
        return await super().append(class_id, events)


def chat(text: str) -> LogEvent:
    return LogEvent(type="chat.message", data={"text": text})


def vote(user: str) -> LogEvent:
    return LogEvent(type="poll.votes", data={"poll_id": "p", "votes": [[user, 0, 0]]})


@pytest.fixture(autouse=True)
def quick_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batcher_module, "HOLD_AFTER_S", 0.05)


async def until(condition: Callable[[], bool], wait_s: float = 3.0) -> None:
    """Return once ``condition()`` holds; fail after ``wait_s``."""
    for _ in range(int(wait_s / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"not within {wait_s} s")


async def test_a_paused_log_holds_shows_once_then_appends_in_order() -> None:
    log = GatedLog()
    shown: list[tuple[str, str]] = []
    batcher = Batcher(log, on_held=lambda c, es: shown.extend((c, e.id) for e in es))
    batcher.start()
    try:
        log.open.clear()
        first = [chat("a"), vote("u1"), chat("b")]
        batcher.add_now("c1", first)
        await until(lambda: batcher.held_classes == 1)
        # The chat in flight is shown; the vote is no one's to see yet.
        assert shown == [("c1", first[0].id), ("c1", first[2].id)]
        later = chat("c")
        batcher.add_now("c1", [later, vote("u2")])
        assert shown[-1] == ("c1", later.id)  # at once, while held
        assert batcher.backlog == 5 and batcher.held("c1") == 5
        assert batcher.held("other") == 0

        log.open.set()
        await until(lambda: batcher.backlog == 0)
        assert batcher.held_classes == 0
        entries = await log.read("c1", 0)
        texts = [e.data.get("text") for e in entries if e.type == "chat.message"]
        assert texts == ["a", "b", "c"]
        assert len(shown) == 3  # each once
    finally:
        await batcher.stop()


async def test_failed_appends_are_retried_unchanged_with_a_backoff() -> None:
    log = GatedLog()
    batcher = Batcher(log)
    batcher.start()
    try:
        log.down = True
        batcher.add_now("c1", [chat("a")])
        await asyncio.sleep(0.5)
        # From 0.1 s doubling: a handful of tries, not one per tick.
        assert 2 <= batcher.append_errors <= 4
        batcher.add_now("c1", [chat("b")])
        log.down = False
        await until(lambda: batcher.backlog == 0)
        assert log.sizes[0] == 1  # the failed batch, alone and as it was
        texts = [e.data["text"] for e in await log.read("c1", 0)]
        assert texts == ["a", "b"]
    finally:
        await batcher.stop()


async def test_the_bound_refuses_nothing_itself_but_says_full() -> None:
    log = GatedLog()
    batcher = Batcher(log, max_pending=3)
    batcher.start()
    try:
        log.down = True
        batcher.add_now("c1", [chat(str(n)) for n in range(3)])
        assert batcher.full("c1") and not batcher.full("c2")
        batcher.add_now("c1", [chat("over")])  # a leave, say: never dropped
        assert batcher.held("c1") == 4
        log.down = False
        await until(lambda: batcher.backlog == 0)
        assert not batcher.full("c1")
        assert len(await log.read("c1", 0)) == 4
    finally:
        await batcher.stop()


async def test_a_backlog_goes_out_in_bounded_appends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(batcher_module, "MAX_APPEND", 10)
    log = GatedLog()
    batcher = Batcher(log)
    log.down = True
    batcher.add_now("c1", [chat("first")])
    await batcher.flush()  # fails: "first" is kept to be retried alone
    batcher.add_now("c1", [chat(str(n)) for n in range(35)])
    log.down = False
    await batcher.flush()  # the retry
    await batcher.flush()  # the rest, ten at a time
    assert log.sizes == [1, 10, 10, 10, 5]
    texts = [e.data["text"] for e in await log.read("c1", 0)]
    assert texts == ["first", *map(str, range(35))]
    assert batcher.backlog == 0
