"""A batch whose append timed out after Redis stored it is not stored twice."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from liveclass.edge_node.batcher import Batcher
from liveclass.origin.classlog import ClassLogError
from liveclass.origin.classlog.redis import RedisClassLog
from liveclass.origin.contract import LogEvent

pytestmark = pytest.mark.redis


class LandsThenFails(RedisClassLog):
    """Stores the first batch, then answers as if the reply was lost."""

    failed = False

    async def append(self, class_id: str, events: Sequence[LogEvent]) -> list[LogEvent]:
        stored = await super().append(class_id, events)
        if not self.failed:
            self.failed = True
            raise ClassLogError("Timeout reading from 127.0.0.1:6379")
        return stored


def _chat(text: str) -> LogEvent:
    return LogEvent(type="chat.message", data={"text": text})


async def test_retry_after_a_lost_reply_keeps_each_entry_once(
    redis_url: str, class_id: str
) -> None:
    log = LandsThenFails.from_url(redis_url)
    batcher = Batcher(log)
    try:
        batcher.add_now(class_id, [_chat("a"), _chat("b")])
        await batcher.flush()  # stored, but the edge sees an error
        assert batcher.backlog == 2

        batcher.add_now(class_id, [_chat("c")])  # arrives meanwhile
        await batcher.flush()  # the retry: recognised, not stored again
        await batcher.flush()  # then what arrived meanwhile
        assert batcher.backlog == 0

        texts = [e.data["text"] for e in await log.read(class_id, 0)]
        assert texts == ["a", "b", "c"]
    finally:
        async for key in log._redis.scan_iter(match=f"lc:{{{class_id}}}:*"):
            await log._redis.delete(key)
        await log.close()
