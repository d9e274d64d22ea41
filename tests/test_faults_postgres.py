"""The database goes away mid-class, and the origin dies with entries
pending: every chat message and vote still reaches the database exactly once.

Each test starts a PostgreSQL of its own (the shared one is never stopped),
a real ``liveclass origin`` and ``liveclass edge`` on the shared Redis, and
members that use the SDK. What the members saw is the truth the origin's
report must match: the same chat messages with the same numbers, each once,
and poll results equal to the votes cast.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fleet import API_KEY, Fleet
from local_postgres import LocalPostgres
from test_faults import assert_exactly_once, fleet_of, new_class
from watcher import Watcher

from liveclass.origin.classlog.redis import RedisClassLog
from liveclass.origin.reconcile import GROUP
from liveclass.sdk import connect
from liveclass.sdk.admin import AdminClient, ClassReport
from liveclass.sdk.client import Classroom
from liveclass.sdk.events import (
    ChatMessage,
    ClassEvent,
    ErrorEvent,
    PollClosed,
    StateReset,
)
from liveclass.sdk.protocol import Role

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.postgres]

OUTAGE_S = 30.0
"""How long the database stays away in the outage test."""
TEACHER_EVERY_S = 0.25
STUDENT_EVERY_S = 3.0
"""Within the edge's chat limit for students (5 per 10 s)."""
CATCH_UP_S = 30.0
"""How long the origin may take to store the backlog once the database is
back."""
IN_FLIGHT = 10
"""A backlog this small is what a live class has on its way at any time."""


class Member(Watcher):
    """An SDK classroom and what it received: chat as ``(seq, text)``,
    closed polls as ``poll_id -> (counts, votes)``, refusals."""

    def __init__(self, room: Classroom) -> None:
        self.chat: list[tuple[int, str]] = []
        self.closed: dict[str, tuple[list[int], int]] = {}
        self.errors: list[ErrorEvent] = []
        self.resets = 0
        super().__init__(room)

    def _keep(self, event: ClassEvent) -> None:
        if isinstance(event, ChatMessage):
            assert event.seq is not None
            self.chat.append((event.seq, event.text))
        elif isinstance(event, PollClosed):
            self.closed[event.poll_id] = (list(event.counts), event.votes)
        elif isinstance(event, ErrorEvent):
            self.errors.append(event)
        elif isinstance(event, StateReset):
            self.resets += 1


@dataclass
class Lesson:
    """A class in progress: its members, and what they sent."""

    admin: AdminClient
    class_id: str
    teacher: Member
    students: list[Member]
    sent: list[str] = field(default_factory=list)
    votes: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per poll, each student's last vote."""

    async def chat(
        self, member: Member, prefix: str, every_s: float, quiet: asyncio.Event
    ) -> None:
        """Send numbered chat messages every ``every_s`` until ``quiet``."""
        start = time.monotonic()
        n = 0
        while not quiet.is_set():
            text = f"{prefix}-{n:03d}"
            await member.room.send_chat(text)
            self.sent.append(text)
            n += 1
            pause = start + n * every_s - time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(quiet.wait(), max(0.0, pause))

    async def open_poll(self, question: str, options: list[str]) -> str:
        """Open a poll as the teacher; its id once every student sees it."""
        await self.teacher.room.open_poll(question, options)

        def seen(member: Member) -> bool:
            poll = member.room.state.poll
            return poll is not None and poll.question == question

        for student in self.students:
            await student.until(lambda s=student: seen(s))
        poll = self.students[0].room.state.poll
        assert poll is not None
        self.votes[poll.poll_id] = {}
        return poll.poll_id

    async def vote(self, poll_id: str, choose: Callable[[int], int]) -> None:
        """Every student votes ``choose(n)`` (n: the student's index); return
        once the teacher's tally counts every vote. Members are on several
        edges: only a vote the log has before the close counts, so a change
        must leave counts different from the votes it changes."""
        for n, student in enumerate(self.students):
            option = choose(n)
            await student.room.vote(poll_id, option)
            self.votes[poll_id][student.user_id] = option
        want = self.counts(poll_id)
        await self.teacher.until(lambda: self.teacher.room.state.poll_counts == want)

    async def close_poll(self, poll_id: str) -> None:
        """Close a poll as the teacher; return once every member has its
        result."""
        await self.teacher.room.close_poll(poll_id)
        for member in (self.teacher, *self.students):
            await member.until(lambda m=member: poll_id in m.closed)

    def counts(self, poll_id: str, options: int = 3) -> list[int]:
        """The result the votes cast make."""
        counts = [0] * options
        for option in self.votes[poll_id].values():
            counts[option] += 1
        return counts


EDGES = ("edge-a", "edge-b", "edge-c")


@contextlib.asynccontextmanager
async def lesson(fleet: Fleet, students: int) -> AsyncIterator[Lesson]:
    """A live class with a teacher and ``students`` spread over three edge
    processes, joined through the SDK; every token is minted first, while
    the database answers.

    The edges start one by one, each of the first two taking at most an
    equal share, so that members fill one edge before the next opens.
    """
    share = max(1, (students + 1) // len(EDGES))
    async with (
        AdminClient(fleet.origin_url, API_KEY) as admin,
        contextlib.AsyncExitStack() as stack,
    ):
        class_id = await new_class(admin, "database outage")
        tokens = [(await admin.mint_token(class_id, "tea", "Tea", Role.TEACHER)).token]
        for n in range(students):
            tokens.append((await admin.mint_token(class_id, f"s{n}", f"S{n}")).token)
        joined: list[Member] = []
        for i, edge_id in enumerate(EDGES):
            last = i == len(EDGES) - 1
            await asyncio.to_thread(
                fleet.start_edge,
                edge_id,
                48.85,
                2.35,
                capacity=None if last else share,
            )
            batch = tokens[i * share :] if last else tokens[i * share : (i + 1) * share]
            for token in batch:
                room = await stack.enter_async_context(connect(fleet.origin_url, token))
                joined.append(Member(room))
        on = {m.room.edge_id for m in joined}
        assert on == set(EDGES), f"members on {sorted(on)}, not on three edges"
        yield Lesson(admin, class_id, joined[0], joined[1:])


@contextlib.asynccontextmanager
async def chatting(lesson: Lesson, prefix: str) -> AsyncIterator[None]:
    """Everyone chats inside the block: the teacher often, each student
    sometimes. Leaving it stops them between two messages."""
    quiet = asyncio.Event()
    every = [(lesson.teacher, f"{prefix}-tea", TEACHER_EVERY_S)]
    every += [
        (s, f"{prefix}-s{n}", STUDENT_EVERY_S) for n, s in enumerate(lesson.students)
    ]
    tasks = [
        asyncio.create_task(lesson.chat(member, name, every_s, quiet))
        for member, name, every_s in every
    ]
    try:
        yield
    finally:
        quiet.set()
        done = await asyncio.gather(*tasks, return_exceptions=True)
    failed = [result for result in done if result is not None]
    assert not failed, f"members failed to chat: {failed}"


async def health(http: httpx.AsyncClient, origin_url: str) -> dict[str, Any]:
    """The origin's ``/healthz`` document."""
    answer = await http.get(f"{origin_url}/healthz", timeout=5)
    assert answer.status_code == 200, answer.text
    document: dict[str, Any] = answer.json()
    return document


async def drained(http: httpx.AsyncClient, origin_url: str) -> float:
    """Seconds until the origin reaches the database again and its backlog
    is down to :data:`IN_FLIGHT`; fails after :data:`CATCH_UP_S`."""
    start = time.monotonic()
    state: dict[str, Any] = {}
    while time.monotonic() - start < CATCH_UP_S:
        state = await health(http, origin_url)
        if state["store"] == "ok" and (state["backlog"] or 0) <= IN_FLIGHT:
            return time.monotonic() - start
        await asyncio.sleep(0.1)
    raise AssertionError(f"backlog not stored in {CATCH_UP_S:.0f} s: {state}")


async def caught_up(lesson: Lesson, origin_url: str, within_s: float) -> ClassReport:
    """End the class and wait until the origin has stored all of it; the
    report then."""
    await lesson.admin.end_class(lesson.class_id)
    want = len(lesson.teacher.chat)
    report = await lesson.admin.report(lesson.class_id)
    deadline = time.monotonic() + within_s
    async with httpx.AsyncClient() as http:
        while time.monotonic() < deadline:
            report = await lesson.admin.report(lesson.class_id)
            closed = all(p["closed_at"] is not None for p in report.polls)
            state = await health(http, origin_url)
            if len(report.chat) >= want and closed and state["reconciling"] == 0:
                return report
            await asyncio.sleep(0.2)
    return report


def assert_stored_once(lesson: Lesson, report: ClassReport) -> None:
    """The report holds what the members saw: every message once, every
    poll's result equal to the votes cast, every member's attendance once."""
    teacher = lesson.teacher
    for member in (teacher, *lesson.students):
        assert member.errors == [], f"{member.user_id}: refused {member.errors}"
        assert member.resets == 0, f"{member.user_id}: state.reset"
    assert sorted(text for _, text in teacher.chat) == sorted(lesson.sent)
    stored = [(row["seq"], row["text"]) for row in report.chat]
    assert_exactly_once("report", stored, teacher.chat)
    assert len({row["seq"] for row in report.chat}) == len(report.chat)

    polls = {row["poll_id"]: row for row in report.polls}
    assert sorted(polls) == sorted(lesson.votes)
    for poll_id, votes in lesson.votes.items():
        want = lesson.counts(poll_id)
        assert teacher.closed[poll_id] == (want, len(votes))
        assert (polls[poll_id]["counts"], polls[poll_id]["votes"]) == (
            want,
            len(votes),
        ), f"poll {poll_id}"

    users = [row["user_id"] for row in report.attendance]
    members = [teacher.user_id, *(s.user_id for s in lesson.students)]
    assert sorted(users) == sorted(members), "each member's session stored once"


def warnings_of(fleet: Fleet, name: str) -> list[str]:
    """The WARNING and ERROR lines a process logged."""
    return [
        line
        for line in fleet.log_text(name).splitlines()
        if re.search(r" (WARNING|ERROR) ", line)
    ]


async def test_postgres_outage_loses_and_doubles_nothing(
    tmp_path: Path, log_url: str, own_postgres: LocalPostgres
) -> None:
    """PostgreSQL stops for 30 s while the class chats and votes: the class
    goes on, the origin says once that the database is gone and once that
    it is back, shows the backlog, and then stores every event once."""
    async with (
        fleet_of(tmp_path, log_url, own_postgres.url) as fleet,
        httpx.AsyncClient() as http,
    ):
        await asyncio.to_thread(fleet.start_origin)
        async with lesson(fleet, students=6) as now:
            first = await now.open_poll("Before the outage?", ["a", "b", "c"])
            await now.vote(first, lambda n: n % 3)
            seen: list[dict[str, Any]] = []
            async with chatting(now, "talk"):
                await asyncio.sleep(2)

                await asyncio.to_thread(own_postgres.stop)
                stopped_at = time.monotonic()
                # Members change their minds, a poll closes and another
                # opens, all while nothing can be stored.
                # Counts that differ from the first votes', so that waiting
                # for the tally waits for the changes.
                await now.vote(first, lambda n: 0 if n < 3 else n % 3)
                await now.close_poll(first)
                second = await now.open_poll("During the outage?", ["x", "y", "z"])
                await now.vote(second, lambda n: min(n, 2))
                while time.monotonic() - stopped_at < OUTAGE_S:
                    seen.append(await health(http, fleet.origin_url))
                    await asyncio.sleep(0.5)

                await asyncio.to_thread(own_postgres.start)
                catch_up_s = await drained(http, fleet.origin_url)
                await now.vote(second, lambda n: 2 - min(n, 2))
                await asyncio.sleep(2)
            await now.close_poll(second)
            report = await caught_up(now, fleet.origin_url, CATCH_UP_S)
            after = await health(http, fleet.origin_url)

        down = [s for s in seen if s["store"] == "unreachable"]
        assert down, f"the origin never noticed the outage: {seen[:3]}"
        assert all(s["status"] == "degraded" for s in down)
        peak = max(s["backlog"] or 0 for s in down)
        assert peak > 0, "the backlog was not shown"
        assert after == {
            "status": "ok",
            "store": "ok",
            "class_log": "ok",
            "reconciling": 0,
            "backlog": 0,
        }
        assert_stored_once(now, report)

        warnings = warnings_of(fleet, "origin")
        assert len([w for w in warnings if "database unreachable" in w]) == 1
        assert len([w for w in warnings if "database reachable again" in w]) == 1
        assert len(warnings) == 2, "\n".join(warnings)
        print(
            f"\n{len(now.sent)} messages, {len(now.teacher.chat)} stored; "
            f"backlog peaked at {peak} entries; stored "
            f"{catch_up_s:.1f} s after the database came back"
        )


async def test_origin_killed_with_entries_pending(
    tmp_path: Path, log_url: str, own_postgres: LocalPostgres
) -> None:
    """The origin is killed (SIGKILL) while entries it read wait for a
    database that is away; the class goes on without it. Restarted, it reads
    those pending entries again and stores them and the rest, each once,
    with the votes of the poll open across the crash counted exactly."""
    log = RedisClassLog.from_url(log_url)
    async with fleet_of(tmp_path, log_url, own_postgres.url) as fleet:
        await asyncio.to_thread(fleet.start_origin)
        try:
            async with lesson(fleet, students=3) as now:
                poll = await now.open_poll("Across the crash?", ["a", "b", "c"])
                await now.vote(poll, lambda n: n % 3)
                async with chatting(now, "crash"):
                    await asyncio.sleep(1)

                    await asyncio.to_thread(own_postgres.stop)
                    for _ in range(150):
                        if (await log.backlog(now.class_id, GROUP)).pending:
                            break
                        await asyncio.sleep(0.1)
                    await asyncio.to_thread(fleet.kill, "origin")
                    pending = await log.backlog(now.class_id, GROUP)
                    assert pending.pending, "no entry was pending in 15 s"
                    await now.vote(poll, lambda n: 1)  # other counts than before
                    await asyncio.sleep(2)

                    await asyncio.to_thread(own_postgres.start)
                    await asyncio.to_thread(fleet.start_origin)
                    await asyncio.sleep(1)
                await now.close_poll(poll)
                report = await caught_up(now, fleet.origin_url, CATCH_UP_S)
            assert_stored_once(now, report)
            assert (await log.backlog(now.class_id, GROUP)).total == 0
            print(f"\nkilled with {pending.pending} entries pending")
        finally:
            await log.close()
