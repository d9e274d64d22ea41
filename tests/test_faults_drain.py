"""Edges drained on purpose, with real processes: one by SIGTERM, one by an
admin through the origin, both mid-class.

An origin and three edges share Redis and PostgreSQL. Students join through
the SDK and spread over the three edges; the teacher, on the edge that
stays, chats every 100 ms throughout. The drained edges refuse newcomers
while they drain, routing stops offering them, their students move to the
third edge at once, every student gets every message exactly once, in log
order, with no gap in the numbers, and presence adds up afterwards. The
students of each drained edge change their poll vote just before the drain;
the final tally is every student's last vote.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import websockets
from fleet import API_KEY
from test_faults import (
    Listener,
    Wire,
    assert_exactly_once,
    counts_of,
    fleet_of,
    new_class,
    poll_everyone,
    routed,
)

from liveclass.cli.edge_args import config_from_args
from liveclass.cli.main import build_parser, main
from liveclass.sdk import connect
from liveclass.sdk.admin import AdminClient
from liveclass.sdk.client import Classroom
from liveclass.sdk.protocol import PROTOCOL_VERSION, CloseCode, Role

STUDENTS_PER_EDGE = 3
CAPACITY = STUDENTS_PER_EDGE + 1
"""Edges A and B hold their students and one silent member, then are full:
later students go to the next edge."""

TICK_S = 0.1
"""The teacher's pace: one numbered chat message every tick."""

SIGTERM_DRAIN_TIMEOUT_S = 1.0
"""Edge A's drain timeout: shorter than the 2 s the edge gives a member to
answer its close, so the silent member makes that drain time out."""

MOVE_WITHIN_S = 1.0
"""How soon after its edge starts draining a student must be elsewhere."""

HEARTBEAT_S = 2.0
"""The edges' heartbeat period: how late an edge may hear of a drain
request."""


class Silent:
    """A member that joins, then reads nothing more: it never answers its
    edge's close, so a drain must end without it (and the edge, still
    draining meanwhile, can be seen refusing newcomers)."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer

    @classmethod
    async def open(cls, edge_url: str, token: str) -> Silent:
        """Join through ``edge_url`` with a hand-made RFC 6455 handshake."""
        where = urlsplit(edge_url)
        assert where.hostname and where.port
        reader, writer = await asyncio.open_connection(where.hostname, where.port)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET /v1/ws?token={token}&v={PROTOCOL_VERSION} HTTP/1.1\r\n"
            f"Host: {where.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        )
        writer.write(request.encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 101"), head
        # The welcome's first byte: the member is in its class room.
        assert await asyncio.wait_for(reader.read(1), 10)
        return cls(writer)

    async def close(self) -> None:
        """Drop the connection."""
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


async def refusal(edge_url: str, token: str) -> tuple[int, str]:
    """The close code and reason an edge answers a newcomer with; fails
    the test if the edge lets it in."""
    url = edge_url.replace("http", "ws", 1)
    async with websockets.connect(
        f"{url}/v1/ws?token={token}&v={PROTOCOL_VERSION}"
    ) as ws:
        try:
            frame = await asyncio.wait_for(ws.recv(), 5)
        except websockets.ConnectionClosed as exc:
            assert exc.rcvd is not None
            return exc.rcvd.code, exc.rcvd.reason
    pytest.fail(f"{edge_url} let a newcomer in: {frame!r}"[:300])


async def until(
    condition: Callable[[], Awaitable[bool]], what: str, wait_s: float
) -> None:
    """Poll ``condition()`` every 50 ms until it holds; fail after ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while not await condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {wait_s:.0f} s: {what}")
        await asyncio.sleep(0.05)


async def moved_off(rooms: list[Classroom], edge_id: str) -> float:
    """Seconds until none of ``rooms`` is on ``edge_id`` any more."""
    since = time.monotonic()
    # The SDK signals no edge change: look every 10 ms.
    while any(room.edge_id == edge_id for room in rooms):
        if time.monotonic() - since > MOVE_WITHIN_S + HEARTBEAT_S:
            pytest.fail(f"students still on {edge_id}")
        await asyncio.sleep(0.01)
    return time.monotonic() - since


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.postgres
async def test_drained_edges_move_their_students_without_a_gap(
    tmp_path: Path, log_url: str, postgres_url: str
) -> None:
    """Edge A drains on SIGTERM, edge B on an admin's call, while the
    teacher chats on edge C: see the module doc for what must hold."""
    async with fleet_of(tmp_path, log_url, postgres_url) as fleet:
        await asyncio.to_thread(fleet.start_origin)
        async with (
            AdminClient(fleet.origin_url, API_KEY) as admin,
            contextlib.AsyncExitStack() as stack,
        ):
            class_id = await new_class(admin, "drain")

            async def token(user_id: str, role: Role = Role.STUDENT) -> str:
                minted = await admin.mint_token(class_id, user_id, user_id, role)
                return minted.token

            # Edges start one by one, all in one place: each of the first two
            # fills up (its students, then a silent member) before the next.
            on: dict[str, list[Classroom]] = {}
            for edge_id in ("edge-a", "edge-b", "edge-c"):
                await asyncio.to_thread(
                    fleet.start_edge,
                    edge_id,
                    48.85,
                    2.35,
                    capacity=None if edge_id == "edge-c" else CAPACITY,
                    drain_timeout=(
                        SIGTERM_DRAIN_TIMEOUT_S if edge_id == "edge-a" else None
                    ),
                )
                for n in range(STUDENTS_PER_EDGE):
                    room = connect(fleet.origin_url, await token(f"{edge_id}-s{n}"))
                    room = await stack.enter_async_context(room)
                    on.setdefault(room.edge_id, []).append(room)
                if edge_id != "edge-c":
                    member = await Silent.open(
                        fleet.edges[edge_id], await token(f"{edge_id}-silent")
                    )
                    stack.push_async_callback(member.close)
            assert {e: len(r) for e, r in on.items()} == {
                "edge-a": STUDENTS_PER_EDGE,
                "edge-b": STUDENTS_PER_EDGE,
                "edge-c": STUDENTS_PER_EDGE,
            }
            students = [room for rooms in on.values() for room in rooms]

            teacher = await Wire.open(
                fleet.edges["edge-c"], await token("tea", Role.TEACHER)
            )
            stack.push_async_callback(teacher.close)
            await teacher.until(lambda e: e["type"] == "welcome")

            # A poll everyone votes in; each drained edge's students change
            # their vote just before their edge is told to drain.
            votes: dict[str, int] = {}
            poll_id = await poll_everyone(teacher, students, votes)

            async def change_votes(edge_id: str) -> None:
                for room in on[edge_id]:
                    changed = (votes[room.member.user_id] + 1) % 3
                    votes[room.member.user_id] = changed
                    await room.vote(poll_id, changed)

            collectors = [Listener(room) for room in students]
            newcomer = await token("newcomer")
            moved: dict[str, float] = {}

            async def drain_two_edges() -> None:
                """Edge A by SIGTERM, then edge B by the admin API; each
                time, check the refusals, the routing and the moves."""
                edge_a = fleet.procs["edge-a"].popen
                await change_votes("edge-a")
                edge_a.send_signal(signal.SIGTERM)
                watch = asyncio.create_task(moved_off(on["edge-a"], "edge-a"))
                # The silent member holds the drain open for a while.
                await asyncio.sleep(0.2)
                code, reason = await refusal(fleet.edges["edge-a"], newcomer)
                assert code == CloseCode.DRAINING and "draining" in reason
                assert "edge-a" not in await routed(fleet.origin_url, newcomer)
                moved["edge-a"] = await watch
                assert await asyncio.to_thread(edge_a.wait, 15) == 0

                await change_votes("edge-b")
                status = await admin.drain_edge("edge-b")
                watch = asyncio.create_task(moved_off(on["edge-b"], "edge-b"))
                assert status.drain_requested and not status.healthy
                # Routing drops it before the edge itself has heard.
                assert await routed(fleet.origin_url, newcomer) == ["edge-c"]

                async def edge_b_drains() -> bool:
                    edges = {e.edge_id: e for e in await admin.edges()}
                    return edges["edge-b"].draining

                await until(edge_b_drains, "edge-b says it drains", 5.0)
                code, reason = await refusal(fleet.edges["edge-b"], newcomer)
                assert code == CloseCode.DRAINING and "draining" in reason
                moved["edge-b"] = await watch
                edge_b = fleet.procs["edge-b"].popen
                assert await asyncio.to_thread(edge_b.wait, 15) == 0

            # The teacher chats all along, and a second more after the drains.
            drains: asyncio.Task[None] | None = None
            texts: list[str] = []
            start = time.monotonic()
            after = 0
            while after < 10:
                if len(texts) == 10:
                    drains = asyncio.create_task(drain_two_edges(), name="drains")
                if drains is not None and drains.done():
                    after += 1
                texts.append(f"drain-{len(texts):03d}")
                await teacher.chat_send(texts[-1])
                wake = start + len(texts) * TICK_S
                await asyncio.sleep(max(0.0, wake - time.monotonic()))
            assert drains is not None
            await drains

            # Every student got every message once, in order, no gap.
            await teacher.until(lambda e: e.get("data", {}).get("text") == texts[-1])
            assert teacher.frame_errors == []
            assert [text for _, text in teacher.chat] == texts

            async def all_received() -> bool:
                return all(len(c.chat) >= len(texts) for c in collectors)

            await until(all_received, "every student has every message", 10.0)
            for collector in collectors:
                who = collector.room.member.user_id
                assert collector.resets == 0, f"{who}: state.reset"
                assert_exactly_once(who, collector.chat, teacher.chat)
            assert all(room.edge_id == "edge-c" for room in students)
            assert moved["edge-a"] <= MOVE_WITHIN_S, moved
            assert moved["edge-b"] <= MOVE_WITHIN_S + HEARTBEAT_S, moved

            # Newcomers go to the edge that stays.
            assert await routed(fleet.origin_url, newcomer) == ["edge-c"]
            late = await stack.enter_async_context(connect(fleet.origin_url, newcomer))
            assert late.edge_id == "edge-c"

            # Presence adds up: the teacher, the nine students and the
            # newcomer; the silent members were cut when their edges stopped.
            here = sorted(["tea", "newcomer", *(r.member.user_id for r in students)])

            async def listed() -> bool:
                # Asked again until the newcomer's join has been folded.
                lists = [e for e in teacher.events if e["type"] == "presence.list"]
                if lists:
                    members = lists[-1]["data"]["members"]
                    if sorted(m["user_id"] for m in members) == here:
                        return True
                await teacher.ws.send('{"type": "presence.list"}')
                await asyncio.sleep(0.2)
                return False

            await until(listed, "the teacher's presence list is right", 5.0)

            async def counted() -> bool:
                edges = {e.edge_id: e for e in await admin.edges()}
                return edges["edge-c"].classes.get(class_id) == 11

            await until(counted, "edge-c reports 11 members", 6.0)

            # The origin's attendance: one open session per member here,
            # closed ones for every session on a drained edge.
            async def reconciled() -> bool:
                rows = (await admin.report(class_id)).attendance
                open_by = sorted(r["user_id"] for r in rows if r["left_at"] is None)
                return open_by == here

            await until(reconciled, "attendance has one open session each", 10.0)
            report = await admin.report(class_id)
            for room in on["edge-a"] + on["edge-b"]:
                sessions = [
                    r for r in report.attendance if r["user_id"] == room.member.user_id
                ]
                assert len(sessions) == 2, sessions

            # The final tally is every student's last vote, exactly.
            await teacher.ws.send(
                json.dumps({"type": "poll.close", "poll_id": poll_id})
            )
            closed = await teacher.until(lambda e: e["type"] == "poll.closed")
            assert closed["data"]["counts"] == counts_of(votes, 3), votes

            # What the operators read.
            log_a, log_b = fleet.log_text("edge-a"), fleet.log_text("edge-b")
            assert "draining (SIGTERM)" in log_a
            assert f"asked {CAPACITY} members to move" in log_a
            assert "drain timed out" in log_a
            assert "draining (asked by the origin)" in log_b
            assert "drained in" in log_b
            assert "edge-b: drain requested" in fleet.log_text("origin")


def test_drain_timeout_flag_and_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    args = build_parser().parse_args(["edge", "--drain-timeout", "2.5"])
    assert config_from_args(args).drain_timeout_s == 2.5
    monkeypatch.setenv("LIVECLASS_EDGE_DRAIN_TIMEOUT", "4")
    args = build_parser().parse_args(["edge"])
    assert config_from_args(args).drain_timeout_s == 4.0
    monkeypatch.delenv("LIVECLASS_EDGE_DRAIN_TIMEOUT")
    with pytest.raises(SystemExit) as refused:
        main(["edge", "--drain-timeout", "-1"])
    assert refused.value.code == 2
