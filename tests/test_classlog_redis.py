"""The Redis Streams class log against the shared Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from liveclass.origin.classlog import ClassLogError, HistoryTrimmed
from liveclass.origin.classlog.redis import RedisClassLog
from liveclass.origin.contract import LogEvent

pytestmark = pytest.mark.redis


@pytest.fixture(params=["single", "cluster"])
async def rlog(request: pytest.FixtureRequest) -> AsyncIterator[RedisClassLog]:
    """The log on the shared Redis, and on a local three-node Cluster."""
    fixture = "redis_url" if request.param == "single" else "redis_cluster_url"
    log = RedisClassLog.from_url(request.getfixturevalue(fixture))
    yield log
    await log.close()


async def _cleanup(log: RedisClassLog, class_id: str) -> None:
    # Only this test's own keys; the shared Redis is never flushed.
    async for key in log._redis.scan_iter(match=f"lc:{{{class_id}}}:*"):
        await log._redis.delete(key)


def _events(n: int, prefix: str = "m") -> list[LogEvent]:
    return [
        LogEvent(type="chat.message", data={"text": f"{prefix}{i}"}) for i in range(n)
    ]


async def test_append_numbers_and_read(rlog: RedisClassLog, class_id: str) -> None:
    try:
        assert await rlog.head(class_id) == 0
        assert await rlog.read(class_id, 0) == []
        first = await rlog.append(class_id, _events(3))
        assert [e.seq for e in first] == [1, 2, 3]
        second = await rlog.append(class_id, _events(2, "n"))
        assert [e.seq for e in second] == [4, 5]
        assert await rlog.head(class_id) == 5

        got = await rlog.read(class_id, 2)
        assert [e.seq for e in got] == [3, 4, 5]
        assert [e.data["text"] for e in got] == ["m2", "n0", "n1"]
        assert got[0].id == first[2].id
        assert [e.seq for e in await rlog.read(class_id, 0, limit=2)] == [1, 2]
        assert await rlog.read(class_id, 5) == []
        ids = await rlog._redis.xrange(f"lc:{{{class_id}}}:log", "-", "+")
        assert [i for i, _ in ids][:2] == [b"1-1", b"2-1"]
    finally:
        await _cleanup(rlog, class_id)


async def test_a_retried_batch_is_appended_once(
    rlog: RedisClassLog, class_id: str
) -> None:
    # A writer whose append timed out cannot know whether it landed, so it
    # sends the same batch again: the log must not hold it twice.
    try:
        batch = _events(3)
        first = await rlog.append(class_id, batch)
        again = await rlog.append(class_id, batch)
        assert [e.seq for e in again] == [e.seq for e in first] == [1, 2, 3]
        assert await rlog.head(class_id) == 3
        assert [e.seq for e in await rlog.append(class_id, _events(1))] == [4]
    finally:
        await _cleanup(rlog, class_id)


async def test_wait_blocks_until_an_append(rlog: RedisClassLog, class_id: str) -> None:
    try:
        assert await rlog.wait(class_id, 0, timeout=0.05) == []
        waiter = asyncio.create_task(rlog.wait(class_id, 0, timeout=5))
        await asyncio.sleep(0.05)
        await rlog.append(class_id, _events(2))
        got = await asyncio.wait_for(waiter, 5)
        assert [e.seq for e in got] == [1, 2]
        later = asyncio.create_task(rlog.wait(class_id, 2, timeout=5))
        await asyncio.sleep(0.05)
        await rlog.append(class_id, _events(1))
        assert [e.seq for e in await asyncio.wait_for(later, 5)] == [3]
    finally:
        await _cleanup(rlog, class_id)


async def test_concurrent_writers_get_distinct_numbers(
    rlog: RedisClassLog, class_id: str
) -> None:
    try:
        results = await asyncio.gather(
            *(rlog.append(class_id, _events(3, f"w{w}-")) for w in range(5))
        )
        seqs = sorted(e.seq for batch in results for e in batch)
        assert seqs == list(range(1, 16))
        for batch in results:  # each batch is contiguous
            assert [e.seq for e in batch] == list(range(batch[0].seq, batch[0].seq + 3))
    finally:
        await _cleanup(rlog, class_id)


async def test_trimmed_history_is_reported(redis_url: str, class_id: str) -> None:
    log = RedisClassLog.from_url(redis_url, retention=10)
    try:
        for _ in range(30):
            await log.append(class_id, _events(10))
        with pytest.raises(HistoryTrimmed) as info:
            await log.read(class_id, 0)
        assert info.value.first > 1
        kept = await log.read(class_id, info.value.first - 1)
        assert kept[0].seq == info.value.first and kept[-1].seq == 300
    finally:
        await _cleanup(log, class_id)
        await log.close()


async def test_connection_errors_become_class_log_errors(class_id: str) -> None:
    from conftest import free_port

    log = RedisClassLog.from_url(f"redis://127.0.0.1:{free_port()}/0")
    try:
        with pytest.raises(ClassLogError):
            await log.append(class_id, _events(1))
        with pytest.raises(ClassLogError):
            await log.read(class_id, 0)
    finally:
        await log.close()
