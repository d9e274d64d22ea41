"""The in-process class log, the embedded default.

Every edge and the origin of one process share one instance. It keeps the
last :data:`~liveclass.origin.classlog.base.DEFAULT_RETENTION` entries per
class in memory. Its consumer groups behave like those of Redis Streams
(delivered once, pending until acknowledged, trimmed without regard to
them), but they live and die with the process, like the entries.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence

from liveclass.origin.classlog.base import (
    DEFAULT_RETENTION,
    Backlog,
    ClassLog,
    GroupMissing,
    HistoryTrimmed,
)
from liveclass.origin.contract import LogEvent


class _Group:
    __slots__ = ("delivered", "pending")

    def __init__(self, after: int) -> None:
        self.delivered = after
        # Per consumer, the pending numbers in delivery order (a dict keeps
        # insertion order and removes in O(1)).
        self.pending: dict[str, dict[int, None]] = {}


class _Stream:
    __slots__ = ("changed", "entries", "groups", "head")

    def __init__(self, retention: int) -> None:
        self.entries: deque[LogEvent] = deque(maxlen=retention)
        self.head = 0
        self.changed = asyncio.Event()
        self.groups: dict[str, _Group] = {}

    def entry(self, seq: int) -> LogEvent | None:
        """The entry numbered ``seq``, or None if it is trimmed or not
        appended yet."""
        if not self.entries or not self.entries[0].seq <= seq <= self.head:
            return None
        return self.entries[seq - self.entries[0].seq]


class MemoryClassLog(ClassLog):
    """A class log held in this process's memory."""

    def __init__(self, retention: int = DEFAULT_RETENTION) -> None:
        self._retention = retention
        self._streams: dict[str, _Stream] = {}

    def _stream(self, class_id: str) -> _Stream:
        stream = self._streams.get(class_id)
        if stream is None:
            stream = self._streams[class_id] = _Stream(self._retention)
        return stream

    async def append(self, class_id: str, events: Sequence[LogEvent]) -> list[LogEvent]:
        stream = self._stream(class_id)
        numbered = []
        for event in events:
            stream.head += 1
            entry = event.model_copy(update={"seq": stream.head})
            stream.entries.append(entry)
            numbered.append(entry)
        if numbered:
            # Wake every waiting reader, then arm the event for the next append.
            stream.changed.set()
            stream.changed = asyncio.Event()
        return numbered

    async def read(
        self, class_id: str, after: int, limit: int = 1000
    ) -> list[LogEvent]:
        stream = self._stream(class_id)
        if after >= stream.head or not stream.entries:
            return []
        first = stream.entries[0].seq
        if after + 1 < first:
            raise HistoryTrimmed(class_id, after, first)
        start = after + 1 - first
        stop = min(len(stream.entries), start + limit)
        return [stream.entries[i] for i in range(start, stop)]

    async def wait(
        self, class_id: str, after: int, timeout: float, limit: int = 1000
    ) -> list[LogEvent]:
        stream = self._stream(class_id)
        if stream.head <= after:
            changed = stream.changed
            try:
                await asyncio.wait_for(changed.wait(), timeout)
            except TimeoutError:
                return []
        return await self.read(class_id, after, limit)

    async def head(self, class_id: str) -> int:
        return self._stream(class_id).head

    async def create_group(self, class_id: str, group: str, after: int) -> bool:
        stream = self._stream(class_id)
        if group in stream.groups:
            return False
        stream.groups[group] = _Group(after)
        return True

    async def read_group(
        self,
        class_id: str,
        group: str,
        consumer: str,
        limit: int = 1000,
        timeout: float = 0.0,
    ) -> list[LogEvent]:
        stream = self._stream(class_id)
        found = self._group(stream, class_id, group)
        if stream.head <= found.delivered and timeout > 0:
            try:
                await asyncio.wait_for(stream.changed.wait(), timeout)
            except TimeoutError:
                return []
        if stream.head <= found.delivered or not stream.entries:
            return []
        # Like Redis, skip what was trimmed before it was delivered.
        first = max(found.delivered + 1, stream.entries[0].seq)
        start = first - stream.entries[0].seq
        stop = min(len(stream.entries), start + limit)
        entries = [stream.entries[i] for i in range(start, stop)]
        found.delivered = entries[-1].seq
        mine = found.pending.setdefault(consumer, {})
        mine.update(dict.fromkeys(entry.seq for entry in entries))
        return entries

    async def read_pending(
        self, class_id: str, group: str, consumer: str, limit: int = 1000
    ) -> list[LogEvent]:
        stream = self._stream(class_id)
        mine = self._group(stream, class_id, group).pending.get(consumer, {})
        entries = []
        for seq in list(mine):
            entry = stream.entry(seq)
            if entry is None:
                del mine[seq]  # trimmed while pending: it can never come back
                continue
            entries.append(entry)
            if len(entries) == limit:
                break
        return entries

    async def ack(self, class_id: str, group: str, seqs: Sequence[int]) -> None:
        found = self._stream(class_id).groups.get(group)
        if found is None:
            return
        for pending in found.pending.values():
            for seq in seqs:
                pending.pop(seq, None)

    async def backlog(self, class_id: str, group: str) -> Backlog:
        stream = self._stream(class_id)
        found = stream.groups.get(group)
        if found is None:
            return Backlog(pending=0, undelivered=stream.head)
        pending = sum(len(seqs) for seqs in found.pending.values())
        return Backlog(pending, max(0, stream.head - found.delivered))

    @staticmethod
    def _group(stream: _Stream, class_id: str, group: str) -> _Group:
        found = stream.groups.get(group)
        if found is None:
            raise GroupMissing(class_id, group)
        return found
