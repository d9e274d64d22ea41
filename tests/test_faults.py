"""Real faults, real processes: an edge killed mid-class, the origin restarted
mid-class, a resume older than the class log keeps.

Each test checks the class log's promise from the members' side: every chat
message arrives exactly once, in log order, with no gap in the numbers; or,
where the history is gone, the member is told so with a ``state.reset``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from fleet import API_KEY, Fleet, free_port
from test_edge_server import Origin
from websockets.asyncio.client import ClientConnection

from liveclass.edge_node.app import run_edge
from liveclass.edge_node.config import EdgeConfig
from liveclass.origin.classlog import MemoryClassLog
from liveclass.origin.classlog.base import HistoryTrimmed
from liveclass.origin.contract import LogEvent
from liveclass.origin.tokens import KeyRing
from liveclass.sdk import connect
from liveclass.sdk.admin import AdminClient
from liveclass.sdk.client import Classroom
from liveclass.sdk.events import ChatMessage, StateReset
from liveclass.sdk.protocol import PROTOCOL_VERSION, Role
from liveclass.sdk.route import fetch_route

STUDENTS = 10
FIRST_EDGE_CAPACITY = 6
TICK_S = 0.1
"""The teacher's pace: one numbered chat message every tick."""


class Wire:
    """A raw protocol client pinned to one edge.

    A background task reads every frame, checks that each frame's
    ``seq_from`` is the previous ``seq_to`` (no gap, no overlap) and keeps
    the events; ``chat`` lists the chat messages as ``(seq, text)``.
    """

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.seq_to: int | None = None
        self.events: list[dict[str, Any]] = []
        self.chat: list[tuple[int, str]] = []
        self.frame_errors: list[str] = []
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read(), name="wire-reader")

    @classmethod
    async def open(cls, edge_url: str, token: str, last_seq: int | None = None) -> Wire:
        """Join through ``edge_url`` (http base URL), resuming after
        ``last_seq`` if given."""
        url = edge_url.replace("http", "ws", 1)
        query = f"token={token}&v={PROTOCOL_VERSION}"
        if last_seq is not None:
            query += f"&last_seq={last_seq}"
        return cls(await websockets.connect(f"{url}/v1/ws?{query}"))

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in self.ws:
                frame = json.loads(raw)
                seq_from = frame.get("seq_from")
                if seq_from is not None and self.seq_to is not None:
                    if seq_from != self.seq_to:
                        self.frame_errors.append(
                            f"frame ({seq_from}, {frame['seq_to']}] after {self.seq_to}"
                        )
                if frame.get("seq_to") is not None:
                    self.seq_to = frame["seq_to"]
                for event in frame["events"]:
                    self.events.append(event)
                    if event["type"] == "chat.message":
                        self.chat.append((event["seq"], event["data"]["text"]))
                self._changed.set()
                self._changed = asyncio.Event()

    async def until(
        self, predicate: Callable[[dict[str, Any]], bool], wait_s: float = 10.0
    ) -> dict[str, Any]:
        """The first event kept so far or arriving within ``wait_s`` that
        matches ``predicate``; raises ``TimeoutError`` otherwise."""
        async with asyncio.timeout(wait_s):
            while True:
                for event in self.events:
                    if predicate(event):
                        return event
                if self._reader.done():
                    raise AssertionError("the edge closed the connection")
                await self._changed.wait()

    async def chat_send(self, text: str) -> None:
        """Send one chat message."""
        await self.ws.send(json.dumps({"type": "chat.send", "text": text}))

    async def close(self) -> None:
        """Leave and stop reading."""
        await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


class Listener:
    """Collects the chat an SDK classroom receives, as ``(seq, text)``, and
    the ``state.reset`` events it gets; ``done`` is set once ``last_text``
    (if given) has come."""

    def __init__(self, room: Classroom, last_text: str | None = None) -> None:
        self.room = room
        self.chat: list[tuple[int, str]] = []
        self.resets = 0
        self.done = asyncio.Event()
        self._last_text = last_text
        self.task = asyncio.create_task(self._listen(), name="listener")

    async def _listen(self) -> None:
        async for event in self.room.events():
            if isinstance(event, StateReset):
                self.resets += 1
            elif isinstance(event, ChatMessage):
                assert event.seq is not None
                self.chat.append((event.seq, event.text))
                if event.text == self._last_text:
                    self.done.set()


def numbered(prefix: str, count: int) -> list[str]:
    """The teacher's messages: ``prefix-000``, ``prefix-001``..."""
    return [f"{prefix}-{n:03d}" for n in range(count)]


def assert_exactly_once(
    who: str, got: list[tuple[int, str]], want: list[tuple[int, str]]
) -> None:
    """``got`` is ``want``: same messages, same numbers, same order."""
    seqs = [seq for seq, _ in got]
    assert all(a < b for a, b in itertools.pairwise(seqs)), (
        f"{who}: seq not strictly increasing: {seqs}"
    )
    missing = sorted(set(want) - set(got))
    extra = [item for item in got if item not in want]
    assert got == want, f"{who}: missing {missing}, unexpected {extra}"


async def teach(
    teacher: Wire,
    texts: list[str],
    fault_at: int,
    fault: Callable[[], Awaitable[None]],
) -> None:
    """Send ``texts`` one per tick; run ``fault()`` after ``fault_at`` sent,
    without pausing the sending."""
    fault_task: asyncio.Task[None] | None = None
    start = time.monotonic()
    for n, text in enumerate(texts):
        if n == fault_at:
            fault_task = asyncio.create_task(fault(), name="fault")
        await teacher.chat_send(text)
        # Paced from the start, so a slow send does not stretch the class.
        await asyncio.sleep(max(0.0, start + (n + 1) * TICK_S - time.monotonic()))
    assert fault_task is not None
    await fault_task


@contextlib.asynccontextmanager
async def fleet_of(
    tmp_path: Path, log_url: str, database_url: str = ""
) -> AsyncIterator[Fleet]:
    """A fleet whose processes are all stopped on the way out."""
    fleet = Fleet(tmp_path, log_url, database_url)
    try:
        yield fleet
    finally:
        await asyncio.to_thread(fleet.stop)


async def routed(origin_url: str, token: str) -> list[str]:
    """The edges the origin offers a member, best first."""
    async with httpx.AsyncClient() as http:
        route = await fetch_route(http, origin_url, token)
    return [candidate.edge_id for candidate in route.candidates]


async def new_class(admin: AdminClient, title: str) -> str:
    """Create and start a class; its id."""
    klass = await admin.create_class(title=title)
    await admin.start_class(klass.id)
    return klass.id


# --- an edge dies -----------------------------------------------------------


DEAD_EDGE_GONE_S = 15.0
"""How soon a killed edge's members leave the class total, and the edge
leaves the routes the origin gives."""


def counts_of(votes: dict[str, int], options: int) -> list[int]:
    """The tally of each voter's last choice."""
    counts = [0] * options
    for option in votes.values():
        counts[option] += 1
    return counts


async def latest(teacher: Wire, type_: str) -> dict[str, Any] | None:
    """The last event of ``type_`` the teacher has received."""
    found = [e for e in teacher.events if e["type"] == type_]
    return found[-1] if found else None


async def waited(
    check: Callable[[], Awaitable[bool]], what: str, within_s: float
) -> float:
    """Seconds until ``check()`` holds, polling; fails after ``within_s``."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > within_s:
            pytest.fail(f"{what}: not within {within_s:.0f} s")
        await asyncio.sleep(0.1)
    return time.monotonic() - start


async def poll_everyone(
    teacher: Wire, rooms: list[Classroom], votes: dict[str, int]
) -> str:
    """The teacher opens a poll of three options; each of ``rooms`` votes
    (the n-th for option n mod 3, noted in ``votes``) once it sees the
    poll; returns the poll's id once the teacher's tally counts ``votes``."""
    poll = {"type": "poll.open", "question": "which?", "options": ["a", "b", "c"]}
    await teacher.ws.send(json.dumps(poll))
    opened = await teacher.until(lambda e: e["type"] == "poll.opened")
    poll_id: str = opened["data"]["poll_id"]

    async def all_see_it() -> bool:
        return all(r.state.poll is not None for r in rooms)

    await waited(all_see_it, "every student sees the poll", 5.0)
    for n, room in enumerate(rooms):
        votes[room.member.user_id] = n % 3
        await room.vote(poll_id, n % 3)

    async def tallied() -> bool:
        tally = await latest(teacher, "poll.tally")
        return tally is not None and tally["data"]["counts"] == counts_of(votes, 3)

    await waited(tallied, "every vote in the tally", 10.0)
    return poll_id


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.postgres
async def test_edge_sigkill_moves_students_without_loss(
    tmp_path: Path, log_url: str, postgres_url: str
) -> None:
    """Edge A dies (SIGKILL) while the teacher, on edge C, chats every
    100 ms and a poll is open. Just before, each of its students changed its
    vote and sent a chat message, which edge A may not have logged yet.

    Its students are on another edge (C: B is full) within 5 s; every
    student, on all three edges, gets every message once, in order, with no
    gap in the numbers, the movers' own included; a member of edge A that
    does not come back (a raw client) leaves the class total within 15 s,
    and the origin stops offering edge A; the poll's final tally is every
    member's last vote, exactly.
    """
    texts = numbered("kill", 40)
    async with fleet_of(tmp_path, log_url, postgres_url) as fleet:
        await asyncio.to_thread(fleet.start_origin)
        # The edges stand in one place: without GeoIP the origin ranks by
        # load and class affinity. Edge A is small, so the class spans all.
        await asyncio.to_thread(
            fleet.start_edge, "edge-a", 48.85, 2.35, capacity=FIRST_EDGE_CAPACITY + 1
        )

        async with (
            AdminClient(fleet.origin_url, API_KEY) as admin,
            contextlib.AsyncExitStack() as stack,
        ):
            class_id = await new_class(admin, "edge kill")
            # A member of edge A that will not come back once it dies.
            minted = await admin.mint_token(class_id, "ghost", "Ghost")
            ghost = await Wire.open(fleet.edges["edge-a"], minted.token)
            stack.push_async_callback(ghost.close)
            await ghost.until(lambda e: e["type"] == "welcome")
            rooms = []
            for n in range(STUDENTS):
                if n == FIRST_EDGE_CAPACITY:
                    # Edge B: two students; edge C the rest and the teacher.
                    await asyncio.to_thread(
                        fleet.start_edge, "edge-b", 48.85, 2.35, capacity=2
                    )
                if n == FIRST_EDGE_CAPACITY + 2:
                    await asyncio.to_thread(fleet.start_edge, "edge-c", 48.85, 2.35)
                minted = await admin.mint_token(class_id, f"s{n}", f"S{n}")
                room = connect(fleet.origin_url, minted.token)
                rooms.append(await stack.enter_async_context(room))
            # Edge A, which has most of the class, is the one to die.
            movers = [r for r in rooms if r.edge_id == "edge-a"]
            stayers = [r for r in rooms if r.edge_id in ("edge-b", "edge-c")]
            assert len(movers) == FIRST_EDGE_CAPACITY
            assert len(stayers) == STUDENTS - FIRST_EDGE_CAPACITY
            assert {r.edge_id for r in stayers} == {"edge-b", "edge-c"}

            minted = await admin.mint_token(class_id, "tea", "Tea", Role.TEACHER)
            teacher = await Wire.open(fleet.edges["edge-c"], minted.token)
            stack.push_async_callback(teacher.close)
            await teacher.until(lambda e: e["type"] == "welcome")
            everyone = STUDENTS + 2  # the students, the ghost, the teacher

            # Everyone votes (the ghost for option 2, once it sees the poll).
            votes: dict[str, int] = {"ghost": 2}
            opening = asyncio.create_task(poll_everyone(teacher, rooms, votes))
            await ghost.until(lambda e: e["type"] == "poll.opened")
            opened = await teacher.until(lambda e: e["type"] == "poll.opened")
            vote = {"type": "poll.vote", "poll_id": opened["data"]["poll_id"]}
            await ghost.ws.send(json.dumps(vote | {"option": 2}))
            poll_id = await opening

            listeners = [Listener(room, texts[-1]) for room in rooms]
            moved_after: dict[str, float] = {}
            killed_at = 0.0
            mover_texts = [f"last words of {r.member.user_id}" for r in movers]

            async def kill_and_watch() -> None:
                """Movers change their vote and chat; SIGKILL edge A at once;
                note how soon each of its students is on another edge."""
                nonlocal killed_at
                for room, text in zip(movers, mover_texts, strict=True):
                    changed = (votes[room.member.user_id] + 1) % 3
                    votes[room.member.user_id] = changed
                    await room.vote(poll_id, changed)
                    await room.send_chat(text)
                await asyncio.to_thread(fleet.kill, "edge-a")
                killed_at = time.monotonic()
                # The SDK signals no edge change: look every 20 ms.
                for _ in range(250):
                    for room in movers:
                        if room.edge_id != "edge-a":
                            since = time.monotonic() - killed_at
                            moved_after.setdefault(room.member.user_id, since)
                    if len(moved_after) == len(movers):
                        return
                    if time.monotonic() - killed_at > 5.0:
                        return
                    await asyncio.sleep(0.02)

            await teach(teacher, texts, fault_at=10, fault=kill_and_watch)
            assert len(moved_after) == len(movers), (
                f"{len(movers)} students on edge-a; moved within 5 s: {moved_after}"
            )
            assert max(moved_after.values()) <= 5.0, moved_after
            # Edge B is full: the movers are all on edge C.
            assert all(room.edge_id == "edge-c" for room in movers)

            # The ghost leaves the total; the origin stops offering edge A.
            async def ghost_gone() -> bool:
                count = await latest(teacher, "presence.count")
                return count is not None and count["data"]["count"] == everyone - 1

            await waited(ghost_gone, "the dead edge's member leaves the total", 20)
            gone_after = time.monotonic() - killed_at
            assert gone_after <= DEAD_EDGE_GONE_S, f"left the total {gone_after:.1f} s"

            # The origin closes the ghost's attendance when it was last heard.
            async def ghost_left() -> bool:
                report = await admin.report(class_id)
                ghosts = [a for a in report.attendance if a["user_id"] == "ghost"]
                return len(ghosts) == 1 and ghosts[0]["left_at"] is not None

            await waited(ghost_left, "the ghost's attendance session closes", 10)
            minted = await admin.mint_token(class_id, "late", "Late")

            async def not_offered() -> bool:
                return "edge-a" not in await routed(fleet.origin_url, minted.token)

            await waited(not_offered, "routing drops the dead edge", 20)
            unrouted_after = time.monotonic() - killed_at
            assert unrouted_after <= DEAD_EDGE_GONE_S, f"{unrouted_after:.1f} s"

            # Every message, the movers' last words included, once each.
            await teacher.until(lambda e: e.get("data", {}).get("text") == texts[-1])
            for text in mover_texts:
                await teacher.until(
                    lambda e, t=text: e.get("data", {}).get("text") == t
                )

            async def all_heard() -> bool:
                want = len(teacher.chat)
                return all(len(lis.chat) >= want for lis in listeners)

            await waited(all_heard, "every student has every message", 10)
            assert teacher.frame_errors == []
            assert [t for _, t in teacher.chat if t.startswith("kill-")] == texts
            said = [t for _, t in teacher.chat if not t.startswith("kill-")]
            assert sorted(said) == sorted(mover_texts), said
            for lis in listeners:
                assert lis.resets == 0, f"{lis.room.member.user_id}: state.reset"
                assert_exactly_once(lis.room.member.user_id, lis.chat, teacher.chat)

            # The final tally is every member's last vote, exactly.
            await teacher.ws.send(
                json.dumps({"type": "poll.close", "poll_id": poll_id})
            )
            closed = await teacher.until(lambda e: e["type"] == "poll.closed")
            assert closed["data"]["counts"] == counts_of(votes, 3), votes


# --- the origin restarts ----------------------------------------------------


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.postgres
@pytest.mark.parametrize(
    "stop",
    [
        pytest.param("sigkill", id="crash"),
        pytest.param(
            "sigterm",
            id="graceful",
        ),
    ],
)
async def test_origin_restart_loses_no_chat(
    tmp_path: Path, log_url: str, postgres_url: str, stop: str
) -> None:
    """The origin stops (crash or SIGTERM) and starts again with the same
    key and store while the teacher chats: the edges carry the chat through,
    and the restarted origin's report holds every message once, in order."""
    texts = numbered("restart", 40)
    async with fleet_of(tmp_path, log_url, postgres_url) as fleet:
        await asyncio.to_thread(fleet.start_origin)
        for edge_id in ("edge-a", "edge-b", "edge-c"):
            await asyncio.to_thread(fleet.start_edge, edge_id, 48.85, 2.35)

        async with (
            AdminClient(fleet.origin_url, API_KEY) as admin,
            contextlib.AsyncExitStack() as stack,
        ):
            class_id = await new_class(admin, "origin restart")
            minted = await admin.mint_token(class_id, "tea", "Tea", Role.TEACHER)
            teacher = await Wire.open(fleet.edges["edge-a"], minted.token)
            stack.push_async_callback(teacher.close)
            minted = await admin.mint_token(class_id, "ann", "Ann")
            student = await Wire.open(fleet.edges["edge-b"], minted.token)
            stack.push_async_callback(student.close)
            minted = await admin.mint_token(class_id, "bob", "Bob")
            other = await Wire.open(fleet.edges["edge-c"], minted.token)
            stack.push_async_callback(other.close)
            for member in (teacher, student, other):
                await member.until(lambda e: e["type"] == "welcome")

            async def restart() -> None:
                """Stop the origin, then start it as it was."""
                if stop == "sigkill":
                    await asyncio.to_thread(fleet.kill, "origin")
                else:
                    status = await asyncio.to_thread(fleet.terminate, "origin", 8.0)
                    assert status == 0, fleet.log_text("origin")
                await asyncio.to_thread(fleet.start_origin)

            await teach(teacher, texts, fault_at=10, fault=restart)
            last = lambda e: e.get("data", {}).get("text") == texts[-1]  # noqa: E731
            for member in (teacher, student, other):
                await member.until(last)
                assert member.frame_errors == []
            assert [text for _, text in teacher.chat] == texts
            assert_exactly_once("ann", student.chat, teacher.chat)
            assert_exactly_once("bob", other.chat, teacher.chat)

            # The restarted origin picks the class log up where it left it.
            report_chat: list[tuple[int, str]] = []
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                report = await admin.report(class_id)
                report_chat = [(row["seq"], row["text"]) for row in report.chat]
                if len(report_chat) >= len(texts):
                    break
                await asyncio.sleep(0.2)
            assert_exactly_once("report", report_chat, teacher.chat)


# --- a resume older than the log keeps --------------------------------------

RETENTION = 50


def edge_config(edge_id: str, origin_url: str, tmp_path: Path) -> EdgeConfig:
    """An in-process edge with no media, registering with ``origin_url``."""
    return EdgeConfig(
        edge_id=edge_id,
        port=free_port(),
        origin_url=origin_url,
        edge_key="secret",
        data_dir=tmp_path / edge_id,
        heartbeat_s=0.1,
        transcode=False,
    )


def chat_entry(text: str) -> LogEvent:
    """A teacher's chat message as another edge appends it to the log."""
    data = {"text": text, "name": "Tea", "role": "teacher"}
    return LogEvent(type="chat.message", actor="tea", edge_id="edge-x", data=data)


async def test_resume_older_than_retention_resets(
    tmp_path: Path, keyring: KeyRing
) -> None:
    """A member resumes, on another edge, after more entries than the log
    keeps: it gets a ``state.reset`` with a snapshot, never a silent gap.

    In process, with the edges' own objects at hand; test_faults_resume.py
    does the same with processes (``--log-retention``).
    """
    class_id = f"test-{uuid.uuid4().hex[:12]}"
    log = MemoryClassLog(retention=RETENTION)
    origin = Origin(keyring)
    await origin.start()
    edges = []
    try:
        for edge_id in ("edge-a", "edge-b"):
            edge = await run_edge(edge_config(edge_id, origin.url, tmp_path), log)
            edges.append(edge)
            # The first key fetch runs after start, and nothing signals it.
            for _ in range(250):
                if edge.node.verifier.kids:
                    break
                await asyncio.sleep(0.02)
            assert edge.node.verifier.kids, f"{edge.url} fetched no keys in 5 s"
        edge_a, edge_b = edges
        token = keyring.mint(class_id, "ann", "Ann", Role.STUDENT)

        # Ann sees the start of the class on edge A, then edge A goes away.
        await log.append(class_id, [chat_entry(t) for t in numbered("early", 3)])
        ann = await Wire.open(edge_a.url, token)
        await ann.until(lambda e: e["type"] == "welcome")
        left_at = ann.seq_to
        assert left_at == 3
        await ann.close()
        await edge_a.stop()
        edges.remove(edge_a)

        # While she is away, the class goes on well past the log's retention.
        later = numbered("later", 4 * RETENTION)
        await log.append(class_id, [chat_entry(t) for t in later])
        head = await log.head(class_id)
        with pytest.raises(HistoryTrimmed):
            await log.read(class_id, left_at)

        # She resumes on edge B: it cannot replay, so it must say so.
        ann = await Wire.open(edge_b.url, token, last_seq=left_at)
        try:
            reset = await ann.until(
                lambda e: e["type"] in ("state.reset", "chat.message")
            )
            assert reset["type"] == "state.reset", f"silent gap: {ann.events[:3]}"
            # The reset stands at the log's head (or past it: the edge's own
            # member.joined entry for her may follow at once).
            assert ann.seq_to is not None and ann.seq_to >= head
            snapshot = reset["data"]["snapshot"]
            recent = [e["data"]["text"] for e in snapshot["chat"]]
            assert recent and recent[-1] == later[-1], recent
            # Nothing from before the reset is replayed as if it were new.
            assert ann.chat == []

            # After the reset the numbers go on without a gap.
            await log.append(class_id, [chat_entry("after-reset")])
            await ann.until(lambda e: e["type"] == "chat.message")
            assert [text for _, text in ann.chat] == ["after-reset"]
            assert ann.chat[0][0] > head
            assert ann.frame_errors == []
        finally:
            await ann.close()
    finally:
        for edge in edges:
            await edge.stop()
        await origin.stop()
