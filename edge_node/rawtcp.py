"""Plain TCP connections on bare file descriptors, for the member port.

An event loop's own transports do more per connection than a join storm
can afford: uvloop's asks the kernel for both addresses of the socket, sets
``TCP_NODELAY`` on it, and files it in a weak-reference table, about 20 us
of a join that costs a bare server 50. Here a connection is its descriptor
and a transport object with slots: the options are set once on the
listening socket (connections inherit them), the peer's address comes with
``accept``, and the descriptors share one epoll set of their own
(:class:`Poller`), which the event loop watches as one descriptor: adding a
connection is one ``epoll_ctl``, not a watcher and a callback handle each,
and errors on a socket are seen, where uvloop's per-descriptor watchers stop
on them without a word.

:class:`FdTransport` has the methods and flow-control callbacks of an
asyncio transport that the member protocol uses. TLS keeps the event loop's
transports (see :class:`~liveclass.edge_node.wsserver.MemberSite`).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import select
import socket
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

ACCEPT_BATCH = 128
"""Connections accepted per turn of the event loop, at most: a storm's
connections come in batches, and the loop reads the accepted ones between
two batches."""

READ_BYTES = 256 * 1024
"""The most one read takes from a connection."""

DEFAULT_HIGH_WATER = 64 * 1024
"""Bytes buffered before the protocol is asked to pause writing, as for
asyncio's transports, until :meth:`FdTransport.set_write_buffer_limits`."""

_OUT_OF_DESCRIPTORS = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
)

ACCEPT_PAUSE_S = 1.0
"""How long the listener stops accepting when the process is out of file
descriptors or memory, so that closing connections can free some."""


def listening_sockets(
    host: str | None,
    port: int,
    backlog: int,
    reuse_port: bool,
    options: list[tuple[int, int, int]],
) -> list[socket.socket]:
    """Non-blocking sockets listening on every address of ``host`` (all
    interfaces when None or empty), with ``options`` (``level, name,
    value``) set on each for the connections to inherit."""
    infos = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    socks: list[socket.socket] = []
    seen: set[tuple[int, Any]] = set()
    try:
        for family, kind, proto, _name, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                # As asyncio does: the IPv4 address has its own socket.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            for level, name, value in options:
                sock.setsockopt(level, name, value)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


_IN, _OUT = select.EPOLLIN, select.EPOLLOUT
_READ_EVENTS = select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP
_WRITE_EVENTS = select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP


class Poller:
    """An epoll set of connections, watched by ``loop`` as one descriptor.

    Each turn of the event loop in which any of them is ready calls their
    transports' read and write handlers. :meth:`release` closes the set once
    its last connection has left.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._epoll = select.epoll()
        self._transports: dict[int, FdTransport] = {}
        self._released = False
        loop.add_reader(self._epoll.fileno(), self._ready)

    def watch(self, transport: FdTransport, mask: int) -> None:
        """Watch the descriptor of ``transport`` for ``mask`` (EPOLLIN,
        EPOLLOUT; 0 to stop watching it)."""
        old = transport._mask
        if mask == old:
            return
        fd = transport._fd
        epoll = self._epoll
        if not old:
            epoll.register(fd, mask)
            self._transports[fd] = transport
        elif not mask:
            epoll.unregister(fd)
            del self._transports[fd]
            if self._released and not self._transports:
                self._close()
        else:
            epoll.modify(fd, mask)
        transport._mask = mask

    def _ready(self) -> None:
        transports = self._transports
        for fd, events in self._epoll.poll(0):
            transport = transports.get(fd)
            if transport is None:
                continue  # gone earlier in this pass
            try:
                if events & _READ_EVENTS and transport._mask & _IN:
                    transport._read_ready()
                if (
                    events & _WRITE_EVENTS
                    and transport._mask & _OUT
                    and transport._fd == fd
                ):
                    transport._write_ready()
            except Exception as exc:
                self.loop.call_exception_handler(
                    {
                        "message": "a connection's event handler failed",
                        "exception": exc,
                        "transport": transport,
                    }
                )
                transport.abort()

    def release(self) -> None:
        """Close the set once no connection is left in it."""
        self._released = True
        if not self._transports:
            self._close()

    def _close(self) -> None:
        if self._epoll.closed:
            return
        self.loop.remove_reader(self._epoll.fileno())
        self._epoll.close()


class FdListener:
    """Accepts connections on ``sockets`` and gives each a protocol from
    ``factory`` on an :class:`FdTransport`.

    Has what aiohttp asks of the server object of a site: ``sockets``,
    :meth:`close` and :meth:`wait_closed`.
    """

    def __init__(
        self,
        sockets: list[socket.socket],
        factory: Callable[[], asyncio.Protocol],
    ) -> None:
        self.sockets = sockets
        self._factory = factory
        self._loop = asyncio.get_running_loop()
        self._poller = Poller(self._loop)
        self._closed = False
        for sock in sockets:
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    def _accept(self, sock: socket.socket) -> None:
        # socket.accept() would wrap each descriptor in a socket object;
        # _accept is the call it makes, returning the bare descriptor.
        accept = sock._accept  # type: ignore[attr-defined]
        poller, factory = self._poller, self._factory
        for _ in range(ACCEPT_BATCH):
            try:
                fd, peer = accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_DESCRIPTORS:
                    self._pause(sock, exc)
                    return
                continue  # that connection was reset before it was taken
            try:
                os.set_blocking(fd, False)
                FdTransport(poller, fd, factory(), peer)
            except Exception:
                logger.exception("could not set up an accepted connection")
                os.close(fd)

    def _pause(self, sock: socket.socket, exc: OSError) -> None:
        logger.error(
            "cannot accept connections (%s); pausing %.0f s. Raise the open "
            "file limit (ulimit -n) or lower --capacity",
            exc.strerror,
            ACCEPT_PAUSE_S,
        )
        self._loop.remove_reader(sock.fileno())
        self._loop.call_later(ACCEPT_PAUSE_S, self._resume, sock)

    def _resume(self, sock: socket.socket) -> None:
        if not self._closed:
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    def close(self) -> None:
        """Stop listening (connections already accepted stay)."""
        if self._closed:
            return
        self._closed = True
        for sock in self.sockets:
            self._loop.remove_reader(sock.fileno())
            sock.close()
        self._poller.release()

    async def wait_closed(self) -> None:
        """Return at once: closing is done by :meth:`close`."""


class FdTransport(asyncio.Transport):
    """One accepted connection: a non-blocking descriptor the event loop
    watches, with asyncio's transport semantics for what the member
    protocol uses (write buffering with high and low water marks calling
    ``pause_writing`` and ``resume_writing``, pausing reads, closing after
    the buffer drains, aborting, end of stream).

    The protocol's ``connection_lost`` is called soon after the descriptor
    is closed, never from inside a call to :meth:`write`.
    """

    __slots__ = (
        "_closing",
        "_fd",
        "_high",
        "_low",
        "_mask",
        "_out",
        "_paused",
        "_peer",
        "_poller",
        "_protocol",
        "_reading",
    )

    def __init__(
        self,
        poller: Poller,
        fd: int,
        protocol: asyncio.BaseProtocol,
        peer: Any = None,
    ) -> None:
        # No super().__init__: an extra-info dict per connection is memory
        # an idle member cannot spare; get_extra_info is overridden.
        self._poller = poller
        self._mask = 0  # what the poller watches the descriptor for
        self._fd = fd
        self._protocol = protocol
        self._peer = peer
        self._out: bytearray | None = None
        self._closing = False
        self._paused = False
        self._reading = True
        self._high = DEFAULT_HIGH_WATER
        self._low = DEFAULT_HIGH_WATER // 4
        protocol.connection_made(self)
        self._watch()

    def _watch(self) -> None:
        # What the descriptor is watched for follows from the state.
        if self._fd < 0:
            return
        mask = _IN if self._reading else 0
        if self._out is not None:
            mask |= _OUT
        self._poller.watch(self, mask)

    # --- reading ------------------------------------------------------------

    def _read_ready(self) -> None:
        try:
            data = os.read(self._fd, READ_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._finish(exc)
            return
        protocol = self._protocol
        assert isinstance(protocol, asyncio.Protocol)
        try:
            if data:
                protocol.data_received(data)
                return
            self.pause_reading()
            if not protocol.eof_received():
                self.close()
        except Exception as exc:
            # As asyncio's transports do: the loop hears of it, the
            # connection ends, the others go on.
            self._poller.loop.call_exception_handler(
                {
                    "message": "protocol failed on data from a connection",
                    "exception": exc,
                    "transport": self,
                    "protocol": protocol,
                }
            )
            self._finish(exc)

    def pause_reading(self) -> None:
        """Stop reading until :meth:`resume_reading`."""
        if self._reading:
            self._reading = False
            self._watch()

    def resume_reading(self) -> None:
        """Read again."""
        if not self._reading and not self._closing:
            self._reading = True
            self._watch()

    def is_reading(self) -> bool:
        """Whether the transport reads."""
        return self._reading and not self._closing

    # --- writing ------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data`` now as far as the socket takes it; buffer the rest."""
        if self._closing or not data:
            return
        out = self._out
        if out is not None:
            out += data
            self._check_high(out)
            return
        try:
            sent = os.write(self._fd, data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._finish(exc)
            return
        if sent == len(data):
            return
        out = self._out = bytearray(memoryview(data)[sent:])
        self._watch()
        self._check_high(out)

    def _check_high(self, out: bytearray) -> None:
        if not self._paused and len(out) > self._high:
            self._paused = True
            self._protocol.pause_writing()

    def _write_ready(self) -> None:
        out = self._out
        if out is None:
            return
        try:
            sent = os.write(self._fd, out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._finish(exc)
            return
        del out[:sent]
        if self._paused and len(out) <= self._low:
            self._paused = False
            self._protocol.resume_writing()
        if not out:
            self._out = None
            if self._closing:
                self._finish(None)
            else:
                self._watch()

    def get_write_buffer_size(self) -> int:
        """Bytes written but not yet taken by the socket."""
        out = self._out
        return len(out) if out is not None else 0

    def get_write_buffer_limits(self) -> tuple[int, int]:
        """``(low, high)`` water marks."""
        return self._low, self._high

    def set_write_buffer_limits(
        self, high: int | None = None, low: int | None = None
    ) -> None:
        """Set the water marks, as asyncio's transports do (``low`` a
        quarter of ``high`` unless given)."""
        if high is None:
            high = DEFAULT_HIGH_WATER if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low
        out = self._out
        if out is not None:
            self._check_high(out)

    def can_write_eof(self) -> bool:
        """No half-closing here."""
        return False

    # --- closing ------------------------------------------------------------

    def is_closing(self) -> bool:
        """Whether :meth:`close` or :meth:`abort` was called, or the
        connection is gone."""
        return self._closing

    def close(self) -> None:
        """Stop reading; close once what is buffered is sent."""
        if self._closing:
            return
        self._closing = True
        self._reading = False
        if self._out is None:
            self._finish(None)
        else:
            self._watch()

    def abort(self) -> None:
        """Close at once; what is buffered is dropped."""
        self._finish(None)

    def detach(self) -> socket.socket:
        """Give the connection up to other code as a socket object: the
        transport stops watching it and its protocol hears nothing more."""
        fd = self._fd
        if fd < 0 or self._out is not None:
            raise RuntimeError("only an open connection with nothing buffered")
        self._poller.watch(self, 0)
        self._fd = -1
        self._closing = self._paused = True
        self._reading = False
        return socket.socket(fileno=fd)

    def _finish(self, exc: Exception | None) -> None:
        fd = self._fd
        if fd < 0:
            return
        self._poller.watch(self, 0)
        self._fd = -1
        self._closing = True
        self._reading = False
        self._out = None
        os.close(fd)
        self._poller.loop.call_soon(self._protocol.connection_lost, exc)

    # --- the rest of asyncio's interface -------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """``peername`` only: the address ``accept`` gave."""
        if name == "peername" and self._peer is not None:
            return self._peer
        return default

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """Hand the connection's events to ``protocol`` from now on."""
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        """The protocol the connection's events go to."""
        return self._protocol
