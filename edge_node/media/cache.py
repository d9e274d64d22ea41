"""The segment cache of an edge that is not the ingest edge.

However many members ask for a segment at once, the edge fetches it upstream
once (single flight): the first request starts the fetch, the others await
the same task. Entries are bounded by total bytes, least recently used first
out. Entries may carry a freshness limit, for live playlists.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass


@dataclass
class _Entry:
    body: bytes
    fetched: float
    max_age: float | None


class SingleFlightCache:
    """A byte-bounded LRU cache whose misses are fetched once.

    ``upstream_fetches`` counts the fetches started, for metrics and tests.
    """

    def __init__(self, max_bytes: int = 256 * 1024 * 1024) -> None:
        self._max_bytes = max_bytes
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._bytes = 0
        self._inflight: dict[str, asyncio.Task[bytes]] = {}
        self.upstream_fetches = 0

    @property
    def size_bytes(self) -> int:
        """Bytes held."""
        return self._bytes

    async def get(
        self,
        key: str,
        fetch: Callable[[], Awaitable[bytes]],
        max_age: float | None = None,
    ) -> bytes:
        """Return the body for ``key``, calling ``fetch`` if none is fresh.

        ``max_age`` (seconds) makes an entry stale that long after it was
        fetched. Raises whatever ``fetch`` raises, to every waiter; a failed
        fetch is not cached.
        """
        entry = self._entries.get(key)
        if entry is not None:
            age = time.monotonic() - entry.fetched
            if entry.max_age is None or age < entry.max_age:
                self._entries.move_to_end(key)
                return entry.body
        task = self._inflight.get(key)
        if task is None:
            self.upstream_fetches += 1
            task = asyncio.create_task(self._fill(key, fetch, max_age))
            self._inflight[key] = task
            task.add_done_callback(lambda _t: self._inflight.pop(key, None))
        # shield: one waiter giving up (a member hanging up) must not cancel
        # the fetch the others wait for.
        return await asyncio.shield(task)

    async def _fill(
        self, key: str, fetch: Callable[[], Awaitable[bytes]], max_age: float | None
    ) -> bytes:
        body = await fetch()
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= len(old.body)
        if len(body) <= self._max_bytes:
            self._entries[key] = _Entry(body, time.monotonic(), max_age)
            self._bytes += len(body)
            while self._bytes > self._max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= len(evicted.body)
        return body

    async def close(self) -> None:
        """Cancel the fetches in flight and drop every entry."""
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._entries.clear()
        self._bytes = 0
