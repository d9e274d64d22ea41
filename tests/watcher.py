"""An SDK classroom whose events a test keeps as they arrive."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from liveclass.sdk.client import Classroom
from liveclass.sdk.events import ClassEvent


class Watcher:
    """Reads ``room.events()`` in a task of its own; :meth:`_keep`, which
    subclasses define, keeps what the test needs of each event, and
    :meth:`until` waits for a condition on what was kept."""

    def __init__(self, room: Classroom) -> None:
        self.room = room
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._listen(), name="member")

    @property
    def user_id(self) -> str:
        """Who this member is."""
        return self.room.member.user_id

    async def _listen(self) -> None:
        async for event in self.room.events():
            self._keep(event)
            self._changed.set()
            self._changed = asyncio.Event()

    def _keep(self, event: ClassEvent) -> None:
        raise NotImplementedError

    async def until(self, done: Callable[[], bool], wait_s: float = 10.0) -> None:
        """Return once ``done()`` holds; TimeoutError after ``wait_s``.

        ``done`` is checked again at each event this member receives, so it
        must depend on what this member received, not on another member.
        """
        async with asyncio.timeout(wait_s):
            while not done():
                await self._changed.wait()
