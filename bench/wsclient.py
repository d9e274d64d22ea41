"""A lean WebSocket client on a raw asyncio protocol, for the load generator.

Thousands of these share one process, so the receive path does as little
Python work per frame as it can: it walks frame headers to find frame
boundaries and control frames, then counts or extracts the benchmark's
timestamp markers over the whole run of complete frames with one C-level
call. Only the client side of RFC 6455 is implemented: no extensions, no
fragmentation on send.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import hashlib
import os
import re
import socket
import ssl
import struct
import time
from enum import IntEnum
from typing import cast

from liveclass.edge_node.rawtcp import FdTransport, Poller

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# RFC 6455 section 4.1: the key is 16 random bytes, base64-encoded. One key
# for every connection is enough here: it only proves the server speaks
# WebSocket, and computing the expected accept once keeps joins cheap.
_KEY = base64.b64encode(os.urandom(16))
_ACCEPT = base64.b64encode(hashlib.sha1(_KEY + _GUID).digest())

MARKER = re.compile(rb"~([a-z])(\d+):(\d+)~")
"""A timestamp marker inside a message: phase letter, message number, send
time in nanoseconds since the epoch."""

_SEQ = re.compile(rb'\{"seq_from":(null|\d+),"seq_to":(null|\d+)')


def marker(phase: str, number: int) -> str:
    """The marker a publisher puts in a message sent now."""
    return f"~{phase}{number}:{time.time_ns()}~"


class Opcode(IntEnum):
    """Frame opcodes (RFC 6455 section 5.2)."""

    CONT = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


class State(IntEnum):
    """Where a connection is in its life."""

    CONNECTING = 0
    UPGRADING = 1
    WAITING = 2
    JOINED = 3
    CLOSED = 4


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """A final, masked client frame (RFC 6455 section 5.3)."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    # XOR through one big integer: far cheaper than a Python loop per byte.
    repeated = (mask * (n // 4 + 1))[:n]
    masked = (
        int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")
    ).to_bytes(n, "big")
    return head + mask + masked


class Stats:
    """Counters of one benchmark phase, shared by every client of a process."""

    __slots__ = (
        "delivered",
        "gaps",
        "latencies_ns",
        "letter",
        "phase",
        "read_latencies_ns",
        "refused",
        "tag",
    )

    def __init__(self, phase: str = "-") -> None:
        self.phase = phase
        self.letter = phase.encode()
        self.tag = b"~" + self.letter
        self.delivered = 0
        self.gaps = 0
        self.refused = 0
        # Send to arrival in the client's socket (the kernel's receive time),
        # and send to the moment this process read it: the second adds the
        # generator's own pass over thousands of sockets.
        self.latencies_ns: list[int] = []
        self.read_latencies_ns: list[int] = []


class Client(asyncio.Protocol):
    """One WebSocket connection of the load generator.

    ``join_signal`` says when the server has accepted the client: ``b""``
    for the 101 response itself, otherwise a byte string whose appearance in
    a text frame marks the join (the edge's welcome frame, Socket.IO's
    namespace acknowledgement). ``sampled`` clients record each message's
    latency; the others only count messages, which costs one ``bytes.count``
    per read. ``chain`` checks the edge's sequence numbers from frame to
    frame; ``eio`` speaks the Engine.IO layer of Socket.IO (namespace join,
    pings).
    """

    stats: Stats = Stats()
    """The phase counters every client adds to; swapped between phases."""

    def __init__(
        self,
        path: str,
        host: str,
        join_signal: bytes,
        sampled: bool,
        chain: bool,
        eio: bool = False,
    ) -> None:
        self.path = path
        self.host = host
        self.join_signal = join_signal
        self.sampled = sampled
        self.chain = chain
        self.state = State.CONNECTING
        self.close_code: int | None = None
        self.transport: asyncio.Transport | None = None
        self.last_seq: bytes | None = None
        self.connect_error: str | None = None
        # Socket.IO and Engine.IO answers: "2" (ping) must get "3" (pong).
        self.eio = eio
        # Counted apart from the phase's receivers (slow readers), or not at
        # all (the publisher): a Stats whose phase letter never matches.
        self.own_stats: Stats | None = None
        # The kernel's receive time of the data handed to data_received, for
        # clients read through a StampedTransport; None otherwise.
        self.rx_ns: int | None = None
        self._buf = bytearray()
        self._close_sent = False
        # True once the server accepted the client, False if it closed
        # first: one future to await per join, nothing to poll.
        self.settled: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    # --- asyncio.Protocol -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Send the opening handshake (RFC 6455 section 4.1)."""
        # uvloop's transports are not asyncio.Transport subclasses, but
        # have the same methods.
        self.transport = cast(asyncio.Transport, transport)
        self.state = State.UPGRADING
        self.transport.write(
            b"GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
            % (self.path.encode(), self.host.encode(), _KEY)
        )

    def data_received(self, data: bytes) -> None:
        """Walk the complete frames received so far."""
        if self.state is State.JOINED and not self._buf and self._one_frame(data):
            return
        buf = self._buf
        buf += data
        if self.state is State.UPGRADING:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end])
            del buf[: end + 4]
            if not head.startswith(b"HTTP/1.1 101") or _ACCEPT not in head:
                self.connect_error = head.split(b"\r\n", 1)[0].decode(errors="replace")
                self._finish()
                return
            if self.eio:
                # Socket.IO: join the default namespace.
                self.send_text(b"40")
            if self.join_signal:
                self.state = State.WAITING
            else:
                self.state = State.JOINED
                self._settle(True)
        self._frames()

    def _one_frame(self, data: bytes) -> bool:
        """The common case, a read holding exactly one text frame: count it
        without copying. Whether it was that case."""
        size = len(data)
        if size < 2 or data[0] != 0x81:
            return False
        n = data[1]
        start = 2
        if n == 126 and size >= 4:
            n = (data[2] << 8) | data[3]
            start = 4
        elif n > 126:
            return False
        if start + n != size:
            return False
        if self.eio and n == 1:
            return False
        if self.chain:
            self._check_chain(data, start, size)
        self.received(data, size)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        """Remember that the connection is gone."""
        self._finish()

    # --- frames -----------------------------------------------------------

    def _frames(self) -> None:
        buf = self._buf
        size = len(buf)
        i = 0
        texts = 0
        while size - i >= 2:
            b0 = buf[i]
            n = buf[i + 1] & 0x7F
            start = i + 2
            if n == 126:
                if size - i < 4:
                    break
                n = (buf[i + 2] << 8) | buf[i + 3]
                start = i + 4
            elif n == 127:
                if size - i < 10:
                    break
                n = int.from_bytes(buf[i + 2 : i + 10], "big")
                start = i + 10
            end = start + n
            if end > size:
                break
            opcode = b0 & 0x0F
            if opcode > 0x7:
                self._control(opcode, bytes(buf[start:end]))
            elif self.eio and n == 1 and buf[start] == 0x32:
                # Engine.IO ping ("2"): answer "3" or the server drops us.
                self.send_text(b"3")
            else:
                texts += 1
                if self.chain:
                    self._check_chain(buf, start, end)
            i = end
        if i == 0:
            return
        if texts:
            self.received(buf, i)
        del buf[:i]

    def received(self, buf: bytes | bytearray, end: int) -> None:
        """Handle the complete frames in ``buf[:end]``, headers included:
        notice the join, count or time the phase's markers.

        Called once per read with every frame completed by it; a subclass
        that waits for something else in the frames extends it.
        """
        stats = self.own_stats or Client.stats
        if self.state is State.WAITING:
            if buf.find(self.join_signal, 0, end) < 0:
                return
            self.state = State.JOINED
            self._settle(True)
        if self.chain and stats.phase != "-" and buf.find(b"rate_limited", 0, end) >= 0:
            stats.refused += buf.count(b"rate_limited", 0, end)
        if self.sampled:
            now = time.time_ns()
            arrived = self.rx_ns or now
            letter = stats.letter
            for p, _number, sent in MARKER.findall(buf, 0, end):
                if p == letter:
                    stats.delivered += 1
                    stats.latencies_ns.append(arrived - int(sent))
                    stats.read_latencies_ns.append(now - int(sent))
        else:
            stats.delivered += buf.count(stats.tag, 0, end)

    def _check_chain(self, buf: bytes | bytearray, start: int, end: int) -> None:
        # Edge frames: each frame's seq_from must equal the previous seq_to.
        m = _SEQ.match(buf, start, end)
        if m is None or m.group(1) == b"null":
            return
        if self.last_seq is not None and m.group(1) != self.last_seq:
            (self.own_stats or Client.stats).gaps += 1
        self.last_seq = m.group(2)

    def _control(self, opcode: int, payload: bytes) -> None:
        if opcode == Opcode.PING:
            self._send(Opcode.PONG, payload)
        elif opcode == Opcode.CLOSE:
            self.close_code = (
                struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            )
            # RFC 6455 section 5.5.1: answer the close (unless it answers
            # ours), then let the server close the TCP connection.
            if not self._close_sent:
                self._send(Opcode.CLOSE, payload[:2])
            self._finish()

    # --- sending and closing -----------------------------------------------

    def _send(self, opcode: int, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode_frame(opcode, payload))

    def send_text(self, payload: bytes) -> None:
        """Send one text message."""
        self._send(Opcode.TEXT, payload)

    def close(self, code: int = 1000) -> None:
        """Start the closing handshake (RFC 6455 section 7.1.2): the server
        handles what was sent before, answers and closes the connection.
        Frames keep arriving until then."""
        self._send(Opcode.CLOSE, struct.pack("!H", code))
        self._close_sent = True

    def pause(self) -> None:
        """Stop reading: the client becomes a slow reader."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume(self) -> None:
        """Read again."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def abort(self) -> None:
        """Drop the connection at once (RST: no TIME_WAIT left behind)."""
        if self.transport is not None:
            self.transport.abort()
        self._finish()

    def tcp_state(self) -> int:
        """The kernel's TCP state of the socket (1: established), read
        without reading data; 0 when unknown."""
        sock = self.transport.get_extra_info("socket") if self.transport else None
        if sock is None:
            return 0
        try:
            return int(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0])
        except OSError:
            return 0

    @property
    def closed(self) -> bool:
        """Whether the connection is gone."""
        return self.state is State.CLOSED

    def _finish(self) -> None:
        if self.state is not State.CLOSED:
            self.state = State.CLOSED
            if self.transport is not None:
                self.transport.close()
            self._settle(False)

    def _settle(self, joined: bool) -> None:
        if not self.settled.done():
            self.settled.set_result(joined)


SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
"""Linux: hand each read the kernel's receive time (``struct timespec``)."""

_STAMP_SPACE = socket.CMSG_SPACE(16)


_POLLERS: dict[asyncio.AbstractEventLoop, Poller] = {}


def _poller() -> Poller:
    # One epoll set for the sampled clients of this process's loop.
    loop = asyncio.get_running_loop()
    poller = _POLLERS.get(loop)
    if poller is None:
        poller = _POLLERS[loop] = Poller(loop)
    return poller


class StampedTransport(FdTransport):
    """The edge's own descriptor transport, read with ``recvmsg`` so that
    each read comes with the kernel's receive time (``client.rx_ns``).

    Sampled clients use it: their latency is measured to the moment the data
    reached their socket, as it would reach a student's device, not to the
    moment this one process got round to reading it among thousands. When one
    read holds data from several sends, the time is that of the last one, so
    the earlier frames' latencies are overstated, never understated.
    """

    __slots__ = ("_client", "_sock")

    def __init__(self, client: Client, sock: socket.socket) -> None:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self._client = client
        self._sock = sock
        super().__init__(_poller(), sock.fileno(), client)

    def _read_ready(self) -> None:
        try:
            data, ancillary, _flags, _addr = self._sock.recvmsg(65536, _STAMP_SPACE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._finish(exc)
            return
        if not data:
            self.close()
            return
        stamp = None
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                sec, nsec = struct.unpack("qq", value[:16])
                stamp = sec * 1_000_000_000 + nsec
        self._client.rx_ns = stamp
        self._client.data_received(data)

    def get_extra_info(self, name: str, default: object = None) -> object:
        """The socket, as asyncio transports give it."""
        return self._sock if name == "socket" else default

    def _finish(self, exc: Exception | None) -> None:
        # The descriptor is closed once, by the transport: the socket
        # object lets go of it first.
        if self._sock.fileno() >= 0:
            self._sock.detach()
        super()._finish(exc)


async def connect(
    client: Client,
    host: str,
    port: int,
    *,
    rcvbuf: int | None = None,
    timeout_s: float = 20.0,
    tls: ssl.SSLContext | None = None,
) -> str | None:
    """Open ``client`` to ``host:port`` and wait until the server accepts it.

    Returns None once it is in, else why not: the close code, the HTTP
    status line or the exception. ``rcvbuf`` sets a small receive buffer
    before connecting, so that the window the client advertises matches it
    from the first packet on. With ``tls`` the client speaks TLS; its reads
    then carry no kernel receive time (they are of ciphertext), so sampled
    clients are timed when they read.
    """
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout_s):
            if tls is not None:
                sock = await _raw_connect(host, port, rcvbuf)
                await loop.create_connection(
                    lambda: client, sock=sock, ssl=tls, server_hostname=host
                )
            elif client.sampled:
                # The transport calls the client's connection_made.
                StampedTransport(client, await _raw_connect(host, port, rcvbuf))
            elif rcvbuf is None:
                await loop.create_connection(lambda: client, host, port)
            else:
                sock = await _raw_connect(host, port, rcvbuf)
                await loop.create_connection(lambda: client, sock=sock)
            if not await client.settled:
                return f"closed {client.close_code or client.connect_error}"
    except (OSError, TimeoutError) as exc:
        client.abort()
        return type(exc).__name__
    return None


async def _raw_connect(host: str, port: int, rcvbuf: int | None) -> socket.socket:
    """A connected non-blocking socket, with a small receive buffer if asked
    (set before connecting, so the window advertised matches it at once)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    try:
        await _connected(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return sock


async def _connected(sock: socket.socket, address: tuple[str, int]) -> None:
    # loop.sock_connect would do, but uvloop's resolves even a numeric
    # address on its thread pool, whose threads a generator that polls
    # without sleeping (see bench.loadgen) starves until the next tick.
    error = sock.connect_ex(address)
    if error in (errno.EINPROGRESS, errno.EAGAIN):
        loop = asyncio.get_running_loop()
        writable: asyncio.Future[None] = loop.create_future()

        def ready() -> None:
            if not writable.done():
                writable.set_result(None)

        loop.add_writer(sock.fileno(), ready)
        try:
            await writable
        finally:
            loop.remove_writer(sock.fileno())
        error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if error:
        raise OSError(error, f"connect to {address}: {os.strerror(error)}")
