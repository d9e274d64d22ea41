"""RFC 6455 core of the member server, without sockets: handshake, frames."""

from __future__ import annotations

import os
import struct

import pytest

from liveclass.edge_node.wsproto import (
    Control,
    FrameParser,
    HandshakeError,
    Message,
    Opcode,
    ProtocolError,
    accept_key,
    close_frame,
    frame,
    parse_upgrade,
)
from liveclass.sdk.protocol import CloseCode

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def request(target: str = "/v1/ws?v=1&token=abc", **headers: str) -> bytes:
    base = {
        "Host": "edge",
        "Upgrade": "websocket",
        "Connection": "keep-alive, Upgrade",
        "Sec-WebSocket-Key": KEY,
        "Sec-WebSocket-Version": "13",
    }
    base.update({k.replace("_", "-"): v for k, v in headers.items()})
    lines = [f"GET {target} HTTP/1.1"] + [f"{k}: {v}" for k, v in base.items() if v]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def client_frame(opcode: int, payload: bytes, fin: bool = True, rsv: int = 0) -> bytes:
    """A masked client frame (section 5.3)."""
    mask = os.urandom(4)
    n = len(payload)
    first = (0x80 if fin else 0) | rsv | opcode
    if n < 126:
        head = bytes((first, 0x80 | n))
    elif n < 1 << 16:
        head = struct.pack("!BBH", first, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


# --- handshake ----------------------------------------------------------------


def test_accept_key_is_the_rfc_example() -> None:
    # Section 1.3 gives this key and its answer.
    assert accept_key(KEY) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_upgrade_is_accepted_with_its_query() -> None:
    upgrade = parse_upgrade(request("/v1/ws?v=1&token=a.b-c_d&last_seq="))
    assert upgrade.accept == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert upgrade.query == {"v": "1", "token": "a.b-c_d", "last_seq": ""}
    quoted = parse_upgrade(request("/v1/ws?class_id=a%20b&v=1"))
    assert quoted.query == {"class_id": "a b", "v": "1"}


@pytest.mark.parametrize(
    ("upgrade", "connection"),
    [
        ("websocket", "Upgrade"),
        ("WebSocket", "upgrade"),
        ("websocket", "keep-alive, Upgrade"),
        ("h2c, websocket", "Upgrade , keep-alive"),
    ],
)
def test_upgrade_and_connection_tokens_match_in_any_case_and_place(
    upgrade: str, connection: str
) -> None:
    head = request(Upgrade=upgrade, Connection=connection)
    assert parse_upgrade(head).query == {"v": "1", "token": "abc"}


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (request(Upgrade=""), 426),
        (request(Upgrade="h2c"), 426),
        (request(Connection="keep-alive"), 400),
        (request(Sec_WebSocket_Version="8"), 426),
        (request(Sec_WebSocket_Key="c2hvcnQ="), 400),
        (request(Sec_WebSocket_Key=""), 400),
        (request().replace(b"GET", b"POST", 1), 405),
        (request().replace(b"HTTP/1.1", b"HTTP/1.0", 1), 400),
        (b"GET\r\n\r\n", 400),
    ],
)
def test_bad_upgrades_are_refused_with_a_status(head: bytes, status: int) -> None:
    with pytest.raises(HandshakeError) as caught:
        parse_upgrade(head)
    assert caught.value.status == status
    response = caught.value.response()
    assert response.startswith(f"HTTP/1.1 {status} ".encode())
    if status == 426:
        # Section 4.4: the server says which version it speaks.
        assert b"Sec-WebSocket-Version: 13\r\n" in response


# --- frames -------------------------------------------------------------------


def parser() -> FrameParser:
    return FrameParser(max_size=1024)


def test_masked_text_and_binary_messages() -> None:
    p = parser()
    data = client_frame(Opcode.TEXT, "héllo".encode()) + client_frame(
        Opcode.BINARY, b"\x00\x01"
    )
    assert p.feed(data) == [
        Message(Opcode.TEXT, "héllo"),
        Message(Opcode.BINARY, b"\x00\x01"),
    ]
    assert p.idle


def test_frames_split_anywhere_still_parse() -> None:
    p = parser()
    first = client_frame(Opcode.TEXT, b"x" * 300)
    data = first + client_frame(Opcode.PING, b"hi")
    events = []
    for i in range(len(data)):
        events += p.feed(data[i : i + 1])
        # Nothing is held between frames: an idle parser can be dropped.
        assert p.idle == (i in (len(first) - 1, len(data) - 1))
    assert events == [Message(Opcode.TEXT, "x" * 300), Control(Opcode.PING, b"hi")]


def test_fragmented_message_with_a_control_frame_between() -> None:
    # Section 5.4: control frames may be injected amid fragments.
    p = parser()
    text = "a fragmented é message".encode()
    data = (
        client_frame(Opcode.TEXT, text[:5], fin=False)
        + client_frame(Opcode.PING, b"p")
        + client_frame(Opcode.CONTINUATION, text[5:13], fin=False)
        + client_frame(Opcode.CONTINUATION, text[13:])
    )
    assert p.feed(data) == [
        Control(Opcode.PING, b"p"),
        Message(Opcode.TEXT, text.decode()),
    ]


def test_utf8_is_checked_on_the_whole_message() -> None:
    # A character split across fragments is fine (section 5.6).
    p = parser()
    text = "é".encode()
    data = client_frame(Opcode.TEXT, text[:1], fin=False) + client_frame(
        Opcode.CONTINUATION, text[1:]
    )
    assert p.feed(data) == [Message(Opcode.TEXT, "é")]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        # Section 5.1: an unmasked client frame.
        (bytes((0x81, 2)) + b"hi", CloseCode.PROTOCOL_ERROR),
        # Section 5.2: reserved bits without an extension.
        (client_frame(Opcode.TEXT, b"hi", rsv=0x40), CloseCode.PROTOCOL_ERROR),
        (client_frame(0x3, b"hi"), CloseCode.PROTOCOL_ERROR),
        (client_frame(Opcode.CONTINUATION, b"hi"), CloseCode.PROTOCOL_ERROR),
        (
            client_frame(Opcode.TEXT, b"a", fin=False)
            + client_frame(Opcode.TEXT, b"b"),
            CloseCode.PROTOCOL_ERROR,
        ),
        # Section 5.5: control frames are short and never fragmented.
        (client_frame(Opcode.PING, b"x" * 126), CloseCode.PROTOCOL_ERROR),
        (client_frame(Opcode.PING, b"x", fin=False), CloseCode.PROTOCOL_ERROR),
        # Section 8.1: text must be UTF-8.
        (client_frame(Opcode.TEXT, b"\xff\xfe"), 1007),
        (client_frame(Opcode.TEXT, "é".encode()[:1]), 1007),
        # Section 7.4: undefined and reserved close codes.
        (client_frame(Opcode.CLOSE, struct.pack("!H", 1005)), CloseCode.PROTOCOL_ERROR),
        (client_frame(Opcode.CLOSE, struct.pack("!H", 2999)), CloseCode.PROTOCOL_ERROR),
        (client_frame(Opcode.CLOSE, b"\x03"), CloseCode.PROTOCOL_ERROR),
        (client_frame(Opcode.CLOSE, struct.pack("!H", 1000) + b"\xff"), 1007),
    ],
)
def test_protocol_violations_name_their_close_code(data: bytes, code: int) -> None:
    with pytest.raises(ProtocolError) as caught:
        parser().feed(data)
    assert caught.value.code == code


def test_oversized_message_is_refused_before_its_payload_arrives() -> None:
    head = client_frame(Opcode.TEXT, b"x" * 2000)[:8]  # header and mask only
    with pytest.raises(ProtocolError) as caught:
        parser().feed(head)
    assert caught.value.code == CloseCode.MESSAGE_TOO_BIG


def test_fragments_count_toward_the_size_limit() -> None:
    p = parser()
    p.feed(client_frame(Opcode.TEXT, b"x" * 1000, fin=False))
    with pytest.raises(ProtocolError) as caught:
        p.feed(client_frame(Opcode.CONTINUATION, b"x" * 100))
    assert caught.value.code == CloseCode.MESSAGE_TOO_BIG


def test_close_frames_carry_code_and_reason() -> None:
    p = parser()
    payload = struct.pack("!H", 4001) + "bye é".encode()
    assert p.feed(client_frame(Opcode.CLOSE, payload)) == [
        Control(Opcode.CLOSE, payload, 4001, "bye é")
    ]
    assert p.feed(client_frame(Opcode.CLOSE, b"")) == [Control(Opcode.CLOSE)]


def test_server_frames_are_unmasked_with_the_right_length_form() -> None:
    for n, header in ((10, 2), (200, 4), (70_000, 10)):
        data = frame(Opcode.TEXT, b"y" * n)
        assert data[0] == 0x81 and not data[1] & 0x80
        assert len(data) == header + n


def test_close_reason_is_cut_on_a_character_boundary() -> None:
    data = close_frame(4009, "é" * 100)
    assert len(data) <= 2 + 125
    code = struct.unpack("!H", data[2:4])[0]
    assert code == 4009
    data[4:].decode("utf-8")  # still valid UTF-8
