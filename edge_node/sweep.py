"""Delivering a room's batches to its members in rounds that never block.

A round visits every member once, in chunks, and hands each one whatever
batches it has not had yet in a single write. Between chunks the event loop
reads members and the log, and a batch that arrives meanwhile reaches every
member the round has not visited yet in the same round. So an event waits
at most one round for any member, however busy the room: under light load a
round is short and frames leave at once; under heavy load rounds grow, and
each write carries every event that came during the last one.

Positions are batch numbers: member ``m`` has had every batch up to
``group[m]``. A frame covers the log positions from the member's last frame
to the newest batch, so the chain of ranges a member sees stays contiguous.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from time import perf_counter

from liveclass.edge_node.fanout import Batch, Outgoing, Sink
from liveclass.edge_node.metrics import Metrics

logger = logging.getLogger(__name__)

CHUNK = 200
"""Members written to between two looks at the event loop (about 2 ms).

An event read meanwhile passes through a few callbacks (read, batch, log,
fold) before it reaches the round, each queued behind the chunk in
progress: small chunks keep that path to a few milliseconds."""

MIN_REST_S = 0.002
"""The time between the end of a round and the start of the next.

Short on purpose. A member waits for an event at most until the round in
progress, or the next one, reaches it; any rest between rounds adds to that
wait. Under load, rounds follow each other and each write carries every
event that came during the last round, so longer rests would save writes
only at the price of latency (a rest of a quarter of a round raised the
99th percentile by about a third at 10,000 members). These 2 ms only let a
burst arriving at once share one round.
"""

MAX_DEFERRED = 64
"""Batches with nothing for students held back before an empty frame goes.

Staff-only batches (presence entries of a join storm) would otherwise cost a
write to every student for a frame of no events; students get the range
with their next frame instead.
"""


class Sweeper:
    """The members of one room, their positions, and the round in progress.

    ``max_frame`` is the largest frame to send (one event alone may exceed
    it); ``on_slow`` is called with each member that could not take its
    frames, after the chunk that found it.
    """

    def __init__(
        self,
        max_frame: int,
        on_slow: Callable[[Sink], None],
        metrics: Metrics | None = None,
    ) -> None:
        self.staff: dict[Sink, int] = {}
        self.students: dict[Sink, int] = {}
        self.max_frame = max_frame
        self._on_slow = on_slow
        self._metrics = metrics or Metrics()
        self._batches: list[Batch] = []
        self._floor = 0  # the number of the batch before _batches[0]
        self._made = 0  # the number of the newest batch
        self._settled = 0  # every member not deferred has had this one
        self._out: Outgoing | None = None
        self._order: list[Sink] | None = None  # the round in progress
        self._cursor = 0
        self._round_from = 0
        self._round_min = 0
        self._round_cpu = 0.0
        self._handle: asyncio.Handle | None = None
        self._next_round_at = 0.0

    # --- members ---------------------------------------------------------

    def add(self, sink: Sink) -> None:
        """Count ``sink`` in from the newest batch on (its first frames,
        sent by the caller, hold everything up to there)."""
        group = self.staff if sink.member.role.is_staff else self.students
        group[sink] = self._made

    def remove(self, sink: Sink) -> None:
        """Forget ``sink``."""
        self.students.pop(sink, None)
        self.staff.pop(sink, None)

    def __len__(self) -> int:
        return len(self.staff) + len(self.students)

    # --- batches ---------------------------------------------------------

    def send(self, batch: Batch) -> None:
        """Deliver ``batch`` to every member, soon."""
        self._batches.append(batch)
        self._made += 1
        self._out = None
        self._schedule()

    @property
    def idle(self) -> bool:
        """Whether no round is running or due (deferred students aside)."""
        return self._order is None and self._made <= self._settled

    def flush(self) -> None:
        """Deliver every batch to every member now, without yielding."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        # The round in progress, then one for those it visited too early.
        for _ in range(2):
            if self._order is None and not self._start_round():
                return
            self._run(None)

    def reset(self) -> None:
        """Drop the batches not yet delivered: every member starts over at
        the newest position (the caller sends them a fresh state)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._order = None
        self._batches = []
        self._floor = self._settled = self._made
        self._out = None
        for group in (self.staff, self.students):
            for sink in group:
                group[sink] = self._made

    # --- rounds ----------------------------------------------------------

    def _schedule(self) -> None:
        if self._handle is not None or self._order is not None:
            return  # the round in progress reaches the rest, or is due
        loop = asyncio.get_running_loop()
        delay = self._next_round_at - loop.time()
        if delay > 0:
            self._handle = loop.call_later(delay, self._step)
        else:
            self._handle = loop.call_soon(self._step)

    def _start_round(self) -> bool:
        if self._made <= self._settled:
            return False
        self._cursor = 0
        self._round_from = self._round_min = self._made
        out = self._outgoing()
        if out.quiet_for_students(0) and self._made - self._floor < MAX_DEFERRED:
            # Nothing for any student (all are at the floor or later): a
            # round of the staff alone, and the students keep their place.
            self._order = list(self.staff)
            self._round_min = self._floor
        else:
            # Staff first: the teacher sees its own events soonest.
            self._order = [*self.staff, *self.students]
        self._round_cpu = 0.0
        return True

    def _step(self) -> None:
        self._handle = None
        if self._order is None and not self._start_round():
            return
        self._run(CHUNK)
        if self._order is not None:
            self._handle = asyncio.get_running_loop().call_soon(self._step)

    def _run(self, limit: int | None) -> None:
        started = perf_counter()
        order = self._order
        assert order is not None
        end = len(order) if limit is None else min(len(order), self._cursor + limit)
        slow = self._visit(order[self._cursor : end])
        self._cursor = end
        self._round_cpu += perf_counter() - started
        for sink in slow:
            self._on_slow(sink)
        if end >= len(order):
            self._end_round()

    def _end_round(self) -> None:
        self._order = None
        self._settled = self._round_from
        self._trim(self._round_min)
        self._metrics.fanout_rounds += 1
        self._metrics.fanout_seconds += self._round_cpu
        loop = asyncio.get_running_loop()
        self._next_round_at = loop.time() + MIN_REST_S
        if self._made > self._settled:
            self._schedule()

    def _trim(self, floor: int) -> None:
        if floor > self._floor:
            del self._batches[: floor - self._floor]
            self._floor = floor
            self._out = None

    def _outgoing(self) -> Outgoing:
        out = self._out
        if out is None:
            out = self._out = Outgoing(self._batches, self.max_frame)
        return out

    def _visit(self, sinks: list[Sink]) -> list[Sink]:
        # The hot loop: one shared list of frames for almost everyone.
        made, floor = self._made, self._floor
        out = self._outgoing()
        personal = out.personal
        students, staff_group = self.students, self.staff
        round_min = self._round_min
        slow: list[Sink] = []
        sent = 0
        for sink in sinks:
            group = students
            pos = group.get(sink)
            if pos is None:
                group = staff_group
                pos = group.get(sink)
                if pos is None:
                    continue  # left during the round
            if pos >= made:
                continue
            start = pos - floor
            staff = group is staff_group
            if (
                not staff
                and made - pos < MAX_DEFERRED
                and out.quiet_for_students(start)
            ):
                round_min = min(round_min, pos)
                continue
            try:
                if personal and sink.member.user_id in personal:
                    frames = out.personal_frames(sink.member, start)
                else:
                    frames = out.shared(staff, start)
                group[sink] = made
                for frame in frames:
                    if not sink.offer(frame):
                        slow.append(sink)
                        break
            except Exception:
                # One broken connection must not cost the others their
                # frames; it is closed like a slow one (and can resume).
                logger.exception(
                    "sending to a member failed",
                    extra={"user_id": sink.member.user_id},
                )
                slow.append(sink)
                continue
            sent += len(frames)
        self._round_min = round_min
        self._metrics.frames_sent += sent
        return slow
