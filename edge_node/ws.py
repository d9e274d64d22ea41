"""The member endpoint over aiohttp WebSockets: ``GET /v1/ws``.

A thin adapter: it turns a socket into a :class:`WsSink` and messages into
calls on the :class:`~liveclass.edge_node.node.EdgeNode`. The later
high-density server replaces this module and keeps the rest.
"""

from __future__ import annotations

import logging
from collections import deque

from aiohttp import WSMsgType, web

from liveclass.edge_node.node import Admission, EdgeNode, Refusal, too_big
from liveclass.sdk.protocol import MAX_FRAME_BYTES, CloseCode, Member

logger = logging.getLogger(__name__)

MAX_QUEUED_FRAMES = 256
"""Frames one connection may have waiting before it is closed as too slow."""

MAX_QUEUED_BYTES = 4 * 1024 * 1024
"""Bytes one connection may have waiting before it is closed as too slow."""


class WsSink:
    """One member's WebSocket with its bounded send queue.

    Idle connections hold no task: a drain task exists only while frames
    are waiting to be written.
    """

    __slots__ = ("_bytes", "_closing", "_drainer", "_node", "_queue", "member", "ws")

    def __init__(self, member: Member, ws: web.WebSocketResponse, node: EdgeNode):
        self.member = member
        self.ws = ws
        self._node = node
        self._queue: deque[str] = deque()
        self._bytes = 0
        self._drainer: object | None = None
        self._closing: tuple[int, str] | None = None

    @property
    def closing(self) -> bool:
        """Whether a close was asked for; later messages are ignored."""
        return self._closing is not None

    def offer(self, data: str) -> bool:
        """Queue one frame; False when the queue is full (the member is slow)."""
        if self._closing is not None:
            return True
        if (
            len(self._queue) >= MAX_QUEUED_FRAMES
            or self._bytes + len(data) > MAX_QUEUED_BYTES
        ):
            return False
        self._queue.append(data)
        self._bytes += len(data)
        self._kick()
        return True

    def close(self, code: int, reason: str) -> None:
        """Close after the queued frames (at once, dropping them, if too slow)."""
        if self._closing is not None:
            return
        self._closing = (code, reason)
        self._node.metrics.closes[code] += 1
        if code == CloseCode.TOO_SLOW:
            self._queue.clear()
            self._bytes = 0
        self._kick()

    def _kick(self) -> None:
        if self._drainer is None:
            self._drainer = self._node.spawn(self._drain())

    async def _drain(self) -> None:
        try:
            while self._queue:
                data = self._queue.popleft()
                self._bytes -= len(data)
                await self.ws.send_str(data)
            if self._closing is not None:
                code, reason = self._closing
                await self.ws.close(code=code, message=reason.encode()[:120])
        except (ConnectionError, RuntimeError):
            # The peer is gone; the handler notices and cleans up.
            self._queue.clear()
        finally:
            self._drainer = None


async def _refuse(ws: web.WebSocketResponse, node: EdgeNode, refusal: Refusal) -> None:
    node.metrics.closes[refusal.code] += 1
    await ws.close(code=refusal.code, message=refusal.reason.encode()[:120])


async def handle_ws(request: web.Request) -> web.WebSocketResponse:
    """Serve one member connection from admission to close."""
    node: EdgeNode = request.app[NODE_KEY]
    # aiohttp itself closes messages far over the limit (1009); the exact
    # limit is checked below so the reason names it.
    # No per-message deflate: its zlib state costs far more memory per
    # connection than the frames it would save. A short close timeout keeps
    # a peer that ignores the close handshake from holding a task.
    ws = web.WebSocketResponse(
        max_msg_size=4 * MAX_FRAME_BYTES,
        heartbeat=30.0,
        compress=False,
        timeout=2.0,
    )
    await ws.prepare(request)

    admission = await node.admit(request.query)
    if isinstance(admission, Refusal):
        await _refuse(ws, node, admission)
        return ws
    assert isinstance(admission, Admission)
    extra = {"class_id": admission.class_id, "user_id": admission.member.user_id}
    sink = WsSink(admission.member, ws, node)
    joined = await node.join(admission, sink)
    if isinstance(joined, Refusal):
        await _refuse(ws, node, joined)
        return ws
    room = joined
    logger.debug("member joined", extra=extra)
    try:
        async for msg in ws:
            if sink.closing:
                continue
            if msg.type is WSMsgType.TEXT:
                if too_big(msg.data):
                    sink.close(
                        CloseCode.MESSAGE_TOO_BIG,
                        f"messages are at most {MAX_FRAME_BYTES} bytes",
                    )
                    continue
                await node.receive(room, sink, msg.data)
            elif msg.type is WSMsgType.BINARY:
                sink.close(CloseCode.UNSUPPORTED_DATA, "send JSON text messages")
            else:
                break
    finally:
        await node.leave(room, sink)
        logger.debug("member left", extra=extra)
    return ws


NODE_KEY: web.AppKey[EdgeNode] = web.AppKey("edge_node", EdgeNode)
"""Where the app keeps its :class:`~liveclass.edge_node.node.EdgeNode`."""
