"""The in-process class log, the embedded default.

Every edge and the origin of one process share one instance. It keeps the
last :data:`~liveclass.origin.classlog.base.DEFAULT_RETENTION` entries per
class in memory.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence

from liveclass.origin.classlog.base import DEFAULT_RETENTION, ClassLog, HistoryTrimmed
from liveclass.origin.contract import LogEvent


class _Stream:
    __slots__ = ("changed", "entries", "head")

    def __init__(self, retention: int) -> None:
        self.entries: deque[LogEvent] = deque(maxlen=retention)
        self.head = 0
        self.changed = asyncio.Event()


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
