"""The member server over real sockets: handshake, hand-off, slow readers."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port

from liveclass.edge_node import wsserver
from liveclass.edge_node.app import MEMBERS_KEY, EdgeRunner, run_edge
from liveclass.edge_node.config import EdgeConfig
from liveclass.origin.classlog import MemoryClassLog
from liveclass.origin.contract import LogEvent, presence_events
from liveclass.origin.tokens import KeyRing
from liveclass.sdk.protocol import CloseCode, Frame, Role

TIMEOUT = 10.0


class RawClient:
    """A WebSocket client written out by hand, to control every byte."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, rcvbuf: int | None = None) -> RawClient:
        sock = socket.socket()
        if rcvbuf:
            # A small window: a client that stops reading fills it at once.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=16 * 1024)
        return cls(reader, writer)

    async def upgrade(self, query: str) -> bytes:
        key = base64.b64encode(os.urandom(16)).decode()
        self.writer.write(
            f"GET /v1/ws?{query} HTTP/1.1\r\nHost: edge\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        return head

    async def frame(self) -> tuple[int, bytes]:
        read = self.reader.readexactly
        b0, b1 = await asyncio.wait_for(read(2), TIMEOUT)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", await read(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", await read(8))[0]
        return b0 & 0x0F, await read(n)

    def send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        n = len(payload)
        head = (
            bytes((0x80 | opcode, 0x80 | n))
            if n < 126
            else struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        )
        self.writer.write(head + mask + masked)

    async def until_close(self) -> tuple[int, str, list[Frame]]:
        frames = []
        while True:
            opcode, payload = await self.frame()
            if opcode == 0x8:
                code = struct.unpack("!H", payload[:2])[0]
                return code, payload[2:].decode(), frames
            if opcode == 0x1:
                frames.append(Frame.model_validate_json(payload))


async def start_edge(tmp_path: Path, **options: Any) -> EdgeRunner:
    """An edge on a free port with the in-process log, no media work and no
    origin (keys are given to its verifier by the caller)."""
    config = EdgeConfig(
        port=free_port(),
        origin_url=f"http://127.0.0.1:{free_port()}",
        data_dir=tmp_path,
        transcode=False,
        **options,
    )
    return await run_edge(config, MemoryClassLog())


@pytest.fixture
async def edge(tmp_path: Path, keyring: KeyRing) -> AsyncIterator[EdgeRunner]:
    runner = await start_edge(tmp_path)
    runner.node.verifier.update(keyring.public_keys())
    yield runner
    await runner.stop()


def port_of(edge: EdgeRunner) -> int:
    return int(edge.url.rsplit(":", 1)[1])


def query(keyring: KeyRing, class_id: str, user: str, role: Role = Role.STUDENT) -> str:
    return f"v=1&token={keyring.mint(class_id, user, user.title(), role)}"


async def test_upgrade_answers_with_the_accept_key_and_a_welcome(
    edge: EdgeRunner, keyring: KeyRing, class_id: str
) -> None:
    client = await RawClient.open(port_of(edge))
    head = await client.upgrade(query(keyring, class_id, "ann"))
    assert head.startswith(b"HTTP/1.1 101 ")
    assert b"Sec-WebSocket-Accept: " in head
    opcode, payload = await client.frame()
    assert opcode == 0x1
    welcome = Frame.model_validate_json(payload)
    assert welcome.events[0].type == "welcome"
    assert welcome.events[0].data["member"]["user_id"] == "ann"

    # Section 5.5.2/5.5.3: a ping is answered with its payload.
    client.send(0x9, b"are you there")
    assert await client.frame() == (0xA, b"are you there")
    # Section 5.5.1: the close is echoed, then the server closes TCP.
    client.send(0x8, struct.pack("!H", 1000) + b"bye")
    opcode, payload = await client.frame()
    assert (opcode, payload[:2]) == (0x8, struct.pack("!H", 1000))
    assert await asyncio.wait_for(client.reader.read(), TIMEOUT) == b""
    for _ in range(100):
        if edge.node.connections == 0:
            break
        await asyncio.sleep(0.01)
    assert edge.node.connections == 0


async def test_plain_http_on_the_member_path_is_refused(edge: EdgeRunner) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(edge))
    writer.write(b"GET /v1/ws?v=1 HTTP/1.1\r\nHost: edge\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), TIMEOUT)
    assert answer.startswith(b"HTTP/1.1 426 ")
    assert b"Sec-WebSocket-Version: 13" in answer
    writer.close()


async def test_other_requests_are_handed_to_aiohttp_even_byte_by_byte(
    edge: EdgeRunner,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(edge))
    for byte in b"GET /v1/wsx HTTP/1.1\r\nHost: edge\r\n\r\n":
        writer.write(bytes((byte,)))
        await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    assert head.startswith(b"HTTP/1.1 404 ")
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n")
    rest = await asyncio.wait_for(reader.read(), TIMEOUT)
    assert b"HTTP/1.1 200 " in rest and b'"ok": true' in rest
    writer.close()


async def test_a_reader_that_stops_is_closed_as_too_slow_and_others_go_on(
    edge: EdgeRunner,
    keyring: KeyRing,
    class_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    limit = 64 * 1024
    monkeypatch.setattr(wsserver, "MAX_BUFFERED_BYTES", limit)
    monkeypatch.setattr(wsserver, "CLOSE_TIMEOUT_S", 30.0)
    port = port_of(edge)
    slow = await RawClient.open(port, rcvbuf=4096)
    await slow.upgrade(query(keyring, class_id, "slow"))
    fast = [await RawClient.open(port) for _ in range(3)]
    for i, client in enumerate(fast):
        await client.upgrade(query(keyring, class_id, f"fast{i}"))
    received: list[list[str]] = [[] for _ in fast]

    async def read(i: int) -> None:
        at = None
        while True:
            _, payload = await fast[i].frame()
            frame = Frame.model_validate_json(payload)
            if at is not None:
                assert frame.seq_from == at, "gap or overlap"
            at = frame.seq_to
            received[i] += [
                e.data["text"] for e in frame.events if e.type == "chat.message"
            ]

    readers = [asyncio.create_task(read(i)) for i in range(len(fast))]
    metrics = edge.node.metrics
    members = edge.app[MEMBERS_KEY]
    log = edge.node.log
    sent: list[str] = []
    most_buffered = 0
    try:
        for n in range(400):
            texts = [f"{n}-{i}:" + "x" * 480 for i in range(50)]
            entries = [
                LogEvent(type="chat.message", actor="tea", data={"text": t})
                for t in texts
            ]
            await log.append(class_id, entries)
            sent += texts
            await asyncio.sleep(0.01)
            for conn in members.connections:
                if conn.member.user_id == "slow" and conn.transport is not None:
                    buffered = conn.transport.get_write_buffer_size()
                    most_buffered = max(most_buffered, buffered)
            if metrics.closes[CloseCode.TOO_SLOW]:
                break
        assert metrics.closes[CloseCode.TOO_SLOW] == 1
        # Bounded: the limit plus at most one pass's frames.
        assert most_buffered <= limit + 64 * 1024
        for _ in range(300):
            if all(len(r) == len(sent) for r in received):
                break
            await asyncio.sleep(0.02)
        assert all(r == sent for r in received)
    finally:
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)

    # The slow reader gets what was buffered, then the reason.
    code, reason, frames = await slow.until_close()
    assert code == CloseCode.TOO_SLOW
    assert "last_seq" in reason
    assert frames[0].events[0].type == "welcome"
    # Its socket still counts against the edge's capacity until it closes.
    assert edge.node.connections == len(fast) + 1
    # Presence counts it out, as it counted it in.
    slow.writer.close()
    for _ in range(200):
        if edge.node.connections == len(fast):
            break
        await asyncio.sleep(0.02)
    assert edge.node.connections == len(fast)
    for _ in range(200):
        entries = await log.read(class_id, 0, 100_000)
        changes = [c for e in entries for c in presence_events(e)]
        left = [c for c in changes if c.type == "member.left"]
        if left:
            break
        await asyncio.sleep(0.02)
    assert [e.data["user_id"] for e in left] == ["slow"]


async def test_bad_input_closes_with_the_rfc_codes(
    edge: EdgeRunner, keyring: KeyRing, class_id: str
) -> None:
    port = port_of(edge)
    cases: list[tuple[bytes, int]] = [
        (b"\x81\x02hi", CloseCode.PROTOCOL_ERROR),  # unmasked (section 5.1)
        (b"\xff\xfe", 1007),  # not UTF-8 (section 8.1)
    ]
    for payload, code in cases:
        client = await RawClient.open(port)
        await client.upgrade(query(keyring, class_id, "eve"))
        await client.frame()  # welcome
        if payload.startswith(b"\x81"):
            client.writer.write(payload)
        else:
            client.send(0x1, payload)
        got, _, _ = await client.until_close()
        assert got == code
        client.writer.close()
    ok = await RawClient.open(port)
    await ok.upgrade(query(keyring, class_id, "ann"))
    await ok.frame()
    ok.send(0x1, json.dumps({"type": "chat.send", "text": "fine"}).encode())
    for _ in range(10):
        _, payload = await ok.frame()
        events: list[Any] = Frame.model_validate_json(payload).events
        if any(e.type == "chat.message" for e in events):
            break
    else:
        raise AssertionError("the chat message did not come back")


async def test_a_long_resume_is_not_taken_for_slowness(
    edge: EdgeRunner, keyring: KeyRing, class_id: str
) -> None:
    port = port_of(edge)
    ann = await RawClient.open(port)
    await ann.upgrade(query(keyring, class_id, "ann"))
    _, payload = await ann.frame()
    last_seq = Frame.model_validate_json(payload).seq_to
    ann.writer.close()
    texts = [f"{i}:" + "x" * 480 for i in range(2000)]  # about 1 MB
    await edge.node.log.append(
        class_id,
        [LogEvent(type="chat.message", actor="tea", data={"text": t}) for t in texts],
    )
    await asyncio.sleep(0.2)
    again = await RawClient.open(port, rcvbuf=4096)
    await again.upgrade(f"{query(keyring, class_id, 'ann')}&last_seq={last_seq}")
    got: list[str] = []
    while len(got) < len(texts):
        opcode, payload = await again.frame()
        assert opcode == 0x1, payload
        frame = Frame.model_validate_json(payload)
        got += [e.data["text"] for e in frame.events if e.type == "chat.message"]
    assert got == texts
    assert edge.node.metrics.closes[CloseCode.TOO_SLOW] == 0


async def test_a_message_sent_before_a_move_close_is_seen_is_kept(
    edge: EdgeRunner, keyring: KeyRing, class_id: str
) -> None:
    ann = await RawClient.open(port_of(edge))
    await ann.upgrade(query(keyring, class_id, "ann"))
    await ann.frame()  # the welcome
    edge.node.move_members()  # as a drain does: close with DRAINING
    # Crossing the close on the wire: sent before the client read it.
    ann.send(0x1, json.dumps({"type": "chat.send", "text": "in flight"}).encode())
    code, _reason, _frames = await ann.until_close()
    assert code == CloseCode.DRAINING
    log = edge.node.log
    texts: list[str] = []
    for _ in range(200):
        entries = await log.read(class_id, 0, 100)
        texts = [e.data["text"] for e in entries if e.type == "chat.message"]
        if texts:
            break
        await asyncio.sleep(0.01)
    assert texts == ["in flight"]


async def test_a_message_after_a_removal_close_is_dropped(
    edge: EdgeRunner, keyring: KeyRing, class_id: str
) -> None:
    ann = await RawClient.open(port_of(edge))
    await ann.upgrade(query(keyring, class_id, "ann"))
    await ann.frame()
    room = edge.node.rooms[class_id]
    for sinks in list(room.sinks.values()):
        for sink in sinks:
            sink.close(CloseCode.REMOVED, "removed")
    ann.send(0x1, json.dumps({"type": "chat.send", "text": "too late"}).encode())
    code, _reason, _frames = await ann.until_close()
    assert code == CloseCode.REMOVED
    await asyncio.sleep(0.3)  # more than a batcher tick
    entries = await edge.node.log.read(class_id, 0, 100)
    assert not [e for e in entries if e.type == "chat.message"]


async def test_keepalive_spreads_pings_and_cuts_a_silent_member(
    edge: EdgeRunner,
    keyring: KeyRing,
    class_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(wsserver, "KEEPALIVE_S", 0.4)
    monkeypatch.setattr(wsserver, "KEEPALIVE_SLICES", 4)
    port = port_of(edge)
    silent, lively = await RawClient.open(port), await RawClient.open(port)
    await silent.upgrade(query(keyring, class_id, "silent"))
    await lively.upgrade(query(keyring, class_id, "lively"))
    await silent.frame()  # the welcome; then it never answers a ping

    async def answer_pings() -> int:
        pings = 0
        while True:
            opcode, payload = await lively.frame()
            if opcode == 0x9:
                pings += 1
                lively.send(0xA, payload)
                if pings == 3:
                    return pings

    assert await asyncio.wait_for(answer_pings(), TIMEOUT) == 3
    # The silent one was pinged, said nothing for a round, and is cut: its
    # stream ends (read() returns at EOF) after the ping it never answered.
    rest = await asyncio.wait_for(silent.reader.read(), TIMEOUT)
    assert b"\x89\x00" in rest
    for _ in range(200):
        if edge.node.connections == 1:
            break
        await asyncio.sleep(0.01)
    assert edge.node.connections == 1


@pytest.fixture
async def hasty_edge(
    tmp_path: Path, keyring: KeyRing, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[EdgeRunner]:
    """An edge that gives a connection 0.4 s to send its request head."""
    monkeypatch.setattr(wsserver, "HANDSHAKE_TIMEOUT_S", 0.4)
    runner = await start_edge(tmp_path)
    runner.node.verifier.update(keyring.public_keys())
    yield runner
    await runner.stop()


async def test_a_request_that_never_ends_is_cut_and_members_stay(
    hasty_edge: EdgeRunner, keyring: KeyRing, class_id: str
) -> None:
    port = port_of(hasty_edge)
    member = await RawClient.open(port)
    await member.upgrade(query(keyring, class_id, "ann"))
    await member.frame()  # the welcome
    trickle = await RawClient.open(port)
    trickle.writer.write(b"GET /v1/ws?v=1&tok")  # and nothing more
    silent = await RawClient.open(port)  # sends nothing at all
    for client in (trickle, silent):
        assert await asyncio.wait_for(client.reader.read(), TIMEOUT) == b""
    assert hasty_edge.node.metrics.handshake_timeouts == 2
    assert "liveclass_edge_handshake_timeouts_total 2" in (
        hasty_edge.node.metrics.render()
    )
    # The member that finished its handshake long ago is still served.
    member.send(0x9, b"still here")
    assert await member.frame() == (0xA, b"still here")


async def test_a_member_that_floods_pings_and_never_reads_is_closed(
    edge: EdgeRunner, keyring: KeyRing, class_id: str
) -> None:
    flooder = await RawClient.open(port_of(edge), rcvbuf=4096)
    await flooder.upgrade(query(keyring, class_id, "flood"))
    await flooder.frame()
    # Each pong is 127 bytes: a few hundred fill the member's allowance.
    for _ in range(3000):
        flooder.send(0x9, b"p" * 125)
        await flooder.writer.drain()
        if edge.node.metrics.closes[CloseCode.TOO_SLOW]:
            break
    for _ in range(200):
        if edge.node.metrics.closes[CloseCode.TOO_SLOW]:
            break
        await asyncio.sleep(0.01)
    assert edge.node.metrics.closes[CloseCode.TOO_SLOW] == 1
    (conn,) = [c for c in edge.app[MEMBERS_KEY].connections]
    assert conn.transport is not None
    # Bounded: the allowance, the close frame and pongs already queued.
    assert conn.transport.get_write_buffer_size() < 2 * wsserver.MAX_BUFFERED_BYTES
    flooder.writer.close()


def test_requests_cut_short_after_the_hand_off_log_no_error(
    tmp_path: Path, keyring: KeyRing, caplog: pytest.LogCaptureFixture
) -> None:
    # On uvloop, the loop members are served on by default: an end of
    # stream or a reset right behind a request once reached aiohttp before
    # the request, which then failed with a traceback in the log.
    uvloop = pytest.importorskip("uvloop")

    async def main() -> None:
        runner = await start_edge(tmp_path)
        try:
            port = port_of(runner)
            for cut in ("eof", "reset") * 10:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: edge\r\n\r\n")
                if cut == "eof":
                    writer.write_eof()
                    await asyncio.wait_for(reader.read(), TIMEOUT)
                else:
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    writer.transport.abort()
                writer.close()
            await asyncio.sleep(0.3)
            # And the port still answers whole requests.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: edge\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
            assert head.startswith(b"HTTP/1.1 200 ")
            writer.close()
            assert not runner.app[MEMBERS_KEY].connections
        finally:
            await runner.stop()

    with caplog.at_level(logging.ERROR):
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as run:
            run.run(main())
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_half_requests_reset_at_once_do_not_keep_descriptors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On uvloop, a reset that arrives with the first bytes of a request
    # stops the descriptor's watcher without a word: only the deadline on
    # requests lets such connections go.
    uvloop = pytest.importorskip("uvloop")
    monkeypatch.setattr(wsserver, "HANDSHAKE_TIMEOUT_S", 0.4)

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    async def main() -> None:
        runner = await start_edge(tmp_path)
        try:
            await asyncio.sleep(0.1)
            before = open_fds()
            for _ in range(20):
                sock = socket.create_connection(("127.0.0.1", port_of(runner)))
                sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                sock.send(b"GET /v1/ws?v=1&tok")
                sock.close()  # a reset, right behind the bytes
            for _ in range(300):
                if not runner.app[MEMBERS_KEY].connections:
                    break
                await asyncio.sleep(0.01)
            assert not runner.app[MEMBERS_KEY].connections
            assert open_fds() <= before
            assert runner.node.metrics.handshake_timeouts <= 20
        finally:
            await runner.stop()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as run:
        run.run(main())


async def test_a_reader_that_stops_is_closed_as_too_slow_over_tls_too(
    tmp_path: Path,
    keyring: KeyRing,
    class_id: str,
    tls_files: tuple[Path, Path],
) -> None:
    # TLS keeps the event loop's transports: their buffer must bound a
    # member that stops reading as the descriptor transport does.
    import ssl
    import threading

    cert, key = tls_files
    runner = await start_edge(tmp_path, tls_cert=cert, tls_key=key)
    runner.node.verifier.update(keyring.public_keys())
    stop = threading.Event()
    welcomed = threading.Event()

    def stop_reading_after_the_welcome() -> None:
        context = ssl.create_default_context(cafile=str(cert))
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.connect(("127.0.0.1", port_of(runner)))
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            key64 = base64.b64encode(os.urandom(16)).decode()
            request = (
                f"GET /v1/ws?{query(keyring, class_id, 'slow')} HTTP/1.1\r\n"
                "Host: edge\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key64}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            tls.sendall(request.encode())
            got = b""
            while b'"welcome"' not in got:
                got += tls.recv(4096)
            welcomed.set()
            stop.wait(TIMEOUT)  # and never read again

    thread = threading.Thread(target=stop_reading_after_the_welcome)
    thread.start()
    try:
        assert await asyncio.to_thread(welcomed.wait, TIMEOUT)
        metrics = runner.node.metrics
        most_buffered = 0
        for n in range(400):
            entries = [
                LogEvent(
                    type="chat.message", actor="tea", data={"text": f"{n}-{i}" * 60}
                )
                for i in range(50)
            ]
            await runner.node.log.append(class_id, entries)
            await asyncio.sleep(0.01)
            for conn in runner.app[MEMBERS_KEY].connections:
                if conn.transport is not None:
                    buffered = conn.transport.get_write_buffer_size()
                    most_buffered = max(most_buffered, buffered)
            if metrics.closes[CloseCode.TOO_SLOW]:
                break
        assert metrics.closes[CloseCode.TOO_SLOW] == 1
        assert most_buffered <= wsserver.MAX_BUFFERED_BYTES + 64 * 1024
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, TIMEOUT)
        await runner.stop()
