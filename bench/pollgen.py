"""The poll scenario's members: a teacher and thousands of students spread
over several edges, as lean WebSocket clients (:mod:`bench.wsclient`).

The teacher opens a poll; every student votes within the vote window, a
share of them changes its vote, and a share moves to another edge in the
middle (a clean close, then a resume there with ``last_seq``). The teacher
closes the poll; each student's receipt of the closed poll's counts is
timed from the moment the close was sent, and the counts are compared with
the tally the scenario expects from the votes it sent.

Who does what, and when, is drawn once from a seed (:func:`make_plan`).
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from bench.report import percentile_ms
from bench.wsclient import Client, State, Stats, connect

OPTIONS = ["red", "green", "blue", "gold"]
"""The poll's options; short, so the counts sit close to the event's type."""

_OPENED = re.compile(rb'"type":"poll\.opened","seq":\d+,.*?"poll_id":"(\w+)"', re.S)
_CLOSED = re.compile(
    rb'"type":"poll\.closed","seq":(\d+),.*?"counts":\[([\d,]*)\]', re.S
)
_TALLY = re.compile(rb'"type":"poll\.tally".*?"counts":\[([\d,]*)\]', re.S)
_ERROR = b'"type":"error"'
_RESET = b'"type":"state.reset"'


class Kind(Enum):
    """What a student does at a planned moment."""

    VOTE = "vote"
    MOVE = "move"


@dataclass(order=True, frozen=True)
class Action:
    """One student's planned step, ``at`` seconds after the poll opened."""

    at: float
    student: int
    kind: Kind = field(compare=False)
    option: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Plan:
    """Every student's first edge and steps, in time order."""

    edge_of: list[int]
    actions: list[Action]

    def count(self, kind: Kind) -> int:
        """How many steps of ``kind`` there are."""
        return sum(1 for a in self.actions if a.kind is kind)


def make_plan(
    students: int,
    edges: int,
    vote_s: float,
    change_share: float,
    move_share: float,
    seed: int,
) -> Plan:
    """Draw the scenario: students spread evenly over ``edges``; each votes
    in the first 60% of ``vote_s``; ``change_share`` of them votes again,
    for another option, 20% to 40% of ``vote_s`` later (so still within
    it); ``move_share`` of them moves to the next edge between 40% and 60%
    of it, in the middle of the voting."""
    rng = random.Random(seed)
    actions: list[Action] = []
    first = [rng.uniform(0, 0.6 * vote_s) for _ in range(students)]
    choice = [rng.randrange(len(OPTIONS)) for _ in range(students)]
    for i in range(students):
        actions.append(Action(first[i], i, Kind.VOTE, choice[i]))
    for i in rng.sample(range(students), round(students * change_share)):
        other = (choice[i] + rng.randrange(1, len(OPTIONS))) % len(OPTIONS)
        at = first[i] + rng.uniform(0.2 * vote_s, 0.4 * vote_s)
        actions.append(Action(at, i, Kind.VOTE, other))
    for i in rng.sample(range(students), round(students * move_share)):
        actions.append(Action(rng.uniform(0.4 * vote_s, 0.6 * vote_s), i, Kind.MOVE))
    return Plan([i % edges for i in range(students)], sorted(actions))


class Seat:
    """One member across its connections: what it saw and what it sent."""

    def __init__(self, index: int, token: str, edge: int) -> None:
        self.index = index
        self.token = token
        self.edge = edge
        self.client: PollClient | None = None
        self.opened = False
        self.moving = False
        self.pending: list[int] = []
        self.voted: int | None = None
        """The last option sent: the one that must count."""
        self.votes_sent = 0
        self.sent_at = 0.0
        self.closed_ns: int | None = None
        self.closed_seq = 0
        self.closed_counts = b""
        self.errors = 0
        self.first_error = ""
        self.resets = 0
        self.move_error: str | None = None

    @property
    def joined(self) -> bool:
        """Whether its current connection is in."""
        return self.client is not None and self.client.state is State.JOINED

    @property
    def ready(self) -> bool:
        """Whether a vote can go now: joined, and its edge opened the poll."""
        return self.opened and not self.moving and self.joined

    def vote(self, option: int, message: bytes) -> None:
        """Send a vote now if :attr:`ready`, else as soon as it is."""
        if not self.ready:
            self.pending.append(option)
            return
        assert self.client is not None
        self.client.send_text(message)
        self.voted = option
        self.votes_sent += 1
        self.sent_at = time.monotonic()

    def scan(self, data: bytes, now_ns: int) -> None:
        """Look for the poll's events and for errors in received frames."""
        if not self.opened and _OPENED.search(data):
            self.opened = True
        closed = _CLOSED.search(data)
        if closed is not None and self.closed_ns is None:
            self.closed_ns = now_ns
            self.closed_seq = int(closed.group(1))
            self.closed_counts = closed.group(2)
        if _ERROR in data:
            self.errors += data.count(_ERROR)
            if not self.first_error:
                at = data.find(_ERROR)
                self.first_error = data[at : at + 200].decode(errors="replace")


class PollClient(Client):
    """A connection of one :class:`Seat`; hands the frames that mention the
    poll or an error to the scenario, which notes them and sends the votes
    the seat holds once it may."""

    def __init__(self, seat: Seat, scenario: PollScenario, path: str, host: str):
        resuming = "last_seq=" in path
        # A resume starts with the frames missed, not with a welcome.
        signal = b'"seq_from":' if resuming else b'"type":"welcome"'
        super().__init__(path, host, signal, sampled=False, chain=True)
        self.seat = seat
        self.scenario = scenario
        self._resuming = resuming

    def received(self, buf: bytes | bytearray, end: int) -> None:
        """Count as the base client does; scan the rare frames that matter."""
        super().received(buf, end)
        if self.state is not State.JOINED:
            return
        if self._resuming:
            self._resuming = False
            if buf.find(_RESET, 0, end) >= 0:
                self.seat.resets += 1
        if buf.find(b'"poll.', 0, end) >= 0 or buf.find(_ERROR, 0, end) >= 0:
            self.scenario.scanned(self.seat, bytes(buf[:end]))


@dataclass
class ScenarioConfig:
    """The scenario's size and pace."""

    edge_ports: list[int]
    host: str = "127.0.0.1"
    vote_s: float = 5.0
    change_share: float = 1 / 3
    move_share: float = 0.10
    seed: int = 1
    join_window: int = 200
    settle_s: float = 3.0
    """How long after the last vote the teacher waits for its live tally to
    reach the expected counts before closing anyway."""
    results_timeout_s: float = 15.0


class PollScenario:
    """The teacher and the students; :meth:`join`, then :meth:`poll`."""

    def __init__(
        self, cfg: ScenarioConfig, teacher_token: str, student_tokens: list[str]
    ) -> None:
        self.cfg = cfg
        edges = len(cfg.edge_ports)
        self.plan = make_plan(
            len(student_tokens),
            edges,
            cfg.vote_s,
            cfg.change_share,
            cfg.move_share,
            cfg.seed,
        )
        self.teacher = Seat(-1, teacher_token, 0)
        self.seats = [
            Seat(i, token, self.plan.edge_of[i])
            for i, token in enumerate(student_tokens)
        ]
        self.stats = Stats()
        self.poll_id = ""
        self.tally = b""
        self._opened = asyncio.Event()
        self._tally_changed = asyncio.Event()
        self._results = 0
        self._awaited = len(student_tokens)
        self._all_results = asyncio.Event()
        self._votes: list[bytes] = []
        self.moved = 0
        self.move_ns: list[int] = []
        self.timing: dict[str, float] = {}

    # --- connecting --------------------------------------------------------

    async def _open(self, seat: Seat, last_seq: bytes | None = None) -> str | None:
        """Connect ``seat`` to its edge; why not, if refused."""
        path = f"/v1/ws?token={seat.token}&v=1"
        if last_seq is not None:
            path += f"&last_seq={last_seq.decode()}"
        port = self.cfg.edge_ports[seat.edge]
        client = PollClient(seat, self, path, f"{self.cfg.host}:{port}")
        client.own_stats = self.stats
        # Across a move too: the resumed range must start where the old
        # connection's ended.
        client.last_seq = last_seq
        seat.client = client
        return await connect(client, self.cfg.host, port)

    async def join(self) -> dict[str, Any]:
        """Connect the teacher, then every student; how it went."""
        error = await self._open(self.teacher)
        if error is not None:
            raise RuntimeError(f"the teacher could not join: {error}")
        window = asyncio.Semaphore(self.cfg.join_window)

        async def one(seat: Seat) -> str | None:
            async with window:
                return await self._open(seat)

        t0 = time.perf_counter()
        outcomes = await asyncio.gather(*(one(s) for s in self.seats))
        elapsed = time.perf_counter() - t0
        failures = Counter(o for o in outcomes if o is not None)
        joined = len(self.seats) - sum(failures.values())
        return {
            "joined": joined,
            "failed": sum(failures.values()),
            "failures": dict(failures.most_common(5)),
            "joins_per_s": round(joined / elapsed, 1),
            "wall_s": round(elapsed, 2),
        }

    # --- receiving -----------------------------------------------------------

    def scanned(self, seat: Seat, data: bytes) -> None:
        """Frames of ``seat`` that mention the poll or an error arrived."""
        now = time.time_ns()
        had_result = seat.closed_ns is not None
        seat.scan(data, now)
        if seat is self.teacher:
            self._teacher_saw(data)
            return
        if seat.pending and seat.ready:
            for option in seat.pending:
                seat.vote(option, self._votes[option])
            seat.pending.clear()
        if not had_result and seat.closed_ns is not None:
            self._results += 1
            if self._results >= self._awaited:
                self._all_results.set()

    def _teacher_saw(self, data: bytes) -> None:
        if not self.poll_id:
            opened = _OPENED.search(data)
            if opened is not None:
                self.poll_id = opened.group(1).decode()
                self._votes = [
                    json.dumps(
                        {"type": "poll.vote", "poll_id": self.poll_id, "option": o}
                    ).encode()
                    for o in range(len(OPTIONS))
                ]
                self._opened.set()
        tallies = _TALLY.findall(data)
        if tallies:
            self.tally = tallies[-1]
            self._tally_changed.set()

    # --- the poll ------------------------------------------------------------

    def expected(self) -> list[int]:
        """Votes per option: each student's last vote sent."""
        counts = [0] * len(OPTIONS)
        for seat in self.seats:
            if seat.voted is not None:
                counts[seat.voted] += 1
        return counts

    async def poll(self) -> dict[str, Any]:
        """Open the poll, play the plan, close it; the measurements."""
        cfg = self.cfg
        teacher = self.teacher.client
        assert teacher is not None
        opened_ns = time.time_ns()
        teacher.send_text(
            json.dumps(
                {"type": "poll.open", "question": "Which one?", "options": OPTIONS}
            ).encode()
        )
        async with asyncio.timeout(10.0):
            await self._opened.wait()
        open_ms = (time.time_ns() - opened_ns) / 1e6

        t0 = time.monotonic()
        moves: set[asyncio.Task[None]] = set()
        lag = 0.0
        for action in self.plan.actions:
            delay = t0 + action.at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            lag = max(lag, time.monotonic() - t0 - action.at)
            seat = self.seats[action.student]
            if seat.client is None:
                continue  # never joined
            if action.kind is Kind.VOTE:
                seat.vote(action.option, self._votes[action.option])
            else:
                task = asyncio.create_task(self._move(seat))
                moves.add(task)
                task.add_done_callback(moves.discard)
        await asyncio.gather(*moves)
        waiting = await self._wait_votes_sent(10.0)
        voting_s = max((s.sent_at for s in self.seats), default=t0) - t0
        self.timing = {"plan_lag_max_ms": round(lag * 1000, 1)}

        expected = self.expected()
        want = ",".join(map(str, expected)).encode()
        matched_ms = await self._wait_tally(want, cfg.settle_s)

        self._all_results.clear()
        self._results = sum(1 for s in self.seats if s.closed_ns is not None)
        self._awaited = sum(1 for s in self.seats if s.joined)
        close_ns = time.time_ns()
        message = {"type": "poll.close", "poll_id": self.poll_id}
        teacher.send_text(json.dumps(message).encode())
        try:
            async with asyncio.timeout(cfg.results_timeout_s):
                await self._all_results.wait()
        except TimeoutError:
            pass
        return self._outcome(
            expected, want, close_ns, open_ms, voting_s, matched_ms, waiting
        )

    async def _move(self, seat: Seat) -> None:
        """Leave this edge cleanly and resume on the next one."""
        old = seat.client
        assert old is not None
        seat.moving = True
        last_seq = old.last_seq
        old.close(1001)
        seat.edge = (seat.edge + 1) % len(self.cfg.edge_ports)
        t0 = time.perf_counter_ns()
        error = await self._open(seat, last_seq)
        self.move_ns.append(time.perf_counter_ns() - t0)
        seat.moving = False
        if error is not None:
            seat.move_error = error
            return
        self.moved += 1
        if seat.pending and seat.ready:
            self.scanned(seat, b"")

    async def _wait_votes_sent(self, limit_s: float) -> int:
        """Wait until no student holds a vote back (one that waits for its
        edge to show the poll, or for its move); how many still do."""
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            held = sum(1 for s in self.seats if s.pending and s.move_error is None)
            if not held:
                return 0
            await asyncio.sleep(0.02)
        return sum(len(s.pending) for s in self.seats)

    async def _wait_tally(self, want: bytes, limit_s: float) -> float | None:
        """Wait until the teacher's live tally shows ``want``; after how
        many ms, or None if it did not within ``limit_s``."""
        t0 = time.monotonic()
        try:
            async with asyncio.timeout(limit_s):
                while self.tally != want:
                    self._tally_changed.clear()
                    await self._tally_changed.wait()
        except TimeoutError:
            return None
        return round((time.monotonic() - t0) * 1000, 1)

    def _outcome(
        self,
        expected: list[int],
        want: bytes,
        close_ns: int,
        open_ms: float,
        voting_s: float,
        matched_ms: float | None,
        held: int,
    ) -> dict[str, Any]:
        seats = [s for s in self.seats if s.joined]
        got = [s for s in seats if s.closed_ns is not None]
        latencies = sorted(max(0, s.closed_ns - close_ns) for s in got if s.closed_ns)
        seen = Counter(s.closed_counts.decode() for s in got)
        close_seqs = {s.closed_seq for s in got}
        errors = [s.first_error for s in seats if s.first_error]
        return {
            "poll_id": self.poll_id,
            "close_ns": close_ns,
            "students": len(self.seats),
            "joined": len(seats),
            "votes_sent": sum(s.votes_sent for s in seats),
            "first_votes": sum(1 for s in seats if s.votes_sent),
            "changed": sum(1 for s in seats if s.votes_sent > 1),
            "votes_held_back": held,
            "moves_planned": self.plan.count(Kind.MOVE),
            "moved": self.moved,
            "move_failures": dict(
                Counter(s.move_error for s in seats if s.move_error).most_common(5)
            ),
            "move_p50_ms": percentile_ms(sorted(self.move_ns), 0.50),
            "move_p99_ms": percentile_ms(sorted(self.move_ns), 0.99),
            **self.timing,
            "resets": sum(s.resets for s in seats),
            "seq_gaps": self.stats.gaps,
            "errors": sum(s.errors for s in seats),
            "first_errors": errors[:3],
            "open_to_teacher_ms": round(open_ms, 1),
            "voting_s": round(voting_s, 2),
            "teacher_tally_matched_ms": matched_ms,
            "expected": expected,
            "results_received": len(got),
            "results_missing": len(seats) - len(got),
            "results_exact": len(got) == len(seats)
            and all(s.closed_counts == want for s in got),
            "results_seen": dict(seen.most_common(3)),
            "close_seq": max(close_seqs) if close_seqs else None,
            "close_seqs_differ": len(close_seqs) > 1,
            "p50_ms": percentile_ms(latencies, 0.50),
            "p99_ms": percentile_ms(latencies, 0.99),
            "max_ms": percentile_ms(latencies, 1.0),
        }

    def abort(self) -> None:
        """Drop every connection."""
        for seat in [self.teacher, *self.seats]:
            if seat.client is not None:
                seat.client.abort()
