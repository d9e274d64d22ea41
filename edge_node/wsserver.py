"""The member server: RFC 6455 on asyncio protocols, on the edge's HTTP port.

Each accepted connection starts as a :class:`MemberConnection`. It sniffs
the request line: ``GET /v1/ws`` upgrades are served here; any other
request is handed, with the bytes already read, to aiohttp's request
handler, which serves health, metrics, HLS and WHIP as before.

An idle member costs one protocol object with slots and its transport: no
task, no queue, no parser (one exists only while a client frame is half
read). Frames to members go straight to ``transport.write``; the transport's
buffer is the send queue, and its high-water mark the slow-reader limit.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Mapping
from enum import IntEnum
from typing import Any, cast

from aiohttp import web

from liveclass.edge_node.node import Admission, EdgeNode, Refusal
from liveclass.edge_node.rawtcp import FdListener, FdTransport, listening_sockets
from liveclass.edge_node.room import ClassRoom
from liveclass.edge_node.wsproto import (
    MAX_HANDSHAKE_BYTES,
    Control,
    FrameParser,
    HandshakeError,
    Message,
    Opcode,
    ProtocolError,
    accept_response,
    close_frame,
    frame,
    parse_upgrade,
    text_frame,
)
from liveclass.origin.tokens import UnknownKey
from liveclass.sdk.protocol import MAX_FRAME_BYTES, CloseCode, Member, Role

logger = logging.getLogger(__name__)

WS_PATH = b"/v1/ws"

MAX_BUFFERED_BYTES = 32 * 1024
"""Bytes waiting for one member before it is closed as too slow.

With the socket's kernel buffer (:data:`SOCKET_SEND_BUFFER`) about three
seconds of a busy class's chat (100 messages a second), fifteen of a
teacher's events alone. Bounds the memory a slow reader can take. A
member's first frames (a welcome, or the entries a resuming member
missed) come on top: they are not a sign of slowness.
"""

STAFF_MAX_BUFFERED_BYTES = 1024 * 1024
""":data:`MAX_BUFFERED_BYTES` for staff: a class has few of them, they see
every member come and go (ten thousand joins are over a megabyte), and
cutting the teacher off as too slow would stop the class for everyone."""

SOCKET_SEND_BUFFER = 16 * 1024
"""The kernel send buffer of a member's socket.

Fixed rather than grown by the kernel (up to megabytes each): a pass
writes a few frames of 32 KiB at most to a member, and one that cannot
take that much is slow. Set on the listening socket, whose connections
inherit it, so that a join costs no extra system call.
"""

HTTP_SEND_BUFFER = 4 * 1024 * 1024
"""The kernel send buffer of a connection handed to the HTTP side (media
segments, health, metrics), which must not keep the members' small one;
the kernel caps it at ``net.core.wmem_max``."""

CLOSE_TIMEOUT_S = 2.0
"""How long a closing connection may take to answer the close handshake."""

SLOW_CLOSE_TIMEOUT_S = 30.0
""":data:`CLOSE_TIMEOUT_S` for a member closed as too slow: its close frame
is queued behind what it has not read (a few dozen KB at most), and it
should get to read the reason before the connection is cut."""

KEEPALIVE_S = 30.0
"""How often members are pinged; one that sent nothing for two rounds is cut."""

KEEPALIVE_SLICES = 60
"""Steps a keepalive round is spread over (a sixtieth of the members every
half second by default)."""

HANDSHAKE_TIMEOUT_S = 10.0
"""A connection must have sent its whole request head within this time
(between this and twice it, in practice): one that trickles bytes, or went
silent half way, holds a file descriptor the edge needs for members."""


class State(IntEnum):
    """Where a member connection is in its life."""

    HANDSHAKE = 0
    JOINING = 1
    OPEN = 2
    CLOSING = 3
    CLOSED = 4


class MemberServer:
    """What the member connections of one edge share.

    ``http_factory`` makes aiohttp's protocol for requests that are not
    member upgrades; :class:`MemberSite` sets it.
    """

    def __init__(self, node: EdgeNode) -> None:
        self.node = node
        self.http_factory: Callable[[], asyncio.Protocol] | None = None
        self.connections: set[MemberConnection] = set()
        self._memo: list[tuple[str, bytes]] = [("", b""), ("", b"")]
        self._keepalive: asyncio.Task[None] | None = None
        self._deadline: asyncio.Task[None] | None = None
        # Connections accepted since the last deadline sweep, and during
        # the one before: the older ones still without a request are cut.
        self.newer: list[MemberConnection] = []
        self._older: list[MemberConnection] = []

    def encode(self, text: str) -> bytes:
        """``text`` as a WebSocket frame, framed once per shared string.

        A fan-out pass hands every member the same string object; the
        identity check turns 10,000 encodings into one. Two slots: staff
        and students alternate within one pass.
        """
        memo = self._memo
        first = memo[0]
        if first[0] is text:
            return first[1]
        second = memo[1]
        if second[0] is text:
            return second[1]
        wire = text_frame(text)
        memo[1] = first
        memo[0] = (text, wire)
        return wire

    def start(self) -> None:
        """Start the keepalive round and the request deadline."""
        if self._keepalive is None:
            self._keepalive = asyncio.create_task(self._ping_loop(), name="ws-ping")
        if self._deadline is None:
            self._deadline = asyncio.create_task(
                self._deadline_loop(), name="ws-handshake-deadline"
            )

    async def close(self) -> None:
        """Stop pinging; give closing handshakes a moment, then cut the rest."""
        for task in (self._keepalive, self._deadline):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        self._keepalive = self._deadline = None
        for _ in range(20):
            if not any(c.state is State.CLOSING for c in self.connections):
                break
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.abort()

    async def _deadline_loop(self) -> None:
        # Two generations instead of a timer or a timestamp per connection:
        # a join storm pays one list append per connection.
        while True:
            await asyncio.sleep(HANDSHAKE_TIMEOUT_S / 2)
            late = [c for c in self._older if c.state is State.HANDSHAKE]
            self._older, self.newer = self.newer, []
            for conn in late:
                conn.abort()
            if late:
                self.node.metrics.handshake_timeouts += len(late)
                logger.info(
                    "cut %d connections that sent no complete request within %.0f s",
                    len(late),
                    HANDSHAKE_TIMEOUT_S,
                )

    async def _ping_loop(self) -> None:
        # A round pings every member once, spread over the whole interval:
        # ten thousand pings at once would hold the event loop (and every
        # fan-out behind it) for as long as a fan-out round.
        ping = frame(Opcode.PING, b"")
        while True:
            step = KEEPALIVE_S / KEEPALIVE_SLICES
            members = list(self.connections)
            per_slice = -(-len(members) // KEEPALIVE_SLICES)
            for at in range(0, KEEPALIVE_SLICES * per_slice or 1, per_slice or 1):
                await asyncio.sleep(step)
                for conn in members[at : at + per_slice]:
                    conn.keepalive(ping)


class MemberConnection(asyncio.Protocol):
    """One client connection: a member's WebSocket, or an HTTP request
    handed on to aiohttp. It is the :class:`~liveclass.edge_node.fanout.Sink`
    the class room writes to."""

    __slots__ = (
        "_closer",
        "_head",
        "_heard",
        "_parser",
        "_sent_code",
        "_server",
        "_slow",
        "member",
        "room",
        "state",
        "transport",
    )

    def __init__(self, server: MemberServer) -> None:
        self._server = server
        self.transport: asyncio.Transport | None = None
        self.state = State.HANDSHAKE
        self._head: bytes | list[bytes] | None = b""
        self._parser: FrameParser | None = None
        self._closer: asyncio.TimerHandle | None = None
        self._slow = False
        self._sent_code = 0
        self._heard = True
        self.member: Member = _NOBODY
        self.room: ClassRoom | None = None

    # --- asyncio protocol ------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio's, but behave alike.
        self.transport = cast(asyncio.Transport, transport)
        self._server.connections.add(self)
        self._server.newer.append(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = State.CLOSED
        self._server.connections.discard(self)
        if self._closer is not None:
            self._closer.cancel()
            self._closer = None
        if self.room is not None:
            self._server.node.leave_now(self.room, self)
            logger.debug("member left", extra=self._extra())
            self.room = None

    def pause_writing(self) -> None:
        # The transport's buffer passed MAX_BUFFERED_BYTES: the member does
        # not read. A fan-out pass finds it and the class room closes it;
        # what is written outside one (pongs to its pings, answers to its
        # messages) would pile up with no pass to notice, hence the check.
        self._slow = True
        asyncio.get_running_loop().call_soon(self._close_if_slow)

    def _close_if_slow(self) -> None:
        if self._slow and self.state is State.OPEN:
            self.close(CloseCode.TOO_SLOW, "too far behind; reconnect with last_seq")

    def resume_writing(self) -> None:
        self._slow = False
        if self.transport is not None:
            # The first frames' allowance is spent once they drained.
            self.transport.set_write_buffer_limits(high=self._allowance())

    def data_received(self, data: bytes) -> None:
        self._heard = True
        if self.state is State.HANDSHAKE:
            self._handshake(data)
        elif self.state is State.OPEN or self.state is State.CLOSING:
            self._frames(data)

    # --- the sink --------------------------------------------------------

    def offer(self, data: str) -> bool:
        """Write one frame; False once the member is too far behind."""
        if self.state is not State.OPEN:
            return True
        if self._slow:
            return False  # already too far behind: nothing more piles up
        wire = self._server.encode(data)
        head = self._head
        if isinstance(head, list):
            # Still answering the handshake: one write for both.
            head.append(wire)
            return True
        transport = self.transport
        assert transport is not None
        transport.write(wire)
        if self._slow:
            return False
        # Some event loops (uvloop) call pause_writing late or not at all for
        # a reader that stopped: look at the buffer too.
        return (
            transport.get_write_buffer_size() <= transport.get_write_buffer_limits()[1]
        )

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake (section 7.1.2) with ``code``."""
        if self.state >= State.CLOSING or self.transport is None:
            return
        if isinstance(self._head, list):
            self._uncork()  # frames already offered go before the close
        self._server.node.metrics.closes[code] += 1
        self.state = State.CLOSING
        self._sent_code = code
        self._write(close_frame(code, reason))
        loop = asyncio.get_running_loop()
        timeout = (
            SLOW_CLOSE_TIMEOUT_S if code == CloseCode.TOO_SLOW else CLOSE_TIMEOUT_S
        )
        self._closer = loop.call_later(timeout, self.abort)

    def abort(self) -> None:
        """Drop the connection without a handshake (and its buffer)."""
        if self.transport is not None and self.state is not State.CLOSED:
            self.transport.abort()

    def keepalive(self, ping: bytes) -> None:
        """One keepalive round: cut a silent member, else ping it."""
        if self.state is not State.OPEN:
            return
        if not self._heard:
            logger.debug("member silent; cutting", extra=self._extra())
            self.abort()
            return
        self._heard = False
        self._write(ping)

    # --- opening handshake -----------------------------------------------

    def _handshake(self, data: bytes) -> None:
        head = self._head
        assert isinstance(head, bytes)
        head += data
        if not _may_be_upgrade(head):
            self._hand_off(head)
            return
        end = head.find(b"\r\n\r\n")
        if end < 0:
            if len(head) > MAX_HANDSHAKE_BYTES:
                self._refuse_http(HandshakeError(400, "request head too large"))
            else:
                self._head = head
            return
        rest = head[end + 4 :]
        try:
            upgrade = parse_upgrade(head[: end + 4])
        except HandshakeError as exc:
            self._refuse_http(exc)
            return
        transport = self.transport
        assert transport is not None
        transport.set_write_buffer_limits(high=MAX_BUFFERED_BYTES)
        self._head = [accept_response(upgrade.accept)]
        self.state = State.JOINING
        self._admit(upgrade.query, rest)

    def _hand_off(self, head: bytes) -> None:
        # Not a member upgrade: aiohttp serves it from the first byte on.
        factory = self._server.http_factory
        transport = self.transport
        assert transport is not None
        self._server.connections.discard(self)
        self._head = None
        # The connection is not this protocol's any more, whatever happens.
        self.state = State.CLOSED
        self.transport = None
        if factory is None:
            transport.abort()
            return
        if isinstance(transport, FdTransport):
            # The HTTP side gets an event loop transport of its own (aiohttp
            # sends files with loop.sendfile, which needs one).
            sock = transport.detach()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, HTTP_SEND_BUFFER)
            self._server.node.spawn(_serve_http(sock, _Primed(factory, head)))
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, HTTP_SEND_BUFFER)
        handler = factory()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if head:
            handler.data_received(head)

    def _refuse_http(self, error: HandshakeError) -> None:
        assert self.transport is not None
        self._head = None
        self.state = State.CLOSING
        self.transport.write(error.response())
        self.transport.close()

    def _admit(self, query: Mapping[str, str], rest: bytes) -> None:
        node = self._server.node
        try:
            admission = node.admit_now(query)
        except UnknownKey:
            self._join_later(query, None, rest)
            return
        if isinstance(admission, Refusal):
            self._uncork()
            self._refuse(admission)
            return
        assert isinstance(admission, Admission)
        self.member = admission.member
        self.state = State.OPEN
        joined = node.join_now(admission, self)
        if joined is None:
            self._join_later(query, admission, rest)
            return
        self._uncork()
        if isinstance(joined, Refusal):
            self._refuse(joined)
            return
        self._joined(joined, rest)

    def _join_later(
        self, query: Mapping[str, str], admission: Admission | None, rest: bytes
    ) -> None:
        # The slow path: a key to fetch, a room to open, or a resume.
        self.state = State.JOINING
        self._uncork()
        assert self.transport is not None
        self.transport.pause_reading()
        self._server.node.spawn(self._join_safely(query, admission, rest))

    async def _join_safely(
        self, query: Mapping[str, str], admission: Admission | None, rest: bytes
    ) -> None:
        try:
            await self._join(query, admission, rest)
        except Exception:
            logger.exception("joining failed", extra=self._extra())
            self.close(1011, "internal error; try again")

    async def _join(
        self, query: Mapping[str, str], admission: Admission | None, rest: bytes
    ) -> None:
        node = self._server.node
        if admission is None:
            got = await node.admit(query)
            if isinstance(got, Refusal):
                self._refuse(got)
                return
            admission = got
        if self.state is State.CLOSED:
            return
        self.member = admission.member
        self.state = State.OPEN
        self._head = []  # the first frames go out together, uncounted
        joined = await node.join(admission, self)
        self._uncork()
        if isinstance(joined, Refusal):
            self._refuse(joined)
            return
        if self.state is State.CLOSED:
            node.leave_now(joined, self)
            return
        self._joined(joined, rest)
        if self.transport is not None and self.state is not State.CLOSED:
            self.transport.resume_reading()

    def _joined(self, room: ClassRoom, rest: bytes) -> None:
        self.room = room
        logger.debug("member joined", extra=self._extra())
        if rest:
            self._frames(rest)

    def _uncork(self) -> None:
        head = self._head
        self._head = None
        transport = self.transport
        if isinstance(head, list) and transport and not transport.is_closing():
            data = b"".join(head)
            transport.set_write_buffer_limits(high=self._allowance() + len(data))
            transport.write(data)

    def _allowance(self) -> int:
        if self.member.role.is_staff:
            return STAFF_MAX_BUFFERED_BYTES
        return MAX_BUFFERED_BYTES

    def _refuse(self, refusal: Refusal) -> None:
        # As the close of an accepted WebSocket, so that clients read the
        # code and reason (an HTTP error status would hide them).
        self.state = State.JOINING
        self.close(refusal.code, refusal.reason)
        self._parser = None

    # --- frames from the client ------------------------------------------

    def _frames(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:
            parser = FrameParser(MAX_FRAME_BYTES)
        try:
            events = parser.feed(data)
        except ProtocolError as exc:
            self._parser = None
            self.state = State.JOINING  # ignore what follows a broken frame
            self.close(exc.code, exc.reason)
            return
        self._parser = None if parser.idle else parser
        for event in events:
            if isinstance(event, Message):
                self._message(event)
            else:
                self._control(event)
            if self.state is State.CLOSED:
                return

    def _message(self, message: Message) -> None:
        if self.room is None:
            return
        if self.state is not State.OPEN and not (
            self.state is State.CLOSING and self._sent_code in _MOVING
        ):
            # Messages sent before the member saw a close that asks it to
            # move (a drain, a restart) are still taken: the member counted
            # them as sent. After any other close they are not.
            return
        if message.opcode is Opcode.BINARY:
            self.close(CloseCode.UNSUPPORTED_DATA, "send JSON text messages")
            return
        assert isinstance(message.data, str)
        self._server.node.receive_now(self.room, self, message.data)

    def _control(self, control: Control) -> None:
        if control.opcode is Opcode.PING:
            # Section 5.5.3: a pong echoes the ping's payload; a member
            # too far behind to take it is about to be closed instead.
            if self.state is State.OPEN and not self._slow:
                self._write(frame(Opcode.PONG, control.payload))
        elif control.opcode is Opcode.CLOSE:
            assert self.transport is not None
            if self.state is State.OPEN:
                # Section 5.5.1: answer with the code received, then the
                # server closes the TCP connection first (section 7.1.1).
                self._write(close_frame(control.code or CloseCode.NORMAL))
            self.state = State.CLOSING
            self.transport.close()

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _extra(self) -> dict[str, Any]:
        room = self.room
        return {
            "class_id": room.class_id if room is not None else None,
            "user_id": self.member.user_id,
        }


class _Primed(asyncio.Protocol):
    """Stands in for aiohttp's protocol for one moment: when the new
    transport is made, hands it the protocol and the bytes already read,
    before the transport can report anything else (an end of stream right
    behind the request must not reach aiohttp before the request does)."""

    def __init__(self, factory: Callable[[], asyncio.Protocol], head: bytes) -> None:
        self._factory = factory
        self._head = head

    def __call__(self) -> asyncio.Protocol:
        return self

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        handler = self._factory()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self._head:
            handler.data_received(self._head)


async def _serve_http(sock: socket.socket, primed: _Primed) -> None:
    loop = asyncio.get_running_loop()
    try:
        await loop.connect_accepted_socket(primed, sock)
    except OSError as exc:
        logger.debug("connection gone before its HTTP request was served: %s", exc)
        sock.close()


_NOBODY = Member(user_id="", name="", role=Role.STUDENT)
_MOVING = frozenset({CloseCode.DRAINING, CloseCode.GOING_AWAY})
_PREFIX = b"GET " + WS_PATH


def _may_be_upgrade(head: bytes) -> bool:
    # Decided on the request target: /v1/ws, alone or with a query.
    n = len(_PREFIX)
    if len(head) <= n:
        return _PREFIX.startswith(head)
    return head.startswith(_PREFIX) and head[n] in b"? "


class MemberSite(web.TCPSite):
    """The edge's listening socket: members here, the rest to aiohttp.

    ``reuse_port`` lets several worker processes share the port; the
    kernel spreads connections among them.
    """

    __slots__ = ("_members",)

    def __init__(
        self,
        runner: web.AppRunner,
        members: MemberServer,
        host: str,
        port: int,
        **kwargs: Any,
    ) -> None:
        super().__init__(runner, host, port, **kwargs)
        self._members = members

    async def start(self) -> None:
        """Listen; set aiohttp's handler factory for the hand-off."""
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        self._members.http_factory = server
        loop = asyncio.get_running_loop()
        members = self._members
        if self._ssl_context is None:
            # Connections inherit these from the listening socket: no
            # system call per join.
            options = [
                (socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_SEND_BUFFER),
                (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),
            ]
            socks = listening_sockets(
                self._host, self._port, self._backlog, bool(self._reuse_port), options
            )
            self._server = FdListener(  # type: ignore[assignment]
                socks, lambda: MemberConnection(members)
            )
        else:
            self._server = await loop.create_server(
                lambda: MemberConnection(members),
                self._host,
                self._port,
                ssl=self._ssl_context,
                backlog=self._backlog,
                reuse_address=self._reuse_address,
                reuse_port=self._reuse_port,
            )
            for sock in self._server.sockets:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_SEND_BUFFER)
        self._members.start()
