"""The member port's bare-descriptor TCP layer: flow control, closing, end of
stream, failing protocols and running out of descriptors, over real
loopback sockets."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import socket
from collections.abc import AsyncIterator, Callable

import pytest

from liveclass.edge_node import rawtcp
from liveclass.edge_node.rawtcp import (
    FdListener,
    FdTransport,
    Poller,
    listening_sockets,
)


class Recorder(asyncio.Protocol):
    """Remembers what happened to one connection."""

    def __init__(self) -> None:
        self.transport: FdTransport | None = None
        self.data = bytearray()
        self.events: list[str] = []
        self.lost: asyncio.Future[Exception | None] = (
            asyncio.get_running_loop().create_future()
        )
        self.eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, FdTransport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> bool | None:
        self.eof = True
        return None

    def pause_writing(self) -> None:
        self.events.append("pause")

    def resume_writing(self) -> None:
        self.events.append("resume")

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append("lost")
        if not self.lost.done():
            self.lost.set_result(exc)


class Server:
    """A listener whose protocols are kept, in accept order."""

    def __init__(self, make: Callable[[], asyncio.Protocol] = Recorder) -> None:
        socks = listening_sockets(
            "127.0.0.1", 0, 128, False, [(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)]
        )
        self.port = socks[0].getsockname()[1]
        self.protocols: list[asyncio.Protocol] = []
        self._make = make
        self.listener = FdListener(socks, self._new)

    def _new(self) -> asyncio.Protocol:
        protocol = self._make()
        self.protocols.append(protocol)
        return protocol

    async def accepted(self, n: int = 1) -> list[asyncio.Protocol]:
        for _ in range(200):
            if len(self.protocols) >= n:
                return self.protocols
            await asyncio.sleep(0.01)
        raise AssertionError(f"{len(self.protocols)} of {n} connections accepted")

    async def client(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    s = Server()
    yield s
    s.listener.close()


async def test_bytes_both_ways_and_options_inherited(server: Server) -> None:
    reader, writer = await server.client()
    (proto,) = await server.accepted()
    assert isinstance(proto, Recorder) and proto.transport is not None
    writer.write(b"hello")
    await writer.drain()
    for _ in range(100):
        if proto.data == b"hello":
            break
        await asyncio.sleep(0.01)
    assert proto.data == b"hello"
    proto.transport.write(b"world")
    assert await reader.readexactly(5) == b"world"
    peer = proto.transport.get_extra_info("peername")
    assert peer == writer.get_extra_info("sockname")
    writer.close()


async def test_a_reader_that_stops_pauses_then_resumes_writing_in_order(
    server: Server,
) -> None:
    reader, writer = await server.client()
    (proto,) = await server.accepted()
    assert isinstance(proto, Recorder) and proto.transport is not None
    transport = proto.transport
    transport.set_write_buffer_limits(high=64 * 1024)
    payload = bytes(range(256)) * 4096  # 1 MiB, far over the socket buffers
    for at in range(0, len(payload), 8192):
        transport.write(payload[at : at + 8192])
    assert proto.events == ["pause"]
    assert transport.get_write_buffer_size() > 64 * 1024
    got = await reader.readexactly(len(payload))
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
    for _ in range(100):
        if transport.get_write_buffer_size() == 0:
            break
        await asyncio.sleep(0.01)
    assert proto.events == ["pause", "resume"]
    writer.close()


async def test_close_sends_what_is_buffered_then_ends_the_stream(
    server: Server,
) -> None:
    reader, writer = await server.client()
    (proto,) = await server.accepted()
    assert isinstance(proto, Recorder) and proto.transport is not None
    payload = b"x" * 300_000
    proto.transport.write(payload)
    assert proto.transport.get_write_buffer_size() > 0
    proto.transport.close()
    proto.transport.write(b"after close is dropped")
    assert "lost" not in proto.events  # connection_lost only once all is sent
    assert await reader.read() == payload  # then end of stream
    assert await asyncio.wait_for(proto.lost, 5) is None
    assert proto.events == ["pause", "resume", "lost"]
    writer.close()


async def test_abort_drops_the_buffer_and_reports_once(server: Server) -> None:
    reader, writer = await server.client()
    (proto,) = await server.accepted()
    assert isinstance(proto, Recorder) and proto.transport is not None
    proto.transport.write(b"y" * 300_000)
    proto.transport.abort()
    proto.transport.abort()
    assert await asyncio.wait_for(proto.lost, 5) is None
    received = await reader.read()
    assert len(received) < 300_000
    await asyncio.sleep(0.05)
    assert proto.events == ["pause", "lost"]
    writer.close()


async def test_end_of_stream_from_the_client_closes(server: Server) -> None:
    _reader, writer = await server.client()
    (proto,) = await server.accepted()
    assert isinstance(proto, Recorder)
    writer.write(b"last words")
    writer.write_eof()
    assert await asyncio.wait_for(proto.lost, 5) is None
    assert proto.eof and proto.data == b"last words"
    writer.close()


async def test_a_reset_reports_the_error(server: Server) -> None:
    _reader, writer = await server.client()
    (proto,) = await server.accepted()
    assert isinstance(proto, Recorder) and proto.transport is not None
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
    writer.transport.abort()
    await asyncio.sleep(0.05)
    proto.transport.write(b"z" * 1000)  # to a reset connection
    exc = await asyncio.wait_for(proto.lost, 5)
    assert exc is None or isinstance(exc, ConnectionError)
    assert proto.transport.is_closing()


class Failing(Recorder):
    def data_received(self, data: bytes) -> None:
        if data.startswith(b"boom"):
            raise ValueError("bad input")
        super().data_received(data)


async def test_a_protocol_that_raises_loses_its_connection_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = Server(Failing)
    try:
        _r1, bad = await server.client()
        r2, good = await server.client()
        first, second = await server.accepted(2)
        assert isinstance(first, Recorder) and isinstance(second, Recorder)
        with caplog.at_level(logging.ERROR):
            bad.write(b"boom")
            exc = await asyncio.wait_for(first.lost, 5)
        assert isinstance(exc, ValueError)
        assert "protocol failed" in caplog.text
        good.write(b"fine")
        await good.drain()
        assert second.transport is not None
        second.transport.write(b"still here")
        assert await r2.readexactly(10) == b"still here"
        assert not second.lost.done()
        bad.close()
        good.close()
    finally:
        server.listener.close()


async def test_detach_hands_over_a_working_socket(server: Server) -> None:
    reader, writer = await server.client()
    (proto,) = await server.accepted()
    assert isinstance(proto, Recorder) and proto.transport is not None
    sock = proto.transport.detach()
    try:
        writer.write(b"to the new owner")
        await writer.drain()
        loop = asyncio.get_running_loop()
        assert await loop.sock_recv(sock, 100) == b"to the new owner"
        await loop.sock_sendall(sock, b"answer")
        assert await reader.readexactly(6) == b"answer"
        await asyncio.sleep(0.05)
        assert proto.data == b"" and proto.events == []
    finally:
        sock.close()
        writer.close()


class _OutOfFiles(socket.socket):
    """A listening socket whose first accept finds no descriptor left."""

    failures = 1

    def _accept(self) -> tuple[int, object]:
        if _OutOfFiles.failures:
            _OutOfFiles.failures -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        return super()._accept()  # type: ignore[misc]


async def test_out_of_descriptors_pauses_accepting_then_goes_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(rawtcp, "ACCEPT_PAUSE_S", 0.2)
    listening = _OutOfFiles(socket.AF_INET, socket.SOCK_STREAM)
    listening.bind(("127.0.0.1", 0))
    listening.listen(16)
    listening.setblocking(False)
    protocols: list[Recorder] = []

    def make() -> Recorder:
        protocols.append(Recorder())
        return protocols[-1]

    listener = FdListener([listening], make)
    try:
        with caplog.at_level(logging.ERROR):
            _r, writer = await asyncio.open_connection(
                "127.0.0.1", listening.getsockname()[1]
            )
            await asyncio.sleep(0.1)
            assert protocols == []  # paused, not spinning
            assert "ulimit -n" in caplog.text
            for _ in range(100):
                if protocols:
                    break
                await asyncio.sleep(0.02)
        assert len(protocols) == 1  # accepted once the pause ended
        writer.close()
    finally:
        listener.close()


async def test_close_stops_accepting(server: Server) -> None:
    server.listener.close()
    server.listener.close()
    with pytest.raises(OSError):
        await server.client()


def test_limits_follow_asyncio_rules() -> None:
    async def main() -> None:
        left, right = socket.socketpair()
        right.setblocking(False)
        proto = Recorder()
        poller = Poller(asyncio.get_running_loop())
        transport = FdTransport(poller, right.detach(), proto)
        transport.set_write_buffer_limits(high=1000)
        assert transport.get_write_buffer_limits() == (250, 1000)
        transport.set_write_buffer_limits(low=100)
        assert transport.get_write_buffer_limits() == (100, 400)
        with pytest.raises(ValueError):
            transport.set_write_buffer_limits(high=10, low=20)
        transport.abort()
        await proto.lost
        poller.release()
        left.close()

    asyncio.run(main())
