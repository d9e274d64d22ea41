"""The class log on Redis Streams, for edges and origins on many hosts.

Each class has two keys, both carrying the class id as a hash tag so that
Redis Cluster keeps them in one slot: ``lc:{<class_id>}:seq``, the last
number given out, and ``lc:{<class_id>}:log``, a stream whose entry ids are
``<seq>-1``. The first part of an id is therefore the entry's number, and
reads by number are plain ``XRANGE``/``XREAD`` calls.

Consumer groups are those of the stream (``XREADGROUP``, ``XACK``): Redis
keeps their positions and pending entries with the stream, in the same
slot, and persists them as it persists the stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError, ResponseError

from liveclass.origin.classlog.base import (
    DEFAULT_RETENTION,
    Backlog,
    ClassLog,
    ClassLogError,
    GroupMissing,
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

SOCKET_TIMEOUT_S = 5.0
"""How long a connection, or any reply, may take before the call fails with
:class:`ClassLogError`. Without it a paused or unreachable Redis holds an
append or a read forever. Blocking reads must block for less."""


def _keys(class_id: str) -> tuple[str, str]:
    return f"lc:{{{class_id}}}:seq", f"lc:{{{class_id}}}:log"


def _batch_key(class_id: str, first_id: str) -> str:
    return f"lc:{{{class_id}}}:batch:{first_id}"


def _seq_of(stream_id: Any) -> int:
    text = stream_id.decode() if isinstance(stream_id, bytes) else stream_id
    return int(text.split("-", 1)[0])


def _stream_id(seq: int) -> str:
    return f"{seq}-1" if seq > 0 else "0-0"


_FAILURES = (RedisError, RedisClusterException)
"""What a call may raise when Redis does not answer. The cluster client's
"no node reachable" is not a RedisError, and must not end a class room."""


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
        timeouts = {
            "socket_timeout": SOCKET_TIMEOUT_S,
            "socket_connect_timeout": SOCKET_TIMEOUT_S,
        }
        if url.startswith(CLUSTER_SCHEMES):
            plain = url.replace("+cluster", "", 1)
            return cls(RedisCluster.from_url(plain, **timeouts), retention)
        return cls(aioredis.from_url(url, **timeouts), retention)

    async def append(self, class_id: str, events: Sequence[LogEvent]) -> list[LogEvent]:
        if not events:
            return []
        payloads = [e.model_dump_json(exclude={"seq"}) for e in events]
        try:
            first = await self._append(
                keys=[*_keys(class_id), _batch_key(class_id, events[0].id)],
                args=[self._retention, BATCH_MEMORY_S, *payloads],
            )
        except _FAILURES as exc:
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
        except _FAILURES as exc:
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
        except _FAILURES as exc:
            raise ClassLogError(f"class {class_id}: wait failed: {exc}") from exc
        if not found:
            return []
        # A writer may have trimmed in between; read checks for gaps.
        return await self.read(class_id, after, limit)

    async def head(self, class_id: str) -> int:
        seq_key, _ = _keys(class_id)
        try:
            value = await self._redis.get(seq_key)
        except _FAILURES as exc:
            raise ClassLogError(f"class {class_id}: head failed: {exc}") from exc
        return int(value) if value is not None else 0

    async def create_group(self, class_id: str, group: str, after: int) -> bool:
        _, log_key = _keys(class_id)
        try:
            # MKSTREAM: a class may have no entry yet.
            await self._redis.xgroup_create(
                log_key, group, id=_stream_id(after), mkstream=True
            )
        except ResponseError as exc:
            if str(exc).startswith("BUSYGROUP"):
                return False
            raise ClassLogError(f"class {class_id}: group failed: {exc}") from exc
        except _FAILURES as exc:
            raise ClassLogError(f"class {class_id}: group failed: {exc}") from exc
        return True

    async def read_group(
        self,
        class_id: str,
        group: str,
        consumer: str,
        limit: int = 1000,
        timeout: float = 0.0,
    ) -> list[LogEvent]:
        block = max(1, int(timeout * 1000)) if timeout > 0 else None
        rows = await self._read_group(class_id, group, consumer, ">", limit, block)
        return [self._entry(stream_id, fields) for stream_id, fields in rows]

    async def read_pending(
        self, class_id: str, group: str, consumer: str, limit: int = 1000
    ) -> list[LogEvent]:
        while True:
            # Id 0: this consumer's own pending entries, from the oldest.
            rows = await self._read_group(class_id, group, consumer, "0", limit)
            gone = [_seq_of(stream_id) for stream_id, fields in rows if not fields]
            if gone:
                # Trimmed while pending: Redis still lists it, without fields.
                await self.ack(class_id, group, gone)
            live = [self._entry(i, fields) for i, fields in rows if fields]
            if live or len(rows) < limit:
                return live

    async def ack(self, class_id: str, group: str, seqs: Sequence[int]) -> None:
        if not seqs:
            return
        _, log_key = _keys(class_id)
        try:
            await self._redis.xack(log_key, group, *map(_stream_id, seqs))
        except _FAILURES as exc:
            raise ClassLogError(f"class {class_id}: ack failed: {exc}") from exc

    async def backlog(self, class_id: str, group: str) -> Backlog:
        seq_key, log_key = _keys(class_id)
        try:
            head = int(await self._redis.get(seq_key) or 0)
            try:
                groups = await self._redis.xinfo_groups(log_key)
            except ResponseError:
                groups = []  # no stream yet
        except _FAILURES as exc:
            raise ClassLogError(f"class {class_id}: backlog failed: {exc}") from exc
        for found in groups:
            name = found["name"]
            if (name.decode() if isinstance(name, bytes) else name) == group:
                # The group's own "lag" is unknown after trimming or when it
                # was created mid-stream; the numbers in the ids always tell.
                delivered = _seq_of(found["last-delivered-id"])
                undelivered = max(0, head - delivered)
                return Backlog(int(found["pending"]), undelivered)
        return Backlog(pending=0, undelivered=head)

    async def close(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()

    async def _read_group(
        self,
        class_id: str,
        group: str,
        consumer: str,
        start: str,
        limit: int,
        block: int | None = None,
    ) -> list[Any]:
        _, log_key = _keys(class_id)
        try:
            # Typed as either protocol's shape; the client speaks RESP2.
            found: Any = await self._redis.xreadgroup(
                group, consumer, {log_key: start}, count=limit, block=block
            )
        except ResponseError as exc:
            if str(exc).startswith("NOGROUP"):
                raise GroupMissing(class_id, group) from exc
            raise ClassLogError(f"class {class_id}: read failed: {exc}") from exc
        except _FAILURES as exc:
            raise ClassLogError(f"class {class_id}: read failed: {exc}") from exc
        if not found:
            return []
        # One stream asked, so one answer: [[key, [(id, fields), ...]]].
        rows: list[Any] = found[0][1]
        return rows

    def _decode(self, rows: list[Any]) -> list[LogEvent]:
        # XRANGE through a script answers fields as a flat list.
        return [
            self._entry(stream_id, dict(zip(fields[::2], fields[1::2], strict=True)))
            for stream_id, fields in rows
        ]

    @staticmethod
    def _entry(stream_id: Any, fields: dict[bytes, bytes]) -> LogEvent:
        event = LogEvent.model_validate_json(fields[_FIELD.encode()])
        event.seq = _seq_of(stream_id)
        return event
