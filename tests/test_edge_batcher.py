"""When the batcher appends: entries members see at once, votes per tick."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from liveclass.edge_node.batcher import Batcher
from liveclass.origin.classlog import MemoryClassLog
from liveclass.origin.contract import LogEvent


class CountingLog(MemoryClassLog):
    """Records when each append happened and how many entries it held."""

    def __init__(self) -> None:
        super().__init__()
        self.appends: list[tuple[float, int]] = []

    async def append(self, class_id: str, events: Sequence[LogEvent]) -> list[LogEvent]:
        self.appends.append((time.monotonic(), len(events)))
        return await super().append(class_id, events)


def vote(user: str) -> LogEvent:
    return LogEvent(
        type="poll.votes", data={"poll_id": "p1", "votes": [{"user": user, "o": 0}]}
    )


def chat(text: str) -> LogEvent:
    return LogEvent(type="chat.message", data={"text": text})


async def test_chat_leaves_without_waiting_for_the_tick() -> None:
    log = CountingLog()
    batcher = Batcher(log, tick_s=0.5)
    batcher.start()
    try:
        batcher.add_now("c1", [vote("a")])  # starts a tick
        await asyncio.sleep(0.01)
        sent = time.monotonic()
        batcher.add_now("c1", [chat("hi")])
        for _ in range(100):
            if await log.head("c1") >= 2:
                break
            await asyncio.sleep(0.005)
        assert await log.head("c1") >= 2
        assert log.appends[-1][0] - sent < 0.2  # far sooner than the tick
    finally:
        await batcher.stop()


async def test_votes_of_one_tick_go_in_one_append() -> None:
    log = CountingLog()
    batcher = Batcher(log, tick_s=0.2)
    batcher.start()
    try:
        batcher.add_now("c1", [vote("first")])
        await asyncio.sleep(0.05)  # the first append, at once
        for i in range(300):
            batcher.add_now("c1", [vote(f"u{i}")])
            if i % 30 == 0:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)
        # One merged entry per tick: 300 votes over ~0.1 s in one or two.
        assert len(log.appends) <= 3
        entries = await log.read("c1", 0, 100)
        votes = [v for e in entries for v in e.data["votes"]]
        assert len(votes) == 301
    finally:
        await batcher.stop()
