"""The class log on Redis Streams, for edges and origins on many hosts.

Each class has two keys, both carrying the class id as a hash tag so that
Redis Cluster keeps them in one slot: ``lc:{<class_id>}:seq``, the last
number given out, and ``lc:{<class_id>}:log``, a stream whose entry ids are
``<seq>-1``. The first part of an id is therefore the entry's number, and
reads by number are plain ``XRANGE``/``XREAD`` calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from liveclass.origin.classlog.base import (
    DEFAULT_RETENTION,
    ClassLog,
    ClassLogError,
    HistoryTrimmed,
)
from liveclass.origin.contract import LogEvent

_FIELD = "e"

# Numbers and stream ids are assigned in one script so that two writers can
# never interleave: the script runs atomically on the node holding the slot.
# The batch key (named by the batch's first entry id, unique per writer)
# makes a retried append idempotent.
_APPEND = """
local done = redis.call('GET', KEYS[3])
if done then
  return tonumber(done)
end
local n = #ARGV - 2
local last = redis.call('INCRBY', KEYS[1], n)
local first = last - n + 1
for i = 1, n do
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1],
             (first + i - 1) .. '-1', 'e', ARGV[i + 2])
end
redis.call('SET', KEYS[3], first, 'EX', ARGV[2])
return first
"""

BATCH_MEMORY_S = 3600
"""How long the log remembers a batch it appended. A writer whose append
timed out does not know whether it landed; retrying the same batch within
this time returns the numbers it was given instead of appending it twice."""


# Reads check for trimmed history against the head and the oldest entry; one
# script keeps the three answers consistent with each other (an append
# landing in between would pass for a gap), and scripts, unlike MULTI, work
# the same on Redis Cluster, where both keys share the class's slot.
_READ = """
local rows = redis.call('XRANGE', KEYS[2], ARGV[1], '+', 'COUNT', ARGV[2])
local head = redis.call('GET', KEYS[1])
local oldest = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
return {rows, head, oldest}
"""

CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
"""URL schemes that select Redis Cluster: ``redis+cluster://host:port``
names any node of the cluster."""


def _keys(class_id: str) -> tuple[str, str]:
    return f"lc:{{{class_id}}}:seq", f"lc:{{{class_id}}}:log"


def _batch_key(class_id: str, first_id: str) -> str:
    return f"lc:{{{class_id}}}:batch:{first_id}"


def _seq_of(stream_id: Any) -> int:
    text = stream_id.decode() if isinstance(stream_id, bytes) else stream_id
    return int(text.split("-", 1)[0])


class RedisClassLog(ClassLog):
    """A class log kept in Redis Streams."""

    def __init__(
        self,
        client: aioredis.Redis | RedisCluster,
        retention: int = DEFAULT_RETENTION,
    ) -> None:
        self._redis = client
        self._retention = retention
        self._append = client.register_script(_APPEND)
        self._read = client.register_script(_READ)

    @classmethod
    def from_url(cls, url: str, retention: int = DEFAULT_RETENTION) -> RedisClassLog:
        """Connect to the Redis at ``url``: ``redis://host:port/db`` for one
        server, ``redis+cluster://host:port`` for a Redis Cluster."""
        if url.startswith(CLUSTER_SCHEMES):
            plain = url.replace("+cluster", "", 1)
            return cls(RedisCluster.from_url(plain), retention)
        return cls(aioredis.from_url(url), retention)

    async def append(self, class_id: str, events: Sequence[LogEvent]) -> list[LogEvent]:
        if not events:
            return []
        payloads = [e.model_dump_json(exclude={"seq"}) for e in events]
        try:
            first = await self._append(
                keys=[*_keys(class_id), _batch_key(class_id, events[0].id)],
                args=[self._retention, BATCH_MEMORY_S, *payloads],
            )
        except RedisError as exc:
            raise ClassLogError(f"class {class_id}: append failed: {exc}") from exc
        first = int(first)
        return [e.model_copy(update={"seq": first + i}) for i, e in enumerate(events)]

    async def read(
        self, class_id: str, after: int, limit: int = 1000
    ) -> list[LogEvent]:
        seq_key, log_key = _keys(class_id)
        try:
            rows, head, oldest = await self._read(
                keys=[seq_key, log_key], args=[f"{after + 1}-0", limit]
            )
            if rows and _seq_of(rows[0][0]) == after + 1:
                return self._decode(rows)
            if rows:
                raise HistoryTrimmed(class_id, after, _seq_of(rows[0][0]))
            head = int(head) if head is not None else 0
            if head <= after:
                return []
            # Entries after ``after`` were given numbers but none is kept.
            first = _seq_of(oldest[0][0]) if oldest else head + 1
            raise HistoryTrimmed(class_id, after, first)
        except RedisError as exc:
            raise ClassLogError(f"class {class_id}: read failed: {exc}") from exc

    async def wait(
        self,
        class_id: str,
        after: int,
        timeout: float,
        limit: int = 1000,
    ) -> list[LogEvent]:
        entries = await self.read(class_id, after, limit)
        if entries:
            return entries
        _, log_key = _keys(class_id)
        try:
            # XREAD returns entries with ids above the one given: above
            # "<after>-1" is from number after + 1 on.
            found = await self._redis.xread(
                {log_key: f"{after}-1" if after else "0-0"},
                count=limit,
                block=max(1, int(timeout * 1000)),
            )
        except RedisError as exc:
            raise ClassLogError(f"class {class_id}: wait failed: {exc}") from exc
        if not found:
            return []
        # A writer may have trimmed in between; read checks for gaps.
        return await self.read(class_id, after, limit)

    async def head(self, class_id: str) -> int:
        seq_key, _ = _keys(class_id)
        try:
            value = await self._redis.get(seq_key)
        except RedisError as exc:
            raise ClassLogError(f"class {class_id}: head failed: {exc}") from exc
        return int(value) if value is not None else 0

    async def close(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()

    def _decode(self, rows: list[Any]) -> list[LogEvent]:
        out = []
        for stream_id, fields in rows:
            # XRANGE through a script answers fields as a flat list.
            raw: bytes = dict(zip(fields[::2], fields[1::2], strict=True))[
                _FIELD.encode()
            ]
            event = LogEvent.model_validate_json(raw)
            event.seq = _seq_of(stream_id)
            out.append(event)
        return out
