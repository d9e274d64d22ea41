"""RFC 6455 without I/O: the opening handshake and the framing, as data.

The member server feeds bytes in and writes bytes out; everything here is
plain functions and one parser class, testable without a socket. Only the
server role is implemented: client frames must be masked, server frames are
not (section 5.1).
"""

from __future__ import annotations

import base64
import hashlib
import struct
from dataclasses import dataclass
from enum import IntEnum
from urllib.parse import parse_qsl

from liveclass.sdk.protocol import CloseCode

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
"""The constant that section 1.3 appends to the client's key."""

MAX_HANDSHAKE_BYTES = 16 * 1024
"""The largest opening handshake request accepted; join tokens are ~1 KB."""


class Opcode(IntEnum):
    """Frame opcodes (section 5.2)."""

    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


# --- opening handshake (section 4) ------------------------------------------


class HandshakeError(Exception):
    """An upgrade request the server must refuse with an HTTP status."""

    def __init__(self, status: int, reason: str, headers: str = "") -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers

    def response(self) -> bytes:
        """The HTTP response that refuses the upgrade."""
        body = self.reason.encode()
        return (
            f"HTTP/1.1 {self.status} {_STATUS.get(self.status, 'Error')}\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\n{self.headers}"
            "Connection: close\r\n\r\n"
        ).encode() + body


_STATUS = {400: "Bad Request", 426: "Upgrade Required", 405: "Method Not Allowed"}


@dataclass(frozen=True)
class Upgrade:
    """A valid upgrade request: its query parameters and accept key."""

    query: dict[str, str]
    accept: str


def accept_key(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a client's ``Sec-WebSocket-Key`` (4.2.2)."""
    # SHA-1 because section 4.2.2 says so; it is a digest here, not a MAC.
    digest = hashlib.sha1(key.encode() + GUID).digest()
    return base64.b64encode(digest).decode()


def parse_upgrade(head: bytes) -> Upgrade:
    """Check an opening handshake (section 4.2.1), headers included.

    ``head`` is the request up to and including the blank line. Raises
    :class:`HandshakeError` with the status to answer.
    """
    try:
        text = head.decode("latin-1")
        request_line, *lines = text.split("\r\n")
        method, target, version = request_line.split(" ")
    except ValueError:
        raise HandshakeError(400, "malformed request line") from None
    if method != "GET":
        raise HandshakeError(405, "a WebSocket upgrade is a GET", "Allow: GET\r\n")
    if version != "HTTP/1.1":
        raise HandshakeError(400, "a WebSocket upgrade needs HTTP/1.1")
    headers: dict[str, str] = {}
    for line in lines:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise HandshakeError(400, "malformed header line")
        name = name.strip().lower()
        value = value.strip()
        # Repeated headers fold into one list, as HTTP allows (RFC 9110 5.3).
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    if not _has_token(headers.get("upgrade", ""), "websocket"):
        raise HandshakeError(426, "this endpoint only speaks WebSocket", _V13)
    if not _has_token(headers.get("connection", ""), "upgrade"):
        raise HandshakeError(400, "Connection header must include Upgrade")
    if headers.get("sec-websocket-version") != "13":
        # Section 4.4: say which version this server speaks.
        raise HandshakeError(426, "WebSocket version 13 only", _V13)
    key = headers.get("sec-websocket-key", "")
    try:
        raw_key = base64.b64decode(key, validate=True)
    except ValueError:
        raw_key = b""
    if len(raw_key) != 16:
        raise HandshakeError(400, "Sec-WebSocket-Key must be 16 bytes in base64")
    _, _, query_text = target.partition("?")
    return Upgrade(_query(query_text), accept_key(key))


def _query(text: str) -> dict[str, str]:
    # Tokens are base64url: nothing to unquote, and splitting is 5x faster.
    if "%" in text or "+" in text:
        return dict(parse_qsl(text, keep_blank_values=True))
    query: dict[str, str] = {}
    for pair in text.split("&"):
        if pair:
            name, _, value = pair.partition("=")
            query[name] = value  # the last one wins, as with parse_qsl
    return query


_V13 = "Sec-WebSocket-Version: 13\r\n"


def _has_token(value: str, token: str) -> bool:
    """Whether the comma-separated list ``value`` holds ``token``, in any
    case; most clients send the token alone."""
    value = value.lower()
    return value == token or token in [t.strip() for t in value.split(",")]


def accept_response(accept: str) -> bytes:
    """The ``101 Switching Protocols`` answer (section 4.2.2, step 5).

    No extension and no subprotocol is agreed: per-message deflate would
    cost a zlib state per connection, far more than the frames it saves.
    """
    return (
        "HTTP/1.1 101 Switching Protocols\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
    ).encode()


# --- framing (section 5) ----------------------------------------------------


def frame(opcode: int, payload: bytes) -> bytes:
    """One final, unmasked server frame (section 5.2)."""
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, n)) + payload
    if n < 1 << 16:
        return struct.pack("!BBH", 0x80 | opcode, 126, n) + payload
    return struct.pack("!BBQ", 0x80 | opcode, 127, n) + payload


def text_frame(text: str) -> bytes:
    """A text message as one frame."""
    return frame(Opcode.TEXT, text.encode())


def close_frame(code: int, reason: str = "") -> bytes:
    """A close frame with a status code and a reason (sections 5.5.1, 7.4).

    The reason is cut to fit the 125-byte control payload, on a character
    boundary so it stays valid UTF-8.
    """
    raw = reason.encode()[:123].decode("utf-8", "ignore").encode()
    return frame(Opcode.CLOSE, struct.pack("!H", code) + raw)


class ProtocolError(Exception):
    """The peer broke RFC 6455; the connection is closed with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Message:
    """A complete data message (text as str, binary as bytes)."""

    opcode: Opcode
    data: str | bytes


@dataclass(frozen=True, slots=True)
class Control:
    """A ping, pong or close frame; close carries code and reason."""

    opcode: Opcode
    payload: bytes = b""
    code: int | None = None
    reason: str = ""


Event = Message | Control


def _unmask(payload: bytes | bytearray, mask: bytes) -> bytes:
    # XOR as one big integer: far faster in CPython than a byte loop.
    n = len(payload)
    if n == 0:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    value = int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")
    return value.to_bytes(n, "little")


class FrameParser:
    """Turns the bytes a client sends into :data:`Event` objects.

    Enforces section 5: masking (5.1), reserved bits (5.2), control frames
    of 125 bytes at most and never fragmented (5.5), continuation order
    (5.4), UTF-8 text (8.1), close codes (7.4); and the message size limit
    (1009). Raises :class:`ProtocolError` on a violation; after that the
    parser must not be fed again.
    """

    __slots__ = ("_buffer", "_fragment_opcode", "_fragments", "_size", "max_size")

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._buffer = bytearray()
        self._fragments: list[bytes] = []
        self._fragment_opcode: Opcode | None = None
        self._size = 0

    @property
    def idle(self) -> bool:
        """Whether no partial frame or message is held (it can be dropped)."""
        return not self._buffer and self._fragment_opcode is None

    def feed(self, data: bytes) -> list[Event]:
        """Parse ``data``; return the complete events it finishes."""
        buf = self._buffer
        buf += data
        events: list[Event] = []
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            if b0 & 0x70:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "reserved bits set")
            if not b1 & 0x80:
                raise ProtocolError(
                    CloseCode.PROTOCOL_ERROR, "client frames must be masked"
                )
            length = b1 & 0x7F
            head = 6
            if length == 126:
                if end - pos < 8:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                head = 8
            elif length == 127:
                if end - pos < 14:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 14
            opcode = b0 & 0x0F
            if opcode < 8 and self._size + length > self.max_size:
                # Refuse before buffering: a claimed length costs nothing.
                raise ProtocolError(
                    CloseCode.MESSAGE_TOO_BIG,
                    f"messages are at most {self.max_size} bytes",
                )
            if end - pos < head + length:
                break
            mask = bytes(buf[pos + head - 4 : pos + head])
            payload = _unmask(buf[pos + head : pos + head + length], mask)
            pos += head + length
            event = self._frame(bool(b0 & 0x80), opcode, payload)
            if event is not None:
                events.append(event)
        del buf[:pos]
        return events

    def _frame(self, fin: bool, opcode: int, payload: bytes) -> Event | None:
        if opcode >= 8:
            return _control(fin, opcode, payload)
        if opcode == Opcode.CONTINUATION:
            if self._fragment_opcode is None:
                raise ProtocolError(
                    CloseCode.PROTOCOL_ERROR, "continuation without a message"
                )
        elif opcode in (Opcode.TEXT, Opcode.BINARY):
            if self._fragment_opcode is not None:
                raise ProtocolError(
                    CloseCode.PROTOCOL_ERROR, "new message inside a fragmented one"
                )
            if fin:
                return _message(Opcode(opcode), payload)
            self._fragment_opcode = Opcode(opcode)
        else:
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, f"unknown opcode {opcode}")
        self._fragments.append(payload)
        self._size += len(payload)
        if not fin:
            return None
        kind = self._fragment_opcode
        assert kind is not None
        data = b"".join(self._fragments)
        self._fragments = []
        self._fragment_opcode = None
        self._size = 0
        return _message(kind, data)


def _message(opcode: Opcode, payload: bytes) -> Message:
    if opcode is Opcode.BINARY:
        return Message(opcode, payload)
    try:
        return Message(opcode, payload.decode("utf-8"))
    except UnicodeDecodeError:
        # Section 8.1: invalid UTF-8 in a text message fails the connection.
        raise ProtocolError(1007, "text message is not valid UTF-8") from None


_VALID_CLOSE = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011})


def _control(fin: bool, opcode: int, payload: bytes) -> Control:
    if not fin or len(payload) > 125:
        raise ProtocolError(
            CloseCode.PROTOCOL_ERROR, "control frames are final and short (5.5)"
        )
    if opcode == Opcode.PING:
        return Control(Opcode.PING, payload)
    if opcode == Opcode.PONG:
        return Control(Opcode.PONG, payload)
    if opcode != Opcode.CLOSE:
        raise ProtocolError(CloseCode.PROTOCOL_ERROR, f"unknown opcode {opcode}")
    if not payload:
        return Control(Opcode.CLOSE, payload, None)
    if len(payload) == 1:
        raise ProtocolError(CloseCode.PROTOCOL_ERROR, "close payload of one byte")
    code = int.from_bytes(payload[:2], "big")
    # Section 7.4: only defined codes and the 3000-4999 ranges may be sent.
    if code not in _VALID_CLOSE and not 3000 <= code <= 4999:
        raise ProtocolError(CloseCode.PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(1007, "close reason is not valid UTF-8") from None
    return Control(Opcode.CLOSE, payload, code, reason)
