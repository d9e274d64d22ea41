"""Redis goes away mid-class: paused for 30 s, then shut down and restarted.

A Redis of the test's own (append-only file, ``appendfsync everysec``)
holds the class log of a real ``liveclass origin`` and three ``liveclass
edge`` processes; members use the SDK, three on each edge. While Redis does
not answer, they go on chatting, voting and raising hands. What must hold:

- each edge shows its own members their chat at once, marked provisional,
  and nothing of it to the other edges' members;
- each edge's metrics show what it holds for the log;
- once Redis answers, every member on every edge has every message exactly
  once, numbered in log order with no gap in the numbers (a provisional
  one comes back as a confirmation, not a second time); the poll's tally
  counts every member's last vote; the hands are in the log's order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shutil
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from conftest import unavailable
from fleet import API_KEY, Fleet
from local_redis import LocalRedis, RedisUnavailable
from redis_cluster import LocalCluster
from test_faults import fleet_of, new_class
from watcher import Watcher

from liveclass.edge_node.batcher import HOLD_AFTER_S
from liveclass.origin.classlog.redis import RedisClassLog
from liveclass.origin.contract import LogEvent
from liveclass.sdk import connect
from liveclass.sdk.admin import AdminClient
from liveclass.sdk.client import Classroom
from liveclass.sdk.events import (
    ChatConfirmed,
    ChatMessage,
    ClassEvent,
    ErrorEvent,
    PollClosed,
    StateReset,
)
from liveclass.sdk.protocol import Role

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.postgres]

PAUSE_S = 30.0
"""How long Redis is frozen (SIGSTOP) in the first outage."""
DOWN_S = 4.0
"""How long Redis is shut down in the second."""
TEACHER_EVERY_S = 0.5
STUDENT_EVERY_S = 2.5
"""Within the edge's chat limit for students (5 per 10 s)."""
SHOWN_WITHIN_S = HOLD_AFTER_S + 1.0
"""How soon a provisional message must reach the sender's edge's members:
the edge notices within :data:`HOLD_AFTER_S` that the log does not answer."""
SETTLE_S = 0.3
"""Margin around an outage's start and end: messages sent that close to it
may have been numbered before, or after."""
RECOVER_S = 20.0
"""How long members may take to get everything once Redis answers."""
EDGES = ("edge-a", "edge-b", "edge-c")
EDGE_CAPACITY = 3
"""Members an edge takes before the next opens: the teacher and two
students fill edge A, the next three students edge B, the rest go to C."""
STUDENTS = 8


@pytest.fixture(params=["redis", "redis-cluster"])
def own_redis(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[LocalRedis | LocalCluster]:
    """A running Redis of this test's own, destroyed after it: one server,
    then (the same test again) a three-node cluster, both persistent."""
    server: LocalRedis | LocalCluster
    try:
        if request.param == "redis":
            server = LocalRedis(tmp_path / "redis")
        else:
            if shutil.which("redis-server") is None:
                raise RedisUnavailable("redis-server is not installed")
            server = LocalCluster(tmp_path / "redis-cluster", persistent=True)
    except RedisUnavailable as exc:
        unavailable(str(exc), "install redis-server to run this test")
    try:
        server.start()
        yield server
    finally:
        server.destroy()


class Member(Watcher):
    """An SDK classroom and what it received."""

    def __init__(self, room: Classroom) -> None:
        self.edge_id = room.edge_id
        self.shown: list[ChatMessage] = []
        """Every chat message delivered, provisional or numbered."""
        self.numbered: list[tuple[int, str]] = []
        """``(seq, text)`` of numbered messages and confirmations, as came."""
        self.provisional_at: dict[str, float] = {}
        self.confirmed = 0
        self.closed: dict[str, list[int]] = {}
        self.errors: list[ErrorEvent] = []
        self.resets = 0
        super().__init__(room)

    def _keep(self, event: ClassEvent) -> None:
        if isinstance(event, ChatMessage):
            self.shown.append(event)
            if event.provisional:
                assert event.seq is None
                self.provisional_at[event.text] = time.monotonic()
            else:
                assert event.seq is not None
                self.numbered.append((event.seq, event.text))
        elif isinstance(event, ChatConfirmed):
            assert event.seq is not None
            self.confirmed += 1
            self.numbered.append((event.seq, event.message.text))
        elif isinstance(event, PollClosed):
            self.closed[event.poll_id] = list(event.counts)
        elif isinstance(event, ErrorEvent):
            self.errors.append(event)
        elif isinstance(event, StateReset):
            self.resets += 1

    async def until(self, done: Callable[[], bool], wait_s: float = 10.0) -> None:
        """Return once ``done()`` holds; fail after ``wait_s``."""
        try:
            await super().until(done, wait_s)
        except TimeoutError:
            pytest.fail(f"{self.user_id} on {self.edge_id}: not within {wait_s} s")


@dataclass
class Outage:
    """When the class log was away, and the messages sent meanwhile."""

    began: float
    ended: float = 0.0

    def covers(self, at: float) -> bool:
        """Whether a message sent at ``at`` was certainly held."""
        return self.began + SETTLE_S <= at <= self.ended - SETTLE_S


@dataclass
class Lesson:
    """A class in progress on three edges: who is where, and what they
    sent."""

    admin: AdminClient
    class_id: str
    teacher: Member
    students: list[Member]
    sent_at: dict[str, float] = field(default_factory=dict)
    sent_by: dict[str, Member] = field(default_factory=dict)
    votes: dict[str, int] = field(default_factory=dict)
    raised: dict[str, list[str]] = field(default_factory=dict)
    """Per edge, the students who raised a hand there, in order."""
    outages: list[Outage] = field(default_factory=list)
    raises = 0
    """Hands raised since the start."""

    @property
    def members(self) -> list[Member]:
        """Everyone: the teacher first."""
        return [self.teacher, *self.students]

    async def chat(
        self, member: Member, prefix: str, every_s: float, quiet: asyncio.Event
    ) -> None:
        """Send numbered chat messages every ``every_s`` until ``quiet``."""
        start = time.monotonic()
        n = 0
        while not quiet.is_set():
            text = f"{prefix}-{n:03d}"
            self.sent_at[text] = time.monotonic()
            self.sent_by[text] = member
            await member.room.send_chat(text)
            n += 1
            pause = start + n * every_s - time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(quiet.wait(), max(0.0, pause))

    async def open_poll(self, question: str) -> str:
        """Open a poll; its id once everyone sees it."""
        await self.teacher.room.open_poll(question, ["a", "b", "c"])
        for member in self.members:
            await member.until(
                lambda m=member: (
                    m.room.state.poll is not None
                    and m.room.state.poll.question == question
                ),
                10,
            )
        poll = self.teacher.room.state.poll
        assert poll is not None
        self.votes = {}
        return poll.poll_id

    async def vote(self, poll_id: str, choose: Callable[[int], int]) -> None:
        """Every student votes ``choose(n)``."""
        for n, student in enumerate(self.students):
            self.votes[student.user_id] = choose(n)
            await student.room.vote(poll_id, choose(n))

    async def raise_hands(self, every_s: float) -> None:
        """Every student raises a hand, one after the other."""
        for student in self.students:
            self.raised.setdefault(student.edge_id, []).append(student.user_id)
            self.raises += 1
            await student.room.raise_hand()
            await asyncio.sleep(every_s)

    def counts(self) -> list[int]:
        """The tally the votes cast make."""
        counts = [0, 0, 0]
        for option in self.votes.values():
            counts[option] += 1
        return counts


@contextlib.asynccontextmanager
async def lesson(fleet: Fleet) -> AsyncIterator[Lesson]:
    """A teacher and two students on edge A, three students on edge B and
    three on edge C. Edges B and C start when the one before is full."""
    async with (
        AdminClient(fleet.origin_url, API_KEY) as admin,
        contextlib.AsyncExitStack() as stack,
    ):
        class_id = await new_class(admin, "redis outage")

        async def join(user_id: str, role: Role = Role.STUDENT) -> Member:
            minted = await admin.mint_token(class_id, user_id, user_id.upper(), role)
            room = connect(fleet.origin_url, minted.token)
            return Member(await stack.enter_async_context(room))

        teacher = await join("tea", Role.TEACHER)
        students = []
        for n in range(STUDENTS):
            if n == EDGE_CAPACITY - 1:
                await asyncio.to_thread(
                    fleet.start_edge, "edge-b", 48.85, 2.35, capacity=EDGE_CAPACITY
                )
            if n == 2 * EDGE_CAPACITY - 1:
                await asyncio.to_thread(fleet.start_edge, "edge-c", 48.85, 2.35)
            students.append(await join(f"s{n}"))
        on = [m.edge_id for m in (teacher, *students)]
        assert on == [e for e in EDGES for _ in range(EDGE_CAPACITY)], on
        yield Lesson(admin, class_id, teacher, students)


@contextlib.asynccontextmanager
async def chatting(now: Lesson, prefix: str) -> AsyncIterator[None]:
    """Everyone chats inside the block: the teacher often, students less."""
    quiet = asyncio.Event()
    every = [(now.teacher, f"{prefix}-tea", TEACHER_EVERY_S)]
    every += [(s, f"{prefix}-{s.user_id}", STUDENT_EVERY_S) for s in now.students]
    tasks = [
        asyncio.create_task(now.chat(member, name, every_s, quiet))
        for member, name, every_s in every
    ]
    try:
        yield
    finally:
        quiet.set()
        done = await asyncio.gather(*tasks, return_exceptions=True)
    failed = [result for result in done if result is not None]
    assert not failed, f"members failed to chat: {failed}"


async def metrics(http: httpx.AsyncClient, edge_url: str) -> dict[str, float]:
    """An edge's metrics without labels, by name."""
    text = (await http.get(f"{edge_url}/metrics", timeout=5)).text
    found = re.findall(r"^(liveclass_\w+) (\S+)$", text, re.MULTILINE)
    return {name: float(value) for name, value in found}


async def watch_metrics(
    http: httpx.AsyncClient, fleet: Fleet, seen: dict[str, list[dict[str, float]]]
) -> None:
    """Read every edge's metrics every half second until cancelled."""
    while True:
        for edge_id, url in fleet.edges.items():
            seen.setdefault(edge_id, []).append(await metrics(http, url))
        await asyncio.sleep(0.5)


async def read_log(redis_url: str, class_id: str) -> list[LogEvent]:
    """The whole class log."""
    log = RedisClassLog.from_url(redis_url)
    try:
        entries = []
        while True:
            after = entries[-1].seq if entries else 0
            page = await log.read(class_id, after)
            if not page:
                break
            entries += page
    finally:
        await log.close()
    return entries


async def assert_all_delivered(now: Lesson, redis_url: str) -> str:
    """Every member has every message once, numbered in log order; the
    sender's edge showed it at once as provisional, the other did not.
    Returns how long that took after the outage, for the report."""
    sent = sorted(now.sent_at)
    want: list[tuple[int, str]] = []
    for _ in range(int(RECOVER_S * 10)):
        entries = await read_log(redis_url, now.class_id)
        want = [(e.seq, e.data["text"]) for e in entries if e.type == "chat.message"]
        if len(want) >= len(sent):
            break
        await asyncio.sleep(0.1)
    assert sorted(text for _, text in want) == sent, "accepted chat lost or doubled"
    raised = [e for e in entries if e.type == "hand.raised"]
    assert len(raised) == now.raises, "accepted hands lost or doubled"
    for member in now.members:
        await member.until(lambda m=member: len(m.numbered) >= len(want), RECOVER_S)
    latest = 0.0

    for member in now.members:
        who = f"{member.user_id} on {member.edge_id}"
        assert member.numbered == want, f"{who}: not the log, once, in order"
        shown = Counter(message.text for message in member.shown)
        assert sorted(shown) == sent and set(shown.values()) == {1}, (
            f"{who}: shown twice: {[t for t, n in shown.items() if n > 1]}"
        )
        assert member.errors == [] and member.resets == 0, who
        assert member.room.edge_id == member.edge_id, f"{who}: moved"
        for text, at in now.sent_at.items():
            local = now.sent_by[text].edge_id == member.edge_id
            held = any(outage.covers(at) for outage in now.outages)
            if local and held:
                assert text in member.provisional_at, f"{who}: {text} not shown"
                late = member.provisional_at[text] - at
                assert late <= SHOWN_WITHIN_S, f"{who}: {text} shown {late:.1f} s late"
                if now.outages[-1].covers(at):
                    latest = max(latest, late)
            elif not local:
                assert text not in member.provisional_at, f"{who}: {text} from afar"
        assert member.confirmed == len(member.provisional_at), who
    return f"shown provisional within {latest:.2f} s"


async def assert_hands_in_log_order(now: Lesson) -> None:
    """Every member sees the same queue: the log's order, which keeps each
    edge's order of raising."""
    raised = [uid for uids in now.raised.values() for uid in uids]

    def queue(member: Member) -> list[str]:
        return [hand.user_id for hand in member.room.state.hands]

    for member in now.members:
        await member.until(lambda m=member: len(queue(m)) == len(raised), RECOVER_S)
    order = queue(now.teacher)
    assert sorted(order) == sorted(raised)
    for member in now.members:
        assert queue(member) == order, member.user_id
    for edge_id, uids in now.raised.items():
        assert [uid for uid in order if uid in uids] == uids, edge_id


async def lower_hands(now: Lesson) -> None:
    """Every student lowers its hand; return once nobody's is up."""
    for student in now.students:
        await student.room.lower_hand()
    for member in now.members:
        await member.until(lambda m=member: not m.room.state.hands, 10)
    now.raised = {}


async def close_poll(now: Lesson, poll_id: str) -> None:
    """Close the poll; its result must count every member's last vote."""
    want = now.counts()
    await now.teacher.until(lambda: now.teacher.room.state.poll_counts == want, 10)
    await now.teacher.room.close_poll(poll_id)
    for member in now.members:
        await member.until(lambda m=member: poll_id in m.closed, 10)
        assert member.closed[poll_id] == want, member.user_id


def assert_held_in_metrics(seen: dict[str, list[dict[str, float]]]) -> None:
    """Every edge showed a backlog and a held class during the outage."""
    assert sorted(seen) == list(EDGES), sorted(seen)
    for edge_id, samples in seen.items():
        peak = max(s["liveclass_edge_log_backlog"] for s in samples)
        held = max(s["liveclass_edge_log_held_classes"] for s in samples)
        assert peak > 0 and held == 1, f"{edge_id}: backlog {peak}, held {held}"


async def drained(http: httpx.AsyncClient, fleet: Fleet, outage: Outage) -> str:
    """Wait until every edge holds nothing; how long that took, for the
    report."""
    deadline = time.monotonic() + RECOVER_S
    while time.monotonic() < deadline:
        values = [await metrics(http, url) for url in fleet.edges.values()]
        if all(v["liveclass_edge_log_backlog"] == 0 for v in values):
            return f"appended {time.monotonic() - outage.ended:.2f} s after"
        await asyncio.sleep(0.02)
    pytest.fail(f"the edges still hold entries {RECOVER_S} s after the outage")


def held_peaks(seen: dict[str, list[dict[str, float]]]) -> str:
    """The largest backlog each edge showed, for the report."""
    return "held at most " + ", ".join(
        f"{max(s['liveclass_edge_log_backlog'] for s in samples):.0f} on {edge_id}"
        for edge_id, samples in sorted(seen.items())
    )


async def assert_nothing_held(http: httpx.AsyncClient, fleet: Fleet) -> None:
    """Every edge holds nothing any more, and showed chat provisionally."""
    assert sorted(fleet.edges) == list(EDGES), sorted(fleet.edges)
    for edge_id, url in fleet.edges.items():
        after = await metrics(http, url)
        assert after["liveclass_edge_log_backlog"] == 0, edge_id
        assert after["liveclass_edge_log_held_classes"] == 0, edge_id
        assert after["liveclass_edge_provisional_chat_total"] > 0, edge_id


def assert_logged_once_per_outage(fleet: Fleet, outages: int) -> None:
    """Each edge said when the log went away and came back, once each per
    outage, and never that it was lost."""
    for edge_id in fleet.edges:
        text = fleet.log_text(edge_id)
        assert text.count("class log not answering") == outages, edge_id
        assert text.count("class log answering again") == outages, edge_id
        assert "class log lost" not in text, edge_id
        assert "entries dropped" not in text, edge_id


async def through_outage(
    now: Lesson,
    http: httpx.AsyncClient,
    fleet: Fleet,
    redis_url: str,
    name: str,
    away: Callable[[], None],
    back: Callable[[], None],
    lasting_s: float,
    during: Callable[[str], Awaitable[None]],
) -> str:
    """One outage: a poll opens and the class chats; Redis goes ``away``
    for ``lasting_s`` while ``during(poll_id)`` votes and raises hands, then
    comes ``back``. Checks everything, closes the poll, lowers the hands;
    returns what was measured, for the report."""
    poll = await now.open_poll(f"{name}?")
    await now.vote(poll, lambda n: n % 3)
    seen: dict[str, list[dict[str, float]]] = {}
    async with chatting(now, name):
        await asyncio.sleep(1)
        await asyncio.to_thread(away)
        outage = Outage(time.monotonic())
        now.outages.append(outage)
        watcher = asyncio.create_task(watch_metrics(http, fleet, seen))
        try:
            await during(poll)
            await asyncio.sleep(max(0.0, outage.began + lasting_s - time.monotonic()))
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        outage.ended = time.monotonic()
        await asyncio.to_thread(back)
        appended = await drained(http, fleet, outage)
        await asyncio.sleep(1)  # and the class goes on a little
    assert_held_in_metrics(seen)
    shown = await assert_all_delivered(now, redis_url)
    await assert_hands_in_log_order(now)
    await close_poll(now, poll)
    await assert_nothing_held(http, fleet)
    await lower_hands(now)
    return f"{name}: {held_peaks(seen)}, {shown}, {appended}"


async def test_redis_paused_then_restarted_loses_and_doubles_nothing(
    tmp_path: Path,
    own_redis: LocalRedis | LocalCluster,
    postgres_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis freezes for 30 s, then later shuts down and starts again, while
    the class chats, votes and raises hands: see the module doc."""
    caplog.set_level(logging.INFO, logger="liveclass.sdk")
    async with (
        fleet_of(tmp_path, own_redis.url, postgres_url) as fleet,
        httpx.AsyncClient() as http,
    ):
        await asyncio.to_thread(fleet.start_origin)
        await asyncio.to_thread(
            fleet.start_edge, "edge-a", 48.85, 2.35, capacity=EDGE_CAPACITY
        )
        async with lesson(fleet) as now:

            async def while_frozen(poll: str) -> None:
                await asyncio.sleep(5)
                await now.vote(poll, lambda n: (n + 1) % 3)
                await now.raise_hands(every_s=2)
                await now.vote(poll, lambda n: (n + 2) % 3)

            async def while_down(poll: str) -> None:
                await now.vote(poll, lambda n: 2 - n % 3)
                await now.raise_hands(every_s=0.3)

            report = [
                await through_outage(
                    now,
                    http,
                    fleet,
                    own_redis.url,
                    "freeze",
                    own_redis.pause,
                    own_redis.resume,
                    PAUSE_S,
                    while_frozen,
                ),
                await through_outage(
                    now,
                    http,
                    fleet,
                    own_redis.url,
                    "restart",
                    own_redis.shutdown,
                    own_redis.start,
                    DOWN_S,
                    while_down,
                ),
            ]

        assert_logged_once_per_outage(fleet, outages=2)
        gaps = [r.message for r in caplog.records if "gap after seq" in r.message]
        assert gaps == [], gaps
        print(f"\n{len(now.sent_at)} messages; " + "; ".join(report))
