"""Draining an edge on purpose: its members move to other edges, no gap.

An operator drains an edge to take it down: with SIGTERM, or through the
origin's admin API (the edge hears of it in the answer to a heartbeat).
:class:`Drain` then, in order:

1. refuses new members with close code ``DRAINING`` (4010); the SDK tries
   the next candidate edge;
2. tells the origin at once (a heartbeat saying it drains), so routing
   stops offering this edge before its members ask where to go; meanwhile
   the batcher appends what members sent so far, so that it is in the
   class log before they resume elsewhere;
3. closes every member with ``DRAINING`` and a reason: the SDK resumes on
   another edge from the last number it saw, so nothing is missed or
   repeated;
4. waits for the connections to end, at most the drain timeout from the
   start, appending their ``member.left`` entries as they come.

Stopping the server afterwards is the owner's part; ``liveclass edge``
does it, then exits (see :meth:`~liveclass.edge_node.app.EdgeRunner.serve`).
A drained edge that is not stopped refuses everyone and appends nothing
more until it stops.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from liveclass.edge_node.batcher import Batcher
from liveclass.edge_node.node import EdgeNode

logger = logging.getLogger(__name__)


class Drain:
    """The drain of one edge; it runs at most once.

    ``announce`` tells the origin that the edge drains and returns whether
    the origin took it. ``timeout_s`` bounds the drain, except the batcher's
    last append, which is bounded on its own and never cut short (an append
    cut in flight could be lost or stored twice).
    """

    def __init__(
        self,
        node: EdgeNode,
        batcher: Batcher,
        announce: Callable[[], Awaitable[bool]],
        timeout_s: float,
    ) -> None:
        self.node = node
        self.batcher = batcher
        self.timeout_s = timeout_s
        self.finished = asyncio.Event()
        """Set once the drain is over: every member left, or time ran out."""
        self._announce = announce
        self._task: asyncio.Task[None] | None = None
        self._flushed: asyncio.Future[None] | None = None
        self._cancelled = False
        self._extra = {"edge_id": node.config.edge_id}

    @property
    def started(self) -> bool:
        """Whether the drain has begun."""
        return self._task is not None

    def start(self, why: str) -> None:
        """Begin draining, for ``why`` (it is logged); later calls, and
        calls after :meth:`cancel`, do nothing. Call it from the event loop.
        """
        if self._task is not None or self._cancelled:
            return
        self._task = asyncio.create_task(self._run(why), name="edge-drain")
        self._task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("drain failed", exc_info=task.exception(), extra=self._extra)

    def request(self) -> None:
        """The origin asked this edge to drain: begin, if not yet begun."""
        self.start("asked by the origin")

    async def cancel(self) -> None:
        """Stop a drain in progress now, and refuse to start one (the edge
        is stopping at once).

        Returns after the batcher's append in flight, if any, has ended.
        """
        self._cancelled = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._flushed is not None:
            await self._flushed

    async def _run(self, why: str) -> None:
        node = self.node
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self.timeout_s
        node.draining = True
        logger.info(
            "draining (%s): new members refused, %d to move within %.1f s",
            why,
            node.connections,
            self.timeout_s,
            extra=self._extra,
        )
        try:
            # Stopping the batcher appends all it holds without overlapping
            # its own append in flight; later entries are appended below.
            self._flushed = asyncio.ensure_future(self.batcher.stop())
            await self._tell_origin(deadline)
            await asyncio.shield(self._flushed)

            moved = node.move_members()
            logger.info(
                "asked %d members to move to other edges", moved, extra=self._extra
            )
            await self._wait_for_members(deadline)
        finally:
            self.finished.set()

        elapsed = loop.time() - started
        if node.connections:
            logger.warning(
                "drain timed out after %.1f s with %d members still connected; "
                "stopping anyway (they reconnect elsewhere on their own)",
                elapsed,
                node.connections,
                extra=self._extra,
            )
        else:
            logger.info("drained in %.2f s", elapsed, extra=self._extra)

    async def _tell_origin(self, deadline: float) -> None:
        try:
            async with asyncio.timeout_at(deadline):
                told = await self._announce()
        except TimeoutError:
            told = False
        if not told:
            logger.warning(
                "could not tell the origin that this edge drains: routing may "
                "offer it until its heartbeat times out (members sent here are "
                "refused and try their next edge)",
                extra=self._extra,
            )

    async def _wait_for_members(self, deadline: float) -> None:
        node = self.node
        loop = asyncio.get_running_loop()
        while True:
            node.member_left.clear()
            # The batcher's own task is stopped: this is the only appender.
            # Each member.left goes out as soon as it comes, to be logged
            # before the member's join on the next edge: the origin's
            # attendance closes, at a member.left, every session of that
            # member opened before it, on whichever edge.
            await self.batcher.flush()
            if not node.connections or loop.time() >= deadline:
                return
            try:
                async with asyncio.timeout_at(deadline):
                    await node.member_left.wait()
            except TimeoutError:
                pass
