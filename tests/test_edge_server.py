"""The edge end to end: real sockets, a real class log, real tokens."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from conftest import free_port

from liveclass.edge_node.app import EdgeRunner, run_edge
from liveclass.edge_node.config import EdgeConfig
from liveclass.edge_node.node import DRAINING_REASON
from liveclass.origin.classlog import ClassLog, MemoryClassLog
from liveclass.origin.contract import LogEvent, presence_events
from liveclass.origin.tokens import KeyRing
from liveclass.sdk.protocol import (
    MAX_FRAME_BYTES,
    MAX_REF_CHARS,
    CloseCode,
    Frame,
    Role,
)

TIMEOUT = 5.0


class StubMedia:
    """Stands in for the media service: these tests are about members."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    async def on_log_event(self, class_id: str, event: Any) -> None:
        self.seen.append((class_id, event.type))

    async def close(self) -> None:
        pass


@pytest.fixture(autouse=True)
def media(monkeypatch: pytest.MonkeyPatch) -> StubMedia:
    stub = StubMedia()
    module = types.ModuleType("liveclass.edge_node.media")
    module.setup_media = lambda app, ctx: stub  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "liveclass.edge_node.media", module)
    return stub


class Origin:
    """A tiny origin: public keys, edge registry, heartbeats."""

    def __init__(self, keyring: KeyRing) -> None:
        self.keyring = keyring
        self.registered: list[dict[str, Any]] = []
        self.heartbeats: list[dict[str, Any]] = []
        self.auth: list[str | None] = []
        self.drain_requested = False
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/keys", self._keys)
        app.router.add_post("/v1/edges", self._register)
        app.router.add_post("/v1/edges/{edge_id}/heartbeat", self._heartbeat)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _keys(self, request: web.Request) -> web.Response:
        return web.json_response(self.keyring.public_keys())

    async def _register(self, request: web.Request) -> web.Response:
        self.auth.append(request.headers.get("Authorization"))
        self.registered.append(await request.json())
        return web.json_response({"ok": True})

    async def _heartbeat(self, request: web.Request) -> web.Response:
        self.heartbeats.append(await request.json())
        return web.json_response({"drain_requested": self.drain_requested})


class Client:
    """One member's socket; checks that frames are well formed and contiguous."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.last_seq: int | None = None
        self.frames: list[Frame] = []
        self._pending: list[Any] = []

    async def frame(self) -> Frame:
        msg = await asyncio.wait_for(self.ws.receive(), TIMEOUT)
        assert msg.type is WSMsgType.TEXT, (msg.type, msg.data, msg.extra)
        frame = Frame.model_validate_json(msg.data)
        if frame.seq_from is not None:
            if self.last_seq is not None:
                assert frame.seq_from == self.last_seq, "gap or overlap"
            self.last_seq = frame.seq_to
        self.frames.append(frame)
        return frame

    async def event(self, type_: str, **data: Any) -> Any:
        """The next event of ``type_`` whose data contains ``data``; events
        skipped on the way are dropped, later ones of the frame are kept."""
        while True:
            while self._pending:
                event = self._pending.pop(0)
                if event.type == type_ and all(
                    event.data.get(k) == v for k, v in data.items()
                ):
                    return event
            self._pending = list((await self.frame()).events)

    async def send(self, **msg: Any) -> None:
        await self.ws.send_str(json.dumps(msg))

    async def closed(self) -> tuple[int | None, str]:
        """Read until the edge closes; the close code and reason."""
        while True:
            msg = await asyncio.wait_for(self.ws.receive(), TIMEOUT)
            if msg.type is WSMsgType.CLOSE:
                # The code as the edge sent it: close_code may later say 1006
                # when the edge drops the TCP connection after its close frame.
                return int(msg.data), str(msg.extra or "")
            if msg.type in (WSMsgType.CLOSED, WSMsgType.CLOSING):
                return self.ws.close_code, ""


Connect = Callable[..., Awaitable[Client]]


@pytest.fixture
async def origin(keyring: KeyRing) -> AsyncIterator[Origin]:
    o = Origin(keyring)
    await o.start()
    yield o
    await o.stop()


@pytest.fixture
async def start_edge(
    origin: Origin, tmp_path: Any
) -> AsyncIterator[Callable[..., Awaitable[EdgeRunner]]]:
    runners: list[EdgeRunner] = []

    async def start(log: ClassLog, edge_id: str = "edge-a", **kw: Any) -> EdgeRunner:
        config = EdgeConfig(
            edge_id=edge_id,
            port=free_port(),
            origin_url=origin.url,
            edge_key="secret",
            data_dir=tmp_path / edge_id,
            heartbeat_s=0.1,
            transcode=False,
            **kw,
        )
        runner = await run_edge(config, log)
        runners.append(runner)
        for _ in range(100):  # the first key fetch runs in the background
            if runner.node.verifier.kids:
                break
            await asyncio.sleep(0.02)
        return runner

    yield start
    for runner in runners:
        await runner.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def connect(http: aiohttp.ClientSession, keyring: KeyRing, class_id: str) -> Connect:
    async def connect_(
        edge: EdgeRunner,
        user: str,
        role: Role = Role.STUDENT,
        *,
        token: str | None = None,
        welcome: bool = True,
        **query: Any,
    ) -> Client:
        if token is None:
            token = keyring.mint(class_id, user, user.title(), role)
        params = {"token": token, "v": "1"} | {k: str(v) for k, v in query.items()}
        ws = await http.ws_connect(f"{edge.url}/v1/ws", params=params)
        client = Client(ws)
        if welcome:
            first = await client.frame()
            assert first.events[0].type == "welcome"
        return client

    return connect_


async def test_join_chat_and_staff_only_events(
    start_edge: Any, connect: Connect, origin: Origin, media: StubMedia
) -> None:
    edge = await start_edge(MemoryClassLog())
    teacher = await connect(edge, "tea", Role.TEACHER)
    welcome = teacher.frames[0].events[0]
    assert welcome.data["member"] == {
        "user_id": "tea",
        "name": "Tea",
        "role": "teacher",
    }
    assert welcome.data["edge_id"] == "edge-a"
    ann = await connect(edge, "ann")
    joined = await teacher.event("member.joined", user_id="ann")
    assert joined.data["role"] == "student"

    await ann.send(type="chat.send", text="hello", ref="r1")
    got = await teacher.event("chat.message")
    assert got.data == {"text": "hello", "name": "Ann", "role": "student", "ref": "r1"}
    assert got.actor == "ann" and got.seq is not None
    mine = await ann.event("chat.message")
    assert mine.seq == got.seq
    # Students never saw staff-only entries.
    assert not [e for f in ann.frames for e in f.events if e.type.startswith("member.")]
    assert ("tea", "chat.message") not in media.seen
    assert any(t == "chat.message" for _, t in media.seen)
    assert origin.registered[0]["edge_id"] == "edge-a"
    assert origin.auth[0] == "Bearer secret"


async def test_resume_gets_exactly_the_missed_events(
    start_edge: Any, connect: Connect
) -> None:
    edge = await start_edge(MemoryClassLog())
    tea = await connect(edge, "tea", Role.TEACHER)
    ann = await connect(edge, "ann")
    await tea.send(type="chat.send", text="before")
    await ann.event("chat.message", text="before")
    seen = ann.last_seq
    await ann.ws.close()

    for i in range(3):
        await tea.send(type="chat.send", text=f"missed {i}")
        await tea.event("chat.message", text=f"missed {i}")

    again = await connect(edge, "ann", welcome=False, last_seq=seen)
    again.last_seq = seen
    texts: list[str] = []
    while len(texts) < 3:
        frame = await again.frame()
        assert all(e.type != "welcome" for e in frame.events)
        texts += [e.data["text"] for e in frame.events if e.type == "chat.message"]
    assert texts == ["missed 0", "missed 1", "missed 2"]
    await tea.send(type="chat.send", text="after")
    assert (await again.event("chat.message")).data["text"] == "after"


async def test_late_joiner_snapshot(start_edge: Any, connect: Connect) -> None:
    edge = await start_edge(MemoryClassLog())
    tea = await connect(edge, "tea", Role.TEACHER)
    ann = await connect(edge, "ann")
    await tea.send(type="poll.open", question="Q?", options=["a", "b"])
    opened = await ann.event("poll.opened")
    await ann.send(type="poll.vote", poll_id=opened.data["poll_id"], option=1)
    await tea.event("poll.tally", counts=[0, 1])
    await ann.send(type="hand.raise")
    await ann.send(type="chat.send", text="first")
    await ann.event("chat.message")
    await tea.send(type="chat.slow_mode", seconds=3)
    await ann.event("chat.settings")

    bob = await connect(edge, "bob")
    snap = bob.frames[0].events[0].data["snapshot"]
    assert snap["poll"]["poll_id"] == opened.data["poll_id"]
    assert snap["poll"]["my_vote"] is None and "counts" not in snap["poll"]
    assert snap["hands"] == [{"user_id": "ann", "name": "Ann"}]
    assert [m["data"]["text"] for m in snap["chat"]] == ["first"]
    assert snap["slow_mode_s"] == 3 and snap["chat_enabled"] is True
    assert snap["presence_count"] == 2 and snap["ended"] is False
    assert bob.frames[0].seq_to == snap["seq"]

    again = await connect(edge, "ann")
    assert again.frames[0].events[0].data["snapshot"]["poll"]["my_vote"] == 1


async def _two_edges_exchange(start_edge: Any, connect: Connect, log: Any) -> None:
    a = await start_edge(log, "edge-a")
    b = await start_edge(log, "edge-b")
    tea = await connect(a, "tea", Role.TEACHER)
    ann = await connect(b, "ann")
    bob = await connect(a, "bob")

    await ann.send(type="chat.send", text="from b")
    assert (await tea.event("chat.message")).data["text"] == "from b"
    await ann.send(type="hand.raise")
    await tea.event("hand.raised", user_id="ann")
    await tea.send(type="hand.call_next")
    await ann.event("hand.called", user_id="ann")

    await tea.send(type="poll.open", question="Q?", options=["x", "y"])
    poll_id = (await ann.event("poll.opened")).data["poll_id"]
    await ann.send(type="poll.vote", poll_id=poll_id, option=0)
    await bob.event("poll.opened")  # a member votes in a poll it has seen
    await bob.send(type="poll.vote", poll_id=poll_id, option=0)
    await tea.event("poll.tally", counts=[2, 0])
    await tea.send(type="poll.close", poll_id=poll_id)
    closed_b = await ann.event("poll.closed")
    closed_a = await bob.event("poll.closed")
    assert closed_a.data["counts"] == closed_b.data["counts"] == [2, 0]
    assert closed_a.seq == closed_b.seq

    await tea.send(type="quiz.ask", question="2+2", options=["4", "5"], correct=0)
    asked = await ann.event("quiz.asked")
    assert "correct" not in asked.data
    await ann.send(type="quiz.answer", quiz_id=asked.data["quiz_id"], option=0)
    await asyncio.sleep(0.2)
    await tea.send(type="quiz.close", quiz_id=asked.data["quiz_id"])
    score = await ann.event("quiz.score")
    assert score.data["points"] > 900 and score.data["total"] == score.data["points"]
    board = (await bob.event("quiz.closed")).data["leaderboard"]
    assert board[0]["user_id"] == "ann"
    assert (await bob.event("quiz.score")).data["points"] == 0


async def test_two_edges_share_a_memory_log(start_edge: Any, connect: Connect) -> None:
    await _two_edges_exchange(start_edge, connect, MemoryClassLog())


@pytest.mark.redis
async def test_two_edges_share_a_redis_log(
    start_edge: Any, connect: Connect, redis_url: str, class_id: str
) -> None:
    from liveclass.origin.classlog.redis import RedisClassLog

    log = RedisClassLog.from_url(redis_url)
    runners: list[EdgeRunner] = []

    async def start(*args: Any, **kw: Any) -> EdgeRunner:
        runners.append(await start_edge(*args, **kw))
        return runners[-1]

    try:
        await _two_edges_exchange(start, connect, log)
    finally:
        for runner in runners:  # before the log they read closes
            await runner.stop()
        await log._redis.delete(f"lc:{{{class_id}}}:seq", f"lc:{{{class_id}}}:log")
        await log.close()


async def _still_works(tea: Client, ann: Client, text: str) -> None:
    await tea.send(type="chat.send", text=text)
    assert (await ann.event("chat.message", text=text)).actor == "tea"


@pytest.fixture
async def pair(start_edge: Any, connect: Connect) -> tuple[Any, Client, Client]:
    edge = await start_edge(MemoryClassLog())
    return edge, await connect(edge, "tea", Role.TEACHER), await connect(edge, "ann")


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("{not json", "malformed"),
        ("[1, 2]", "malformed"),
        # Deep enough to exhaust the parser's recursion, small enough to pass
        # the size limit.
        ("[" * 7000 + "]" * 7000, "malformed"),
        ('{"type": "chat.shout", "ref": "x"}', "unknown_type"),
        ('{"type": "chat.send", "text": ""}', "invalid"),
        ('{"type": "poll.open", "question": "q", "options": ["a", "b"]}', "forbidden"),
    ],
)
async def test_bad_messages_get_an_error_and_the_socket_stays(
    pair: Any, connect: Connect, http: aiohttp.ClientSession, raw: str, code: str
) -> None:
    edge, tea, ann = pair
    bob = await connect(edge, "bob")
    await ann.ws.send_str(raw)
    error = await ann.event("error")
    assert error.data["code"] == code and error.seq is None
    await _still_works(tea, bob, "others go on")
    await ann.send(type="chat.send", text="me too")
    await bob.event("chat.message", text="me too")
    async with http.get(f"{edge.url}/metrics") as resp:
        text = await resp.text()
    assert f'liveclass_edge_errors_total{{code="{code}"}} 1' in text


async def test_error_echoes_ref(pair: Any) -> None:
    _, _, ann = pair
    await ann.send(type="chat.send", text="x" * 600, ref="abc")
    error = await ann.event("error")
    assert error.data == {
        "code": "too_long",
        "message": error.data["message"],
        "ref": "abc",
    }
    # A ref too long to be valid is refused, and comes back cut.
    await ann.send(type="chat.send", text="hi", ref="r" * 5000)
    error = await ann.event("error")
    assert error.data["code"] == "invalid" and "ref" in error.data["message"]
    assert error.data["ref"] == "r" * MAX_REF_CHARS


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ("x" * (MAX_FRAME_BYTES + 1), CloseCode.MESSAGE_TOO_BIG),
        (b"\x00\x01", CloseCode.UNSUPPORTED_DATA),
    ],
)
async def test_oversized_and_binary_close_only_that_socket(
    pair: Any, connect: Connect, payload: Any, code: int
) -> None:
    edge, tea, ann = pair
    bob = await connect(edge, "bob")
    if isinstance(payload, bytes):
        await ann.ws.send_bytes(payload)
    else:
        await ann.ws.send_str(payload)
    got, _ = await ann.closed()
    assert got == code
    await _still_works(tea, bob, "still here")


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("garbage", CloseCode.BAD_TOKEN),
        ("foreign key", CloseCode.BAD_TOKEN),
        ("expired", CloseCode.TOKEN_EXPIRED),
        ("other class", CloseCode.WRONG_CLASS),
        ("version", CloseCode.VERSION_UNSUPPORTED),
        ("no version", CloseCode.VERSION_UNSUPPORTED),
    ],
)
async def test_refused_connections(
    pair: Any,
    connect: Connect,
    http: aiohttp.ClientSession,
    keyring: KeyRing,
    class_id: str,
    case: str,
    code: int,
) -> None:
    edge, tea, ann = pair
    params: dict[str, str] = {
        "token": keyring.mint(class_id, "eve", "Eve", Role.STUDENT),
        "v": "1",
    }
    if case == "garbage":
        params["token"] = "not.a.token"
    elif case == "foreign key":
        params["token"] = KeyRing().mint(class_id, "eve", "Eve", Role.STUDENT)
    elif case == "expired":
        params["token"] = keyring.mint(class_id, "eve", "Eve", Role.STUDENT, -60)
    elif case == "other class":
        params["class_id"] = "another-class"
    elif case == "version":
        params["v"] = "99"
    else:
        del params["v"]
    ws = await http.ws_connect(f"{edge.url}/v1/ws", params=params)
    got, reason = await Client(ws).closed()
    assert got == code
    if case == "version":
        assert "version 1" in reason
    await _still_works(tea, ann, f"after {case}")


async def test_removed_member_is_closed_on_every_edge_and_refused(
    start_edge: Any, connect: Connect
) -> None:
    log = MemoryClassLog()
    a = await start_edge(log, "edge-a")
    b = await start_edge(log, "edge-b")
    tea = await connect(a, "tea", Role.TEACHER)
    eve_a = await connect(a, "eve")
    eve_b = await connect(b, "eve")
    await tea.event("member.joined", user_id="eve")
    await tea.send(type="member.remove", user_id="eve")
    assert (await eve_a.closed())[0] == CloseCode.REMOVED
    assert (await eve_b.closed())[0] == CloseCode.REMOVED
    again = await connect(b, "eve", welcome=False)
    assert (await again.closed())[0] == CloseCode.REMOVED


async def test_ended_class_closes_and_refuses(
    start_edge: Any, connect: Connect
) -> None:
    edge = await start_edge(MemoryClassLog())
    tea = await connect(edge, "tea", Role.TEACHER)
    ann = await connect(edge, "ann")
    await tea.send(type="class.end")
    await ann.event("class.ended")
    assert (await ann.closed())[0] == CloseCode.CLASS_ENDED
    late = await connect(edge, "bob", welcome=False)
    assert (await late.closed())[0] == CloseCode.CLASS_ENDED


async def test_edge_full_and_class_full(start_edge: Any, connect: Connect) -> None:
    edge = await start_edge(MemoryClassLog(), capacity=1)
    first = await connect(edge, "ann")
    full = await connect(edge, "bob", welcome=False)
    assert (await full.closed())[0] == CloseCode.EDGE_FULL

    small = await start_edge(MemoryClassLog(), "edge-b", class_limit=1)
    ann = await connect(small, "ann")
    await ann.event("presence.count", count=1)
    full = await connect(small, "bob", welcome=False)
    code, reason = await full.closed()
    assert code == CloseCode.CLASS_FULL and "full" in reason
    # The same user on a second device is not a new member.
    second = await connect(small, "ann")
    assert first.ws.closed is False and second.ws.closed is False


async def test_the_class_size_limit_in_the_token_is_enforced(
    start_edge: Any, connect: Connect, keyring: KeyRing, class_id: str
) -> None:
    edge = await start_edge(MemoryClassLog())

    def token(user: str) -> str:
        return keyring.mint(class_id, user, user.title(), Role.STUDENT, max_members=1)

    ann = await connect(edge, "ann", token=token("ann"))
    await ann.event("presence.count", count=1)
    bob = await connect(edge, "bob", token=token("bob"), welcome=False)
    code, reason = await bob.closed()
    assert code == CloseCode.CLASS_FULL and "1 members" in reason


async def test_an_edge_without_keys_asks_to_try_again_later(
    connect: Connect, keyring: KeyRing, tmp_path: Any
) -> None:
    # The origin is down: the edge has never fetched the signing keys, so a
    # good token is not refused as bad, only postponed.
    config = EdgeConfig(
        port=free_port(),
        origin_url=f"http://127.0.0.1:{free_port()}",
        data_dir=tmp_path,
        transcode=False,
    )
    edge = await run_edge(config, MemoryClassLog())
    try:
        ann = await connect(edge, "ann", welcome=False)
        code, reason = await ann.closed()
        assert code == CloseCode.TRY_AGAIN_LATER and "try again" in reason
    finally:
        await edge.stop()


async def test_presence_count_and_list(start_edge: Any, connect: Connect) -> None:
    edge = await start_edge(MemoryClassLog())
    tea = await connect(edge, "tea", Role.TEACHER)
    # Kept referenced: a collected client socket closes.
    devices = [await connect(edge, "ann"), await connect(edge, "ann")]
    await tea.event("presence.count", count=2)
    await tea.send(type="presence.list")
    listed = await tea.event("presence.list")
    assert [m["user_id"] for m in listed.data["members"]] == ["ann", "tea"]
    await devices[0].ws.close()
    await devices[1].ws.close()
    await tea.event("presence.count", count=1)


async def test_edge_capacity_counts_members_of_every_class(
    start_edge: Any, connect: Connect, keyring: KeyRing, http: aiohttp.ClientSession
) -> None:
    edge = await start_edge(MemoryClassLog(), capacity=2)

    def token(class_id: str, user: str) -> str:
        return keyring.mint(class_id, user, user.title(), Role.STUDENT)

    ann = await connect(edge, "ann", token=token("class-a", "ann"))
    # Kept referenced: a collected client socket closes.
    bob = await connect(edge, "bob", token=token("class-b", "bob"))
    late = await connect(edge, "cid", token=token("class-c", "cid"), welcome=False)
    assert (await late.closed())[0] == CloseCode.EDGE_FULL
    # A member that leaves frees its place, whatever its class.
    await ann.ws.close()
    for _ in range(100):
        async with http.get(f"{edge.url}/metrics") as resp:
            if "liveclass_edge_members 1\n" in await resp.text():
                break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("the edge still counts the member that left")
    cid = await connect(edge, "cid", token=token("class-c", "cid"))
    assert not bob.ws.closed and not cid.ws.closed


async def test_members_joining_at_once_do_not_overrun_the_capacity(
    start_edge: Any, connect: Connect, keyring: KeyRing
) -> None:
    # Their class has no room yet, so every join waits for it to open: all
    # are admitted before any is in, and the capacity must still hold.
    edge = await start_edge(MemoryClassLog(), capacity=3)

    async def outcome(user: str) -> tuple[str, Client]:
        token = keyring.mint("class-new", user, user.title(), Role.STUDENT)
        client = await connect(edge, user, token=token, welcome=False)
        first = await client.ws.receive(timeout=5)
        if first.type == aiohttp.WSMsgType.TEXT:
            return "welcome", client
        return f"closed {client.ws.close_code}", client

    outcomes = await asyncio.gather(*(outcome(f"u{i}") for i in range(8)))
    got = sorted(o for o, _ in outcomes)
    assert got == ["closed 4007"] * 5 + ["welcome"] * 3
    assert edge.node.connections == 3


async def test_http_endpoints(
    start_edge: Any, http: aiohttp.ClientSession, origin: Origin
) -> None:
    edge = await start_edge(MemoryClassLog())
    async with http.get(f"{edge.url}/healthz") as resp:
        assert (await resp.json())["ok"] is True
    async with http.get(f"{edge.url}/v1/ping") as resp:
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
    async with http.get(f"{edge.url}/metrics") as resp:
        text = await resp.text()
    assert "liveclass_edge_members 0" in text
    assert "liveclass_edge_frames_sent_total" in text
    for _ in range(50):
        if origin.heartbeats:
            break
        await asyncio.sleep(0.05)
    assert origin.heartbeats[0]["members"] == 0
    assert not origin.heartbeats[-1]["draining"]

    # A stopping edge says so at once: routing must not wait for the timeout.
    await edge.stop()
    assert origin.heartbeats[-1]["draining"] is True


async def test_unreachable_origin_is_not_fatal(
    connect: Connect, tmp_path: Any, http: aiohttp.ClientSession, keyring: KeyRing
) -> None:
    config = EdgeConfig(
        port=free_port(),
        origin_url=f"http://127.0.0.1:{free_port()}",
        data_dir=tmp_path,
        heartbeat_s=0.05,
    )
    runner = await run_edge(config, MemoryClassLog())
    try:
        await asyncio.sleep(0.2)
        runner.node.verifier.update(keyring.public_keys())
        ann = await connect(runner, "ann")
        await ann.send(type="chat.send", text="works offline")
        await ann.event("chat.message")
    finally:
        await runner.stop()


async def test_real_media_service_is_mounted(
    monkeypatch: pytest.MonkeyPatch,
    start_edge: Any,
    connect: Connect,
    http: aiohttp.ClientSession,
) -> None:
    # Undo the stub: the edge must start with the real media service too.
    monkeypatch.delitem(sys.modules, "liveclass.edge_node.media")
    media = pytest.importorskip("liveclass.edge_node.media")
    assert hasattr(media, "setup_media")
    edge = await start_edge(MemoryClassLog())
    ann = await connect(edge, "ann")
    await ann.send(type="chat.send", text="with media")
    await ann.event("chat.message")
    async with http.get(f"{edge.url}/healthz") as resp:
        assert resp.status == 200


async def test_rotated_key_is_fetched_on_first_use(
    start_edge: Any,
    connect: Connect,
    keyring: KeyRing,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from liveclass.edge_node import origin_link

    # Let the edge's next fetch through at once, as if minutes had passed.
    monkeypatch.setattr(origin_link, "MIN_KEYS_REFRESH_S", 0.0)
    edge = await start_edge(MemoryClassLog())
    old_kids = edge.node.verifier.kids
    keyring.rotate()
    ann = await connect(edge, "ann")  # signed with a key the edge never saw
    assert ann.frames[0].events[0].type == "welcome"
    assert set(edge.node.verifier.kids) > set(old_kids)


async def test_tls(
    origin: Origin,
    keyring: KeyRing,
    class_id: str,
    tmp_path: Any,
    tls_files: tuple[Any, Any],
) -> None:
    import ssl

    cert_path, key_path = tls_files
    config = EdgeConfig(
        port=free_port(),
        origin_url=origin.url,
        data_dir=tmp_path,
        tls_cert=cert_path,
        tls_key=key_path,
    )
    runner = await run_edge(config, MemoryClassLog())
    try:
        assert runner.url.startswith("https://")
        runner.node.verifier.update(keyring.public_keys())
        client_ctx = ssl.create_default_context(cafile=str(cert_path))
        client_ctx.check_hostname = False
        token = keyring.mint(class_id, "ann", "Ann", Role.STUDENT)
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(
                f"{runner.url}/v1/ws",
                params={"token": token, "v": "1"},
                ssl=client_ctx,
            ) as ws,
        ):
            first = Frame.model_validate_json((await ws.receive()).data)
            assert first.events[0].type == "welcome"
            # Plain HTTPS on the same port is handed on to aiohttp.
            async with session.get(f"{runner.url}/healthz", ssl=client_ctx) as resp:
                assert resp.status == 200
                assert (await resp.json())["members"] == 1
    finally:
        await runner.stop()


# --- draining ----------------------------------------------------------------


class GatedLog(MemoryClassLog):
    """A class log whose appends wait while ``gate`` is clear; ``held``
    lists the entry types that waited."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()
        self.held: list[str] = []

    async def append(self, class_id: str, events: Sequence[LogEvent]) -> list[LogEvent]:
        if not self.gate.is_set():
            self.held += [event.type for event in events]
        await self.gate.wait()
        return await super().append(class_id, events)


async def until(condition: Callable[[], object]) -> None:
    """Wait up to :data:`TIMEOUT` for ``condition()`` to hold."""
    async with asyncio.timeout(TIMEOUT):
        # The state looked at is plain attributes, nothing to await.
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_drain_appends_what_members_sent_before_moving_them(
    start_edge: Any, connect: Connect, origin: Origin, class_id: str
) -> None:
    """Newcomers are refused at once and the origin is told; members are
    sent away only once what they sent is in the class log."""
    log = GatedLog()
    edge = await start_edge(log)
    tea = await connect(edge, "tea", Role.TEACHER)
    ann = await connect(edge, "ann")
    await tea.event("member.joined", user_id="ann")

    log.gate.clear()
    await ann.send(type="chat.send", text="last words")
    await until(lambda: "chat.message" in log.held)
    edge.drain.start("a test")

    bob = await connect(edge, "bob", welcome=False)
    assert await bob.closed() == (CloseCode.DRAINING, DRAINING_REASON)
    await until(lambda: origin.heartbeats[-1]["draining"])
    # The chat message is still on its way to the log: nobody moves yet.
    await asyncio.sleep(0.2)
    assert edge.node.connections == 2 and not edge.drain.finished.is_set()

    log.gate.set()
    for member in (tea, ann):
        assert await member.closed() == (CloseCode.DRAINING, DRAINING_REASON)
    await asyncio.wait_for(edge.drain.finished.wait(), TIMEOUT)
    assert edge.node.connections == 0
    entries = await log.read(class_id, 0)
    assert [e.data["text"] for e in entries if e.type == "chat.message"] == [
        "last words"
    ]
    changes = [c for e in entries for c in presence_events(e)]
    left = sorted(c.data["user_id"] for c in changes if c.type == "member.left")
    assert left == ["ann", "tea"]


async def test_the_origin_can_ask_an_edge_to_drain(
    start_edge: Any, connect: Connect, origin: Origin
) -> None:
    edge = await start_edge(MemoryClassLog())
    ann = await connect(edge, "ann")
    origin.drain_requested = True  # in the answer to the next heartbeat
    assert await ann.closed() == (CloseCode.DRAINING, DRAINING_REASON)
    await asyncio.wait_for(edge.drain.finished.wait(), TIMEOUT)
    # Not stopped by itself (``liveclass edge`` does that): it refuses.
    bob = await connect(edge, "bob", welcome=False)
    assert (await bob.closed())[0] == CloseCode.DRAINING


async def test_a_drain_is_bounded_by_its_timeout(
    start_edge: Any, connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    edge = await start_edge(MemoryClassLog(), drain_timeout_s=0.3)
    # A member that reads nothing never answers the closing handshake
    # (kept referenced: a collected client socket closes).
    ann = await connect(edge, "ann")
    caplog.set_level(logging.INFO, "liveclass.edge_node.drain")
    started = time.monotonic()
    edge.drain.start("a test")
    await asyncio.wait_for(edge.drain.finished.wait(), TIMEOUT)
    assert 0.3 <= time.monotonic() - started < 1.5
    assert edge.node.connections == 1 and not ann.ws.closed
    assert "drain timed out" in caplog.text


async def test_sigterm_drains_then_stops(
    origin: Origin, keyring: KeyRing, connect: Connect, tmp_path: Any
) -> None:
    """``EdgeRunner.serve``, as ``liveclass edge`` runs it."""
    config = EdgeConfig(
        port=free_port(),
        origin_url=origin.url,
        data_dir=tmp_path,
        heartbeat_s=0.1,
        transcode=False,
    )
    runner = await run_edge(config, MemoryClassLog())
    serving = asyncio.create_task(runner.serve())
    try:
        runner.node.verifier.update(keyring.public_keys())
        ann = await connect(runner, "ann")
        os.kill(os.getpid(), signal.SIGTERM)
        assert await ann.closed() == (CloseCode.DRAINING, DRAINING_REASON)
        await asyncio.wait_for(serving, TIMEOUT)
    finally:
        if not serving.done():
            serving.cancel()
            await runner.stop()
    assert runner.drain.finished.is_set()
    assert origin.heartbeats[-1]["draining"] is True
