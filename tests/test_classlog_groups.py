"""Consumer groups of the class log: the same contract in process, on Redis
and on Redis Cluster."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from liveclass.origin.classlog import (
    Backlog,
    ClassLog,
    GroupMissing,
    MemoryClassLog,
)
from liveclass.origin.classlog.redis import RedisClassLog
from liveclass.origin.contract import LogEvent

GROUP, ME = "origin", "reconciler"

MakeLog = Callable[[int], ClassLog]


@pytest.fixture(
    params=[
        "memory",
        pytest.param("single", marks=pytest.mark.redis),
        pytest.param("cluster", marks=pytest.mark.redis),
    ]
)
async def make_log(
    request: pytest.FixtureRequest, class_id: str
) -> AsyncIterator[MakeLog]:
    """Makes a class log keeping ``retention`` entries; closed after."""
    made: list[ClassLog] = []
    url = None
    if request.param != "memory":
        fixture = "redis_url" if request.param == "single" else "redis_cluster_url"
        url = request.getfixturevalue(fixture)

    def make(retention: int = 100_000) -> ClassLog:
        log: ClassLog
        if url is None:
            log = MemoryClassLog(retention)
        else:
            log = RedisClassLog.from_url(url, retention)
        made.append(log)
        return log

    yield make
    for log in made:
        if isinstance(log, RedisClassLog):
            # Only this test's own keys; the shared Redis is never flushed.
            async for key in log._redis.scan_iter(match=f"lc:{{{class_id}}}:*"):
                await log._redis.delete(key)
        await log.close()


def _events(n: int, prefix: str = "m") -> list[LogEvent]:
    return [
        LogEvent(type="chat.message", data={"text": f"{prefix}{i}"}) for i in range(n)
    ]


def _seqs(entries: list[LogEvent]) -> list[int]:
    return [entry.seq for entry in entries]


async def test_each_entry_is_delivered_once_and_pending_until_acked(
    make_log: MakeLog, class_id: str
) -> None:
    log = make_log()
    await log.append(class_id, _events(5))
    assert await log.create_group(class_id, GROUP, 0)
    assert not await log.create_group(class_id, GROUP, 3)  # exists: unchanged

    assert _seqs(await log.read_group(class_id, GROUP, ME, limit=3)) == [1, 2, 3]
    got = await log.read_group(class_id, GROUP, ME)
    assert _seqs(got) == [4, 5]
    assert [e.data["text"] for e in got] == ["m3", "m4"]
    assert await log.read_group(class_id, GROUP, ME) == []
    assert await log.backlog(class_id, GROUP) == Backlog(pending=5, undelivered=0)

    # A consumer that failed gets back what it did not acknowledge, in order.
    await log.ack(class_id, GROUP, [1, 2, 99])
    assert _seqs(await log.read_pending(class_id, GROUP, ME)) == [3, 4, 5]
    assert _seqs(await log.read_pending(class_id, GROUP, ME, limit=1)) == [3]
    await log.append(class_id, _events(2, "n"))
    assert await log.backlog(class_id, GROUP) == Backlog(pending=3, undelivered=2)
    await log.ack(class_id, GROUP, [3, 4, 5])
    assert await log.read_pending(class_id, GROUP, ME) == []
    assert (await log.backlog(class_id, GROUP)).total == 2


async def test_a_group_starts_after_the_entry_given(
    make_log: MakeLog, class_id: str
) -> None:
    log = make_log()
    assert await log.backlog(class_id, GROUP) == Backlog(pending=0, undelivered=0)
    await log.append(class_id, _events(5))
    assert await log.backlog(class_id, GROUP) == Backlog(pending=0, undelivered=5)
    await log.create_group(class_id, GROUP, 3)
    assert await log.backlog(class_id, GROUP) == Backlog(pending=0, undelivered=2)
    assert _seqs(await log.read_group(class_id, GROUP, ME)) == [4, 5]


async def test_a_group_made_before_any_entry_gets_them_all(
    make_log: MakeLog, class_id: str
) -> None:
    log = make_log()
    await log.create_group(class_id, GROUP, 0)
    assert await log.read_group(class_id, GROUP, ME) == []
    await log.append(class_id, _events(2))
    assert _seqs(await log.read_group(class_id, GROUP, ME)) == [1, 2]


async def test_read_group_waits_for_an_append(make_log: MakeLog, class_id: str) -> None:
    log = make_log()
    await log.create_group(class_id, GROUP, 0)
    assert await log.read_group(class_id, GROUP, ME, timeout=0.05) == []
    waiter = asyncio.create_task(log.read_group(class_id, GROUP, ME, timeout=5))
    await asyncio.sleep(0.05)
    await log.append(class_id, _events(2))
    assert _seqs(await asyncio.wait_for(waiter, 5)) == [1, 2]


async def test_a_missing_group_is_reported(make_log: MakeLog, class_id: str) -> None:
    log = make_log()
    await log.append(class_id, _events(1))
    with pytest.raises(GroupMissing):
        await log.read_group(class_id, GROUP, ME)
    with pytest.raises(GroupMissing):
        await log.read_pending(class_id, GROUP, ME)
    await log.ack(class_id, GROUP, [1])  # nothing to acknowledge: no error


async def test_entries_trimmed_while_pending_are_dropped(
    make_log: MakeLog, class_id: str
) -> None:
    log = make_log(10)
    await log.create_group(class_id, GROUP, 0)
    await log.append(class_id, _events(5))
    assert _seqs(await log.read_group(class_id, GROUP, ME)) == [1, 2, 3, 4, 5]
    # Redis trims whole nodes of about 100 entries: append well past them.
    for _ in range(30):
        await log.append(class_id, _events(10))

    # Trimmed before they were acknowledged: they can never be handled, and
    # must not block the pending entries after them.
    assert await log.read_pending(class_id, GROUP, ME) == []
    assert (await log.backlog(class_id, GROUP)).pending == 0
    # What is delivered next skips the trimmed stretch: a gap in the numbers.
    after = await log.read_group(class_id, GROUP, ME, limit=5)
    assert after[0].seq > 6
    assert _seqs(after) == list(range(after[0].seq, after[0].seq + 5))
