"""Bare asyncio: a hand-written RFC 6455 server that frames each message once.

The upgrade and the frame parser are the minimum a broadcast needs; every
message a client sends is framed once and written to every transport.
Nothing bounds what a transport buffers for a reader that does not read.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import struct

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

CLIENTS: set[asyncio.Transport] = set()
"""The transports of every upgraded connection."""


def frame(opcode: int, payload: bytes) -> bytes:
    """An unmasked server frame (RFC 6455 section 5.2)."""
    n = len(payload)
    if n < 126:
        return struct.pack("!BB", 0x80 | opcode, n) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 126, n) + payload
    return struct.pack("!BBQ", 0x80 | opcode, 127, n) + payload


def unmask(key: bytes, data: bytes) -> bytes:
    """Undo a client's masking (RFC 6455 section 5.3) with one big XOR."""
    n = len(data)
    repeated = (key * (n // 4 + 1))[:n]
    value = int.from_bytes(data, "big") ^ int.from_bytes(repeated, "big")
    return value.to_bytes(n, "big")


class Peer(asyncio.Protocol):
    """One client connection: the upgrade, then frames."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.upgraded = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Remember the transport; the upgrade comes with the first bytes."""
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the client."""
        if self.transport is not None:
            CLIENTS.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        """Handle the upgrade request, then every complete frame."""
        assert self.transport is not None
        self.buf += data
        if not self.upgraded:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            key = b""
            for line in bytes(self.buf[:end]).split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"sec-websocket-key":
                    key = value.strip()
            del self.buf[: end + 4]
            accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
            self.transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            self.upgraded = True
            CLIENTS.add(self.transport)
        self._frames()

    def _frames(self) -> None:
        buf = self.buf
        while len(buf) >= 6:
            opcode = buf[0] & 0x0F
            n = buf[1] & 0x7F
            at = 2
            if n == 126:
                n, at = struct.unpack_from("!H", buf, 2)[0], 4
            elif n == 127:
                n, at = struct.unpack_from("!Q", buf, 2)[0], 10
            if len(buf) < at + 4 + n:
                return
            payload = unmask(bytes(buf[at : at + 4]), bytes(buf[at + 4 : at + 4 + n]))
            del buf[: at + 4 + n]
            if opcode == 0x1:
                data = frame(0x1, payload)
                for transport in CLIENTS:
                    transport.write(data)
            elif opcode == 0x8:
                assert self.transport is not None
                self.transport.write(frame(0x8, payload[:2]))
                self.transport.close()
            elif opcode == 0x9:
                assert self.transport is not None
                self.transport.write(frame(0xA, payload))


async def serve(host: str, port: int) -> None:
    """Serve until killed."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Peer, host, port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port))
