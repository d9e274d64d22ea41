"""The SDK client against a fake edge and a fake origin on loopback.

The fakes speak the real wire protocol (``liveclass.sdk.protocol``) over real
sockets; the real edge is built separately and is not needed here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import WSMsgType, web

from liveclass import sdk
from liveclass.sdk import protocol as p

SNAPSHOT = {
    "chat": [
        {
            "type": "chat.message",
            "seq": 1,
            "actor": "t1",
            "data": {"text": "welcome all", "name": "Ada", "role": "teacher"},
        }
    ],
    "hands": [{"user_id": "s9", "name": "Bo"}],
    "presence_count": 42,
    "poll": {"poll_id": "p1", "question": "Ready?", "options": ["yes", "no"]},
}


async def _start(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


class FakeEdge:
    """An edge with one class log; tests push events and misbehave on cue."""

    def __init__(
        self,
        edge_id: str,
        *,
        role: p.Role = p.Role.STUDENT,
        refuse: int | None = None,
        ping_delay: float = 0.0,
        welcome_on_resume: bool = False,
    ) -> None:
        self.edge_id = edge_id
        self.welcome_on_resume = welcome_on_resume
        self.member = p.Member(user_id="u1", name="Una", role=role)
        self.refuse = refuse
        self.ping_delay = ping_delay
        self.log: list[p.Event] = [
            p.Event(type="chat.message", seq=1, actor="t1", data={"text": "hi"})
        ]
        self.joins: list[dict[str, str]] = []
        self.received: list[dict[str, Any]] = []
        self.sockets: list[web.WebSocketResponse] = []
        self.resume_hook: Any = None
        self.base = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Listen on a loopback port."""
        app = web.Application()
        app.router.add_get("/v1/ping", self._ping)
        app.router.add_get("/v1/ws", self._ws)
        self._runner, self.base = await _start(app)

    async def stop(self) -> None:
        """Close every socket and stop listening."""
        await self.drop()
        if self._runner is not None:
            await self._runner.cleanup()

    def candidate(self) -> dict[str, Any]:
        """This edge as the origin would list it."""
        return {
            "edge_id": self.edge_id,
            "url": self.base,
            "ws_url": self.base.replace("http", "ws") + "/v1/ws",
            "ping_url": self.base + "/v1/ping",
            "distance_km": 10.0,
            "load": 0.1,
            "serves_class": True,
            "score": 10.0,
        }

    @property
    def head(self) -> int:
        """The last class-log number."""
        return len(self.log)

    def append(self, type_: str, **data: Any) -> p.Event:
        """Add an event to the log without sending it."""
        event = p.Event(type=type_, seq=self.head + 1, ts=1.0, data=data)
        self.log.append(event)
        return event

    async def publish(self, type_: str, **data: Any) -> None:
        """Add an event and send it to every connected member."""
        start = self.head
        self.append(type_, **data)
        await self.send_range(start, self.head)

    async def send_range(self, seq_from: int, seq_to: int) -> None:
        """Send the frame covering ``(seq_from, seq_to]`` to every member."""
        frame = self._frame(seq_from, seq_to)
        for ws in list(self.sockets):
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_str(frame.model_dump_json())

    async def drop(self, code: int = 1011, reason: str = "") -> None:
        """Close every member's socket with ``code``."""
        for ws in list(self.sockets):
            await ws.close(code=code, message=reason.encode())
        self.sockets.clear()

    def _frame(self, seq_from: int, seq_to: int) -> p.Frame:
        events = [e for e in self.log if seq_from < (e.seq or 0) <= seq_to]
        return p.Frame(seq_from=seq_from, seq_to=seq_to, events=events)

    async def _ping(self, request: web.Request) -> web.Response:
        await asyncio.sleep(self.ping_delay)
        return web.Response(text="pong")

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.joins.append(dict(request.query))
        if self.refuse is not None:
            await ws.close(code=self.refuse, message=b"refused by test")
            return ws
        welcome = p.Event(
            type="welcome",
            data={
                "snapshot": SNAPSHOT,
                "member": self.member.model_dump(),
                "edge_id": self.edge_id,
            },
        )
        last = request.query.get("last_seq")
        if last is None:
            frame = p.Frame(seq_from=None, seq_to=self.head, events=[welcome])
            await ws.send_str(frame.model_dump_json())
        else:
            # Like the real edge, answer a resume with the missed range only;
            # the other shape (a welcome first) is also one the SDK accepts.
            resume = int(last)
            if self.welcome_on_resume:
                frame = p.Frame(seq_from=resume, seq_to=resume, events=[welcome])
                await ws.send_str(frame.model_dump_json())
            if self.resume_hook is not None:
                resume = await self.resume_hook(ws, resume)
            await ws.send_str(self._frame(resume, self.head).model_dump_json())
        self.sockets.append(ws)
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                self.received.append(message.json())
        with contextlib.suppress(ValueError):
            self.sockets.remove(ws)
        return ws


class FakeOrigin:
    """The origin's route endpoint, listing the given edges in order."""

    def __init__(self, edges: list[FakeEdge], class_id: str = "c1") -> None:
        self.edges = edges
        self.class_id = class_id
        self.calls = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Listen on a loopback port."""
        app = web.Application()
        app.router.add_get("/v1/route", self._route)
        self._runner, self.url = await _start(app)

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()

    async def _route(self, request: web.Request) -> web.Response:
        self.calls += 1
        auth = request.headers.get("Authorization", "")
        if auth != "Bearer good":
            return web.Response(status=401, text="invalid token")
        return web.json_response(
            {
                "class_id": self.class_id,
                "client_ip": request.remote,
                "client_location": None,
                "candidates": [edge.candidate() for edge in self.edges],
            }
        )


# --- fixtures --------------------------------------------------------------


@pytest.fixture
async def make() -> AsyncIterator[Any]:
    """Start fake edges and an origin listing them in the given order."""
    started: list[Any] = []

    async def factory(*edges: FakeEdge) -> FakeOrigin:
        for edge in edges:
            await edge.start()
            started.append(edge)
        origin = FakeOrigin(list(edges))
        await origin.start()
        started.append(origin)
        return origin

    yield factory
    for server in reversed(started):
        await server.stop()


async def next_event(room: sdk.Classroom, *skip: type) -> sdk.ClassEvent:
    """The next event that is not of a skipped type, within two seconds."""
    async with asyncio.timeout(2):
        async for event in room.events():
            if not isinstance(event, skip):
                return event
    raise AssertionError("event stream ended")


async def chat_seqs(room: sdk.Classroom, count: int) -> list[int | None]:
    """The log numbers of the next ``count`` chat messages."""
    seqs = []
    while len(seqs) < count:
        event = await next_event(room, sdk.Welcome)
        assert isinstance(event, sdk.ChatMessage)
        seqs.append(event.seq)
    return seqs


async def until(condition: Any) -> None:
    """Wait up to two seconds for ``condition()`` to hold."""
    async with asyncio.timeout(2):
        # The fakes expose plain lists, not events, so poll them briefly.
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


# --- joining -------------------------------------------------------------


async def test_joins_the_fastest_and_reads_the_snapshot(make: Any) -> None:
    slow, fast = FakeEdge("slow", ping_delay=0.3), FakeEdge("fast")
    origin = await make(slow, fast)  # the origin ranks the slow one first

    async with sdk.connect(origin.url, "good", probe_timeout=1.0) as room:
        assert room.edge_id == "fast"
        assert room.class_id == "c1"
        assert room.member == fast.member
        assert room.last_seq == 1
        assert [m.text for m in room.state.chat] == ["welcome all"]
        assert room.state.presence_count == 42
        assert room.state.poll is not None and room.state.poll.poll_id == "p1"
        assert [h.user_id for h in room.state.hands] == ["s9"]
        welcome = await next_event(room)
        assert isinstance(welcome, sdk.Welcome)
    assert slow.joins == []
    assert fast.joins == [{"token": "good", "v": str(p.PROTOCOL_VERSION)}]


@pytest.mark.parametrize(
    "code", [p.CloseCode.EDGE_FULL, p.CloseCode.CLASS_FULL, p.CloseCode.DRAINING]
)
async def test_falls_back_when_an_edge_is_full(make: Any, code: int) -> None:
    full, spare = FakeEdge("full", refuse=code), FakeEdge("spare", ping_delay=0.05)
    origin = await make(full, spare)

    async with sdk.connect(origin.url, "good") as room:
        assert room.edge_id == "spare"
    assert len(full.joins) == 1


async def test_falls_back_when_an_edge_is_down(make: Any, port: int) -> None:
    edge = FakeEdge("up")
    origin = await make(edge)
    dead = dict(edge.candidate(), edge_id="dead")
    dead["ws_url"] = f"ws://127.0.0.1:{port}/v1/ws"
    dead["ping_url"] = f"http://127.0.0.1:{port}/v1/ping"
    origin.edges.insert(0, _Static(dead))

    async with sdk.connect(origin.url, "good") as room:
        assert room.edge_id == "up"


class _Static:
    """A candidate that is only a route entry."""

    def __init__(self, entry: dict[str, Any]) -> None:
        self.entry = entry

    def candidate(self) -> dict[str, Any]:
        return self.entry

    async def stop(self) -> None:
        pass


async def test_every_edge_full(make: Any) -> None:
    origin = await make(
        FakeEdge("a", refuse=p.CloseCode.EDGE_FULL),
        FakeEdge("b", refuse=p.CloseCode.TRY_AGAIN_LATER),
    )
    with pytest.raises(sdk.NoEdgeAvailable) as caught:
        async with sdk.connect(origin.url, "good"):
            pass
    assert sorted(edge for edge, _ in caught.value.failures) == ["a", "b"]
    assert "retry" in str(caught.value)


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (p.CloseCode.BAD_TOKEN, sdk.BadToken),
        (p.CloseCode.TOKEN_EXPIRED, sdk.TokenExpired),
        (p.CloseCode.REMOVED, sdk.Removed),
        (p.CloseCode.CLASS_ENDED, sdk.ClassEnded),
        (p.CloseCode.VERSION_UNSUPPORTED, sdk.VersionUnsupported),
    ],
)
async def test_refusals_are_typed_and_final(
    make: Any, code: int, error: type[sdk.JoinRefused]
) -> None:
    refusing, other = FakeEdge("a", refuse=code), FakeEdge("b", ping_delay=0.05)
    origin = await make(refusing, other)
    with pytest.raises(error) as caught:
        async with sdk.connect(origin.url, "good"):
            pass
    assert caught.value.code == code
    assert caught.value.reason == "refused by test"
    assert other.joins == []  # the same token would be refused there too


async def test_origin_refuses_the_token(make: Any) -> None:
    edge = FakeEdge("a")
    origin = await make(edge)
    with pytest.raises(sdk.BadToken, match="new join token"):
        async with sdk.connect(origin.url, "forged"):
            pass
    assert edge.joins == []


async def test_origin_unreachable(port: int) -> None:
    with pytest.raises(sdk.OriginUnavailable, match="cannot reach"):
        async with sdk.connect(f"http://127.0.0.1:{port}", "good"):
            pass


# --- resuming --------------------------------------------------------------


@pytest.mark.parametrize("welcome_on_resume", [False, True])
async def test_resumes_after_a_drop_without_gap_or_duplicate(
    make: Any, welcome_on_resume: bool
) -> None:
    edge = FakeEdge("a", welcome_on_resume=welcome_on_resume)
    origin = await make(edge)
    async with sdk.connect(origin.url, "good") as room:
        await edge.publish("chat.message", text="two")
        await edge.publish("chat.message", text="three")
        assert await chat_seqs(room, 2) == [2, 3]

        await edge.drop(code=1011)
        edge.append("chat.message", text="four")  # while disconnected
        edge.append("chat.message", text="five")
        assert await chat_seqs(room, 2) == [4, 5]
        assert room.last_seq == 5
        assert edge.joins[-1]["last_seq"] == "3"

        await edge.publish("chat.message", text="six")
        assert await chat_seqs(room, 1) == [6]
        assert [m.text for m in room.state.chat][-1] == "six"


@pytest.mark.parametrize("welcome_on_resume", [False, True])
async def test_a_gap_triggers_another_resume(
    make: Any, welcome_on_resume: bool
) -> None:
    edge = FakeEdge("a", welcome_on_resume=welcome_on_resume)
    origin = await make(edge)
    async with sdk.connect(origin.url, "good") as room:
        for text in ("two", "three", "four"):
            edge.append("chat.message", text=text)
        await edge.send_range(2, 4)  # (1, 2] never arrives
        assert await chat_seqs(room, 3) == [2, 3, 4]
        assert [j.get("last_seq") for j in edge.joins] == [None, "1"]
        assert room.last_seq == 4


async def test_overlapping_frames_are_not_repeated(make: Any) -> None:
    edge = FakeEdge("a")
    origin = await make(edge)
    async with sdk.connect(origin.url, "good") as room:
        edge.append("chat.message", text="two")
        edge.append("chat.message", text="three")
        await edge.send_range(1, 2)
        await edge.send_range(0, 3)  # overlaps (1, 2], adds 3
        await edge.send_range(1, 3)  # nothing new
        await edge.publish("chat.message", text="four")
        assert await chat_seqs(room, 3) == [2, 3, 4]
        assert len(edge.joins) == 1


async def test_draining_edge_sends_the_member_elsewhere(make: Any) -> None:
    first, second = FakeEdge("first"), FakeEdge("second", ping_delay=0.05)
    origin = await make(first, second)
    async with sdk.connect(origin.url, "good") as room:
        assert room.edge_id == "first"
        first.refuse = p.CloseCode.DRAINING
        await first.drop(code=p.CloseCode.DRAINING)
        await until(lambda: room.edge_id == "second")
        assert second.joins[-1]["last_seq"] == "1"
        assert origin.calls == 2


async def test_draining_edge_is_avoided_while_the_origin_still_offers_it(
    make: Any,
) -> None:
    """The origin may not have heard of the drain yet: the SDK skips the
    edge anyway, and resumes on the next one at once, without a gap."""
    first, second = FakeEdge("first"), FakeEdge("second", ping_delay=0.05)
    origin = await make(first, second)
    async with sdk.connect(origin.url, "good") as room:
        assert room.edge_id == "first"
        # The draining edge would even accept again: it must not be asked.
        for fake in (first, second):
            fake.append("chat.message", text="two")
        await first.drop(code=p.CloseCode.DRAINING, reason="draining")
        await until(lambda: room.edge_id == "second")
        assert len(first.joins) == 1
        assert second.joins[-1]["last_seq"] == "1"
        assert await chat_seqs(room, 1) == [2]

        # The avoidance lasts one move: a later loss may go back there.
        second.refuse = p.CloseCode.TRY_AGAIN_LATER
        await second.drop(code=1011)
        await until(lambda: room.edge_id == "first")
        assert first.joins[-1]["last_seq"] == "2"


async def test_removed_ends_the_stream_with_an_error(make: Any) -> None:
    edge = FakeEdge("a")
    origin = await make(edge)
    async with sdk.connect(origin.url, "good") as room:
        await edge.drop(code=p.CloseCode.REMOVED, reason="bye")
        with pytest.raises(sdk.Removed):
            await next_event(room, sdk.Welcome)
        with pytest.raises(sdk.Removed):
            await room.send_chat("still here?")


async def test_class_ended_ends_the_stream(make: Any) -> None:
    edge = FakeEdge("a")
    origin = await make(edge)
    async with sdk.connect(origin.url, "good") as room:
        await edge.publish("class.ended")
        seen = [event async for event in room.events()]
        assert isinstance(seen[-1], sdk.ClassEndedEvent)
        assert room.state.ended


async def test_no_reconnect_reports_the_loss(make: Any) -> None:
    edge = FakeEdge("a")
    origin = await make(edge)
    async with sdk.connect(origin.url, "good", reconnect=False) as room:
        await edge.drop(code=1011)
        with pytest.raises(sdk.ConnectionLost):
            await next_event(room, sdk.Welcome)
    assert len(edge.joins) == 1


# --- sending -----------------------------------------------------------------


async def test_messages_reach_the_edge(make: Any) -> None:
    edge = FakeEdge("a", role=p.Role.TEACHER)
    origin = await make(edge)
    async with sdk.connect(origin.url, "good") as room:
        ref = await room.send_chat("hello")
        await room.open_poll("Lunch?", ["pizza", "salad"], duration_s=30)
        await room.end_class()
        await until(lambda: len(edge.received) == 3)
    chat, poll, end = edge.received
    assert chat == {"type": "chat.send", "text": "hello", "ref": ref}
    assert poll["options"] == ["pizza", "salad"] and poll["duration_s"] == 30
    assert end["type"] == "class.end"


async def test_role_checks_send_nothing(make: Any) -> None:
    edge = FakeEdge("a", role=p.Role.STUDENT)
    origin = await make(edge)
    async with sdk.connect(origin.url, "good") as room:
        staff_calls = [
            room.delete_chat(1),
            room.mute("u2"),
            room.set_slow_mode(5),
            room.set_chat_enabled(False),
            room.remove_member("u2"),
            room.call_next_hand(),
            room.open_poll("q", ["a", "b"]),
            room.close_poll("p1"),
            room.ask_quiz("q", ["a", "b"], 0),
            room.close_quiz("q1"),
            room.request_presence_list(),
            room.end_class(),
            room.lower_hand("u2"),
        ]
        for call in staff_calls:
            with pytest.raises(sdk.NotAllowed, match="may not send"):
                await call
        await room.raise_hand()
        await room.lower_hand()
        await until(lambda: len(edge.received) == 2)
    assert [m["type"] for m in edge.received] == ["hand.raise", "hand.lower"]


async def test_ta_may_moderate_but_not_end(make: Any) -> None:
    edge = FakeEdge("a", role=p.Role.TA)
    origin = await make(edge)
    async with sdk.connect(origin.url, "good") as room:
        await room.mute("u2")
        with pytest.raises(sdk.NotAllowed):
            await room.end_class()


async def test_invalid_messages_are_refused_before_sending(make: Any) -> None:
    edge = FakeEdge("a", role=p.Role.TEACHER)
    origin = await make(edge)
    async with sdk.connect(origin.url, "good") as room:
        with pytest.raises(sdk.InvalidMessage, match="limit is 500"):
            await room.send_chat("x" * (p.MAX_CHAT_CHARS + 1))
        with pytest.raises(sdk.InvalidMessage, match="text"):
            await room.send_chat("")
        with pytest.raises(sdk.InvalidMessage, match="options"):
            await room.open_poll("q", ["only one"])
        with pytest.raises(sdk.InvalidMessage, match="option 2 does not exist"):
            await room.vote("p1", 2)  # the snapshot's poll has two options
        with pytest.raises(sdk.InvalidMessage, match="correct=3"):
            await room.ask_quiz("q", ["a", "b"], correct=3)
        with pytest.raises(ValueError):  # InvalidMessage is a ValueError too
            await room.set_slow_mode(-1)
    assert edge.received == []


async def test_error_events_are_typed_and_closed_room_refuses(make: Any) -> None:
    edge = FakeEdge("a")
    origin = await make(edge)
    async with sdk.connect(origin.url, "good") as room:
        ref = await room.send_chat("spam")
        error = p.Event(
            type="error", data={"code": "rate_limited", "message": "slow", "ref": ref}
        )
        frame = p.Frame(events=[error])
        for ws in edge.sockets:
            await ws.send_str(frame.model_dump_json())
        event = await next_event(room, sdk.Welcome)
        assert isinstance(event, sdk.ErrorEvent)
        assert event.code == p.ErrorCode.RATE_LIMITED and event.ref == ref
    with pytest.raises(sdk.ClassroomClosed):
        await room.send_chat("after")
    assert [e async for e in room.events()] == []


async def test_views_at_the_current_position_are_delivered(make: Any) -> None:
    edge = FakeEdge("a")
    origin = await make(edge)
    async with sdk.connect(origin.url, "good") as room:
        count = p.Event(type="presence.count", data={"count": 7})
        frame = p.Frame(seq_from=1, seq_to=1, events=[count])  # as edges send
        for ws in edge.sockets:
            await ws.send_str(frame.model_dump_json())
        event = await next_event(room, sdk.Welcome)
        assert isinstance(event, sdk.PresenceCount) and event.count == 7
        assert room.state.presence_count == 7 and room.last_seq == 1


async def test_provisional_chat_comes_once_then_is_confirmed(make: Any) -> None:
    edge = FakeEdge("a")
    origin = await make(edge)
    async with sdk.connect(origin.url, "good") as room:
        data = {"text": "held", "provisional": True, "provisional_id": "x1"}
        shown = p.Event(type="chat.message", ts=2.0, actor="u1", data=data)
        frame = p.Frame(seq_from=1, seq_to=1, events=[shown])  # as edges send
        for ws in edge.sockets:
            await ws.send_str(frame.model_dump_json())
        event = await next_event(room, sdk.Welcome)
        assert isinstance(event, sdk.ChatMessage) and event.provisional
        assert event.seq is None and room.last_seq == 1

        await edge.publish("chat.message", text="held", provisional_id="x1")
        event = await next_event(room, sdk.Welcome)
        assert isinstance(event, sdk.ChatConfirmed)
        assert (event.seq, event.provisional_id) == (2, "x1")
        assert [(m.seq, m.text) for m in room.state.chat][-1] == (2, "held")
        assert not any(m.provisional for m in room.state.chat)


async def test_state_reset_on_resume(make: Any) -> None:
    edge = FakeEdge("a")
    origin = await make(edge)

    async def reset(ws: web.WebSocketResponse, resume: int) -> int:
        snapshot = {"presence_count": 99, "chat": []}
        event = p.Event(type="state.reset", data={"snapshot": snapshot})
        frame = p.Frame(seq_from=edge.head, seq_to=edge.head, events=[event])
        await ws.send_str(frame.model_dump_json())
        return edge.head

    async with sdk.connect(origin.url, "good") as room:
        await edge.drop()
        for n in range(5):
            edge.append("chat.message", text=f"lost {n}")
        edge.resume_hook = reset
        event = await next_event(room, sdk.Welcome)
        assert isinstance(event, sdk.StateReset)
        assert room.state.presence_count == 99 and room.last_seq == 6
        await edge.publish("chat.message", text="after")
        assert await chat_seqs(room, 1) == [7]


async def test_student_example_runs(make: Any, capsys: Any) -> None:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "examples" / "student.py"
    spec = importlib.util.spec_from_file_location("student_example", path)
    assert spec is not None and spec.loader is not None
    student = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(student)

    edge = FakeEdge("a")
    origin = await make(edge)
    task = asyncio.create_task(student.attend(origin.url, "good", "hi all"))
    await until(lambda: edge.received)
    await edge.publish("chat.message", text="hello Una", name="Ada")
    await edge.publish("class.ended")
    async with asyncio.timeout(2):
        await task
    out = capsys.readouterr().out
    assert "Ada: hello Una" in out and "class over" in out
    assert edge.received[0]["text"] == "hi all"
