"""The class room: one per class per edge; folds the log and fans it out.

One reader task per class follows the class log, folds each batch of
entries into the :class:`~liveclass.edge_node.rules.ClassState` and hands
the batch to its :class:`~liveclass.edge_node.sweep.Sweeper`, which writes
it to every local member, each variant encoded once. It knows members only
as :class:`~liveclass.edge_node.fanout.Sink` objects.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from json.encoder import encode_basestring_ascii as _quote

from pydantic_core import to_json

from liveclass.edge_node.context import Appender
from liveclass.edge_node.fanout import (
    MAX_OUT_FRAME_BYTES,
    Batch,
    Sink,
    frame_json,
    member_frames,
)
from liveclass.edge_node.metrics import Metrics
from liveclass.edge_node.rules import ClassState, Validator
from liveclass.edge_node.rules.presence import source_of
from liveclass.edge_node.rules.state import EDGE_TIMEOUT_S, Folded
from liveclass.edge_node.rules.validate import (
    closing_entry,
    ended_entry,
    finalize_entry,
    flushed_entry,
)
from liveclass.edge_node.sweep import Sweeper
from liveclass.origin.classlog import ClassLog, ClassLogError, HistoryTrimmed
from liveclass.origin.contract import Audience, LogEvent
from liveclass.origin.results.quizzes import QuizResult
from liveclass.sdk.protocol import CloseCode, Event, Member, Role

logger = logging.getLogger(__name__)

_PLAIN_STUDENT = Member(user_id="", name="", role=Role.STUDENT)

LogHook = Callable[[str, LogEvent], Awaitable[None]]

RESUME_WINDOW = 10_000
"""Delivered entries kept in memory so resuming members skip the log."""

PRESENCE_INTERVAL_S = 1.0
"""Presence counts go out at most this often, and only when they change."""

PRESENCE_WRITES_PER_S = 2000
"""Writes a second that count updates alone may cost a room.

A new count is one write to every member: in a room of 10,000 during a join
storm, a count a second would be a tenth of the edge's time. Big rooms get
their count less often (every five seconds at 10,000 members); other frames
carry it sooner when there are any.
"""

CLOSE_GRACE_S = 2.0
"""How long after a poll's or question's end other edges wait before closing
it themselves, in case the edge that opened it is gone; and how long after
folding a close an edge waits for every expected edge to flush its votes or
answers before making the poll or question final without them (one may be
gone)."""

PRESENCE_HEARTBEAT_S = 3.0
"""How often an edge with members in a class says so in the class log; see
:data:`~liveclass.edge_node.rules.state.EDGE_TIMEOUT_S`."""

ROSTER_PAGE = 1000
"""Connections per ``presence.edge`` entry when an edge says again who it
holds: a roster of 10,000 goes in ten entries of about 50 KB."""

READ_PAGE = 1000


def _reraise_cancel() -> None:
    """Raise CancelledError if this task is being cancelled.

    Some log clients turn a cancelled blocking read into a connection
    error; without this the reader would swallow its own cancellation.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class ClassRoom:
    """The state and local members of one class on this edge."""

    def __init__(
        self,
        class_id: str,
        log: ClassLog,
        edge_id: str,
        append: Appender,
        on_log_event: LogHook | None = None,
        metrics: Metrics | None = None,
        linger_s: float = 30.0,
        on_idle: Callable[[ClassRoom], None] | None = None,
        worker: tuple[int, int] = (0, 1),
    ) -> None:
        self.class_id = class_id
        self.log = log
        self.edge_id = edge_id
        self.state = ClassState(class_id)
        self.validator = Validator(edge_id)
        self.ready = asyncio.Event()
        self.sinks: dict[str, list[Sink]] = {}
        self.connections = 0
        self._metrics = metrics or Metrics()
        self.sweeper = Sweeper(MAX_OUT_FRAME_BYTES, self._too_slow, self._metrics)
        self._snapshot_cache: tuple[ClassState, int, str] | None = None
        self._edge_json = json.dumps(edge_id)
        self._append = append
        self._on_log_event = on_log_event
        self._linger_s = linger_s
        self._on_idle = on_idle
        self._worker = worker  # (this process, processes) of the edge
        self._source = source_of(
            edge_id, {"worker": worker[0]} if worker[1] > 1 else {}
        )
        self._joining = 0
        self._idle_since = time.monotonic()
        self._ring: deque[LogEvent] = deque()
        self._ring_floor = 0
        self._advanced = asyncio.Event()
        self._count_sent = -1
        self._count_at = 0.0
        self._closing: set[str] = set()
        # Closing polls and questions this edge flushed, as (kind, id), and
        # when it finalizes them itself.
        self._finalize_at: dict[tuple[str, str], float] = {}
        self._task: asyncio.Task[None] | None = None
        self._heartbeat_at = 0.0
        self._slow_closed: list[str] = []
        self._end_written = False
        # Ids of this edge's chat entries shown as provisional, until the log
        # gives them back numbered.
        self._provisional: set[str] = set()
        self._last_id: str | None = None  # of the last entry folded
        self._unread_since: float | None = None  # reads failing since then
        self._extra = {"class_id": class_id, "edge_id": edge_id}

    # --- lifecycle -------------------------------------------------------

    def start(self) -> None:
        """Start the reader task."""
        self._task = asyncio.create_task(self._run(), name=f"room-{self.class_id}")
        self._task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "class room failed", exc_info=task.exception(), extra=self._extra
            )

    async def stop(self) -> None:
        """Stop the reader task and close every local member as going away."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self.flush()
        for sinks in list(self.sinks.values()):
            for sink in sinks:
                sink.close(CloseCode.GOING_AWAY, "edge shutting down")

    @property
    def stopped(self) -> bool:
        """Whether the reader has ended (idle, or stopped)."""
        return self._task is None or self._task.done()

    async def _run(self) -> None:
        await self._catch_up()
        # Whatever this edge counted in the class before (a previous run that
        # crashed) is void; queued before any member.joined of this room.
        await self._append(self.class_id, [self._edge_entry(reset=True)])
        # Members learn the count from their welcome; send changes from here.
        self._count_sent = self.state.presence.count
        self.ready.set()
        logger.info("class room open at seq %d", self.state.seq, extra=self._extra)
        while not self._idle():
            try:
                if self._unread_since is not None:
                    await self._read_again()
                entries = await self.log.wait(
                    self.class_id, self.state.seq, self._timeout(), READ_PAGE
                )
            except HistoryTrimmed as exc:
                await self._restart(exc)
                continue
            except ClassLogError as exc:
                _reraise_cancel()
                self._read_failed(exc)
                await asyncio.sleep(1.0)
                continue
            _reraise_cancel()
            if entries:
                await self.apply(entries)
            await self.tick(time.time())
        logger.info("class room closed: no members", extra=self._extra)
        if self._on_idle is not None:
            self._on_idle(self)

    async def _catch_up(self) -> None:
        """Fold the whole log before admitting anyone; nothing is sent."""
        while True:
            try:
                entries = await self.log.read(self.class_id, self.state.seq, READ_PAGE)
            except HistoryTrimmed as exc:
                # The oldest entries are gone: the state misses what they
                # did (an old mute, old quiz totals). Newer entries win.
                logger.warning(
                    "folding a trimmed log from %d", exc.first, extra=self._extra
                )
                self.state.seq = self._ring_floor = exc.first - 1
                continue
            except ClassLogError as exc:
                _reraise_cancel()
                logger.warning("class log read failed: %s", exc, extra=self._extra)
                await asyncio.sleep(1.0)
                continue
            if not entries:
                return
            for entry in entries:
                folded = self._fold(entry)
                if folded.deliver is not None:
                    self._remember(folded.deliver)
            self._last_id = entries[-1].id
            await self._notify(entries)

    async def _restart(self, exc: HistoryTrimmed) -> None:
        """This edge fell behind the log's retention: refold and reset members."""
        logger.warning("room fell behind the log; resetting", extra=self._extra)
        await self._start_over()

    async def _start_over(self) -> None:
        """Refold the log from its start and reset every member to it."""
        self.state = ClassState(self.class_id)
        self._ring.clear()
        self._ring_floor = 0
        self._last_id = None
        self.flush()
        await self._catch_up()
        # Everyone starts over at the new position.
        self.sweeper.reset()
        for sinks in list(self.sinks.values()):
            for sink in list(sinks):
                self._offer(sink, self._reset_frame(sink.member))

    def _read_failed(self, exc: ClassLogError) -> None:
        if self._unread_since is None:
            self._unread_since = time.monotonic()
            logger.warning(
                "class log read failed, retrying every second: %s",
                exc,
                extra=self._extra,
            )
        else:
            logger.debug("class log read failed again: %s", exc, extra=self._extra)

    async def _read_again(self) -> None:
        """The first read after failures: check that the log still holds
        what this room folded, then go on."""
        if not await self._log_intact():
            await self._log_lost()
        assert self._unread_since is not None
        logger.info(
            "class log readable again after %.1f s",
            time.monotonic() - self._unread_since,
            extra=self._extra,
        )
        self._unread_since = None

    async def _log_intact(self) -> bool:
        """Whether the entry this room folded last is still in the log, as
        it was. Raises ClassLogError if the log cannot be read."""
        if self._last_id is None or self.state.seq == 0:
            return True
        try:
            kept = await self.log.read(self.class_id, self.state.seq - 1, 1)
        except HistoryTrimmed:
            return True  # the next wait finds that out and starts over
        return bool(kept) and kept[0].id == self._last_id

    async def _log_lost(self) -> None:
        """The log no longer holds what this room folded: Redis lost its
        data. Members are reset to what the log holds now, and this edge's
        members are counted in it again."""
        logger.error(
            "class log lost: entry %d, the last this edge folded, is gone or "
            "replaced. Redis lost its data (restarted without persistence, or "
            "failed over to a replica that lacked it), and what it lost is "
            "gone. Members here are reset to what the log holds now. Run "
            "Redis with appendonly yes (see the README)",
            self.state.seq,
            extra=self._extra,
        )
        await self._start_over()
        await self._append(self.class_id, self._roster_entries())

    async def _say_roster(self) -> None:
        """The log's readers took this edge for gone (it was silent in the
        log for too long by the times of others' entries) and dropped its
        members from the count: say again who is here."""
        logger.warning(
            "class log readers dropped this edge's %d members from the count "
            "(no entry of it in %.0f s by others' clocks: its entries were "
            "held, or its clock is behind); saying who is here again",
            self.connections,
            EDGE_TIMEOUT_S,
            extra=self._extra,
        )
        await self._append(self.class_id, self._roster_entries())

    def _writes_gone(self) -> bool:
        """Whether this edge tells the origin of sources the sweep dropped:
        of the edges with members, the one of the lowest id, so that one
        entry is written, not one per edge."""
        sources = self.state.presence.sources
        return bool(self.connections) and self._source == min(
            sources, default=self._source
        )

    def _gone_entries(self, dropped: Sequence[str]) -> list[LogEvent]:
        entries = []
        for source in dropped:
            edge_id, _, worker = source.partition("/")
            data = {
                "edge_id": edge_id,
                # Not "worker": that names the writer's own process.
                "process": int(worker) if worker else None,
                "last_seen": self.state.last_seen(source),
            }
            entries.append(
                LogEvent(
                    type="presence.gone",
                    edge_id=self.edge_id,
                    audience=Audience.EDGES,
                    data=data,
                )
            )
        return entries

    def _roster_entries(self) -> list[LogEvent]:
        """This edge's members, one item per connection, in
        ``presence.edge`` entries: the first resets what the log counted for
        this edge, so entries of it still queued ahead count for nothing."""
        roster = [
            [s.member.user_id, s.member.name, s.member.role.value]
            for sinks in self.sinks.values()
            for s in sinks
        ]
        entries = [self._edge_entry(reset=True)]
        entries[0].data["roster"] = roster[:ROSTER_PAGE]
        for start in range(ROSTER_PAGE, len(roster), ROSTER_PAGE):
            entry = self._edge_entry()
            entry.data["roster"] = roster[start : start + ROSTER_PAGE]
            entries.append(entry)
        return entries

    def _fold(self, entry: LogEvent) -> Folded:
        try:
            return self.state.fold(entry)
        except Exception:
            # A malformed entry from some writer must not stop the class;
            # every edge skips it alike.
            logger.exception(
                "skipping a log entry that could not be folded",
                extra=self._extra | {"seq": entry.seq},
            )
            return Folded(None)

    def _idle(self) -> bool:
        if self.connections or self._joining:
            self._idle_since = time.monotonic()
            return False
        return time.monotonic() - self._idle_since > self._linger_s

    def _timeout(self) -> float:
        timeout = 1.0
        now = time.time()
        for kind in ("poll", "quiz"):
            deadline = self._deadline_of(kind)
            if deadline is not None:
                timeout = min(timeout, max(0.01, deadline - now))
        for deadline in self._finalize_at.values():
            timeout = min(timeout, max(0.01, deadline - now))
        if self._count_sent != self.state.presence.count:
            wait = self._count_at + self._count_interval() - time.monotonic()
            timeout = min(timeout, max(0.01, wait))
        return timeout

    # --- folding and fan-out ---------------------------------------------

    async def apply(self, entries: Sequence[LogEvent]) -> None:
        """Fold ``entries`` (the next ones of the log) and send them out."""
        seq_from = self.state.seq
        delivered: list[LogEvent] = []
        results: list[Folded] = []
        for entry in entries:
            folded = self._fold(entry)
            results.append(folded)
            deliver = folded.deliver
            if deliver is not None:
                if self._provisional and deliver.id in self._provisional:
                    deliver = self._confirming(deliver)
                delivered.append(deliver)
                self._remember(deliver)
        if entries:
            self._last_id = entries[-1].id
        self._advanced.set()
        self._advanced = asyncio.Event()

        views_staff = []
        if any(f.tally_changed for f in results):
            tally = self.state.tally()
            if tally is not None:
                views_staff.append(Event(type="poll.tally", data=tally))
        views_user: dict[str, list[Event]] = {}
        for folded in results:
            if folded.quiz_result is not None:
                self._score_views(folded.quiz_result, views_user)
        batch = Batch(
            seq_from,
            self.state.seq,
            delivered,
            views_all=self._presence_view(
                carried=any(e.audience is Audience.ALL for e in delivered)
            ),
            views_staff=views_staff,
            views_user=views_user,
        )
        # Every batch is sent, even an empty one, so that the members' range
        # stays contiguous when a batch held only internal entries.
        self._send(batch)

        for folded in results:
            if folded.closing is not None:
                await self._flush(*folded.closing)
            if self._source in folded.dropped and self.connections:
                await self._say_roster()
            elif folded.dropped and self._writes_gone():
                await self._append(self.class_id, self._gone_entries(folded.dropped))

        if any(f.removed is not None or f.ended for f in results):
            # Those closed below must get the entry that closes them first.
            self.flush()
        for folded in results:
            if folded.removed is not None:
                for sink in list(self.sinks.get(folded.removed, ())):
                    sink.close(CloseCode.REMOVED, "removed from the class by staff")
            if folded.ended:
                for sinks in list(self.sinks.values()):
                    for sink in sinks:
                        sink.close(CloseCode.CLASS_ENDED, "the class has ended")
        # Media hears of entries after members, so members are not delayed.
        await self._notify(entries)

    async def _flush(self, kind: str, item_id: str) -> None:
        """The poll or question is closing: append the marker that every
        vote or answer this edge took for it is in the log. Those it holds
        wait in the same queue, ahead of the marker, so they go first."""
        marker = flushed_entry(kind, item_id, self.edge_id, *self._worker)
        await self._append(self.class_id, [marker])
        self._finalize_at[kind, item_id] = time.time() + CLOSE_GRACE_S

    # --- while the log does not answer ------------------------------------

    def show_provisional(self, entries: Sequence[LogEvent]) -> None:
        """Show this edge's members its chat that waits for the log, at once.

        Each message goes out as a view (no number, so the members' range
        of the log is untouched) marked ``provisional`` with its entry id as
        ``provisional_id``; the numbered entry, when the log gives it back,
        carries the same id so that clients replace the message instead of
        showing it twice. Other edges' members see it only numbered.
        """
        if not self.connections:
            return  # nobody to show it to: the numbered entry is news to all
        views = []
        for entry in entries:
            if entry.type != "chat.message" or entry.audience is not Audience.ALL:
                continue
            self._provisional.add(entry.id)
            data = {**entry.data, "provisional": True, "provisional_id": entry.id}
            views.append(
                Event(type=entry.type, ts=entry.ts, actor=entry.actor, data=data)
            )
        if views:
            seq = self.state.seq
            self._send(Batch(seq, seq, [], views_all=views))
            self._metrics.provisional_chat += len(views)

    def _confirming(self, entry: LogEvent) -> LogEvent:
        """``entry``, shown provisional before, marked with its provisional id."""
        self._provisional.discard(entry.id)
        data = {**entry.data, "provisional_id": entry.id}
        return entry.model_copy(update={"data": data})

    def _score_views(self, result: QuizResult, views: dict[str, list[Event]]) -> None:
        totals = self.state.quizzes.totals
        for user_id, sinks in self.sinks.items():
            if not sinks or sinks[0].member.role.is_staff:
                continue
            data = {
                "quiz_id": result.quiz_id,
                "correct": result.correct,
                "points": result.points.get(user_id, 0),
                "total": totals.get(user_id, 0),
            }
            views.setdefault(user_id, []).append(Event(type="quiz.score", data=data))

    def _presence_view(self, carried: bool = False) -> list[Event]:
        """The count, when it changed and is due; ``carried``: the batch goes
        to every member anyway, so a big room's count costs no extra write."""
        count = self.state.presence.count
        now = time.monotonic()
        interval = PRESENCE_INTERVAL_S if carried else self._count_interval()
        if count == self._count_sent or now - self._count_at < interval:
            return []
        self._count_sent, self._count_at = count, now
        return [Event(type="presence.count", data={"count": count})]

    def _count_interval(self) -> float:
        return max(PRESENCE_INTERVAL_S, self.connections / PRESENCE_WRITES_PER_S)

    def _send(self, batch: Batch) -> None:
        self.sweeper.send(batch)

    def flush(self) -> None:
        """Deliver every batch to every member now (before closing some)."""
        self.sweeper.flush()

    def _offer(self, sink: Sink, frame: str) -> None:
        if sink.offer(frame):
            self._metrics.frames_sent += 1
            return
        self._too_slow(sink)

    def _too_slow(self, sink: Sink) -> None:
        self._metrics.send_queue_drops += 1
        # Readers that stop together are found full in the same pass: one
        # line a tick says how many (a line each would hold up the pass).
        self._slow_closed.append(sink.member.user_id)
        self.detach(sink)
        sink.close(CloseCode.TOO_SLOW, "too far behind; reconnect with last_seq")

    def _remember(self, entry: LogEvent) -> None:
        self._ring.append(entry)
        if len(self._ring) > RESUME_WINDOW:
            self._ring_floor = self._ring.popleft().seq

    async def _notify(self, entries: Sequence[LogEvent]) -> None:
        if self._on_log_event is None:
            return
        for entry in entries:
            try:
                await self._on_log_event(self.class_id, entry)
            except Exception:
                logger.exception("media failed on a log entry", extra=self._extra)

    async def tick(self, now: float) -> None:
        """Time-driven work: close expired polls and questions, send counts."""
        if self._slow_closed:
            closed, self._slow_closed = self._slow_closed, []
            logger.info(
                "closed %d members too far behind (%s%s); they may resume",
                len(closed),
                ", ".join(closed[:5]),
                ", ..." if len(closed) > 5 else "",
                extra=self._extra,
            )
        poll = self.state.polls.open
        quiz = self.state.quizzes.open
        for item_id, deadline, type_, key in (
            (
                poll and poll.poll_id,
                self._deadline_of("poll"),
                "poll.closed",
                "poll_id",
            ),
            (
                quiz and quiz.quiz_id,
                self._deadline_of("quiz"),
                "quiz.closed",
                "quiz_id",
            ),
        ):
            if item_id and deadline is not None and now >= deadline:
                if item_id not in self._closing:
                    self._closing.add(item_id)
                    expected = self.state.presence.edges
                    entry = closing_entry(type_, key, item_id, expected)
                    entry.edge_id, entry.ts = self.edge_id, now
                    await self._append(self.class_id, [entry])
        closing = {
            "poll": set(self.state.polls.closing),
            "quiz": set(self.state.quizzes.closing),
        }
        for (kind, item_id), at in list(self._finalize_at.items()):
            if item_id not in closing[kind]:
                del self._finalize_at[kind, item_id]
            elif now >= at:
                # An expected edge has not flushed (gone?): the first
                # finalize in the log makes it final for everyone.
                del self._finalize_at[kind, item_id]
                entry = finalize_entry(kind, item_id)
                entry.edge_id, entry.ts = self.edge_id, now
                await self._append(self.class_id, [entry])
        if self.state.end_due and not self._end_written and self.connections:
            # Every edge with members may write it; they are one entry to
            # the origin (one id), and the fold takes the first.
            self._end_written = True
            await self._append(self.class_id, [ended_entry(self.class_id)])
        if self.connections and time.monotonic() >= self._heartbeat_at:
            self._heartbeat_at = time.monotonic() + PRESENCE_HEARTBEAT_S
            await self._append(self.class_id, [self._edge_entry()])
        views = self._presence_view()
        if views and self.connections:
            seq = self.state.seq
            self._send(Batch(seq, seq, [], views_all=views))

    def _edge_entry(self, reset: bool = False) -> LogEvent:
        data: dict[str, object] = {"count": self.connections}
        if reset:
            data["reset"] = True
        if self._worker[1] > 1:
            data["worker"] = self._worker[0]
        return LogEvent(
            type="presence.edge",
            edge_id=self.edge_id,
            audience=Audience.EDGES,
            data=data,
        )

    def _deadline_of(self, kind: str) -> float | None:
        if kind == "poll":
            poll = self.state.polls.open
            if poll is None or poll.closes_at is None:
                return None
            grace = 0.0 if poll.opened_by_edge == self.edge_id else CLOSE_GRACE_S
            return poll.closes_at + grace
        quiz = self.state.quizzes.open
        if quiz is None:
            return None
        grace = 0.0 if quiz.opened_by_edge == self.edge_id else CLOSE_GRACE_S
        return quiz.closes_at + grace

    # --- members ---------------------------------------------------------

    def refusal(
        self, member: Member, class_limit: int | None = None
    ) -> tuple[int, str] | None:
        """Why ``member`` may not join now, as ``(close code, reason)``, or None.

        The class limit is checked against the folded presence, which lags
        the other edges' admissions by a tick: it can be overshot slightly.
        """
        state = self.state
        if member.user_id in state.removed:
            return CloseCode.REMOVED, "you were removed from this class"
        if state.ended:
            return CloseCode.CLASS_ENDED, "the class has ended"
        if (
            class_limit is not None
            and state.presence.count >= class_limit
            and member.user_id not in state.presence
        ):
            return CloseCode.CLASS_FULL, (
                f"class is full ({class_limit} members); try again later"
            )
        return None

    async def join(
        self, sink: Sink, last_seq: int | None, class_limit: int
    ) -> tuple[int, str] | None:
        """Admit ``sink``: send its first frames, then every new batch.

        Without ``last_seq`` the first frame is a welcome with a snapshot;
        with it, the entries the member missed, or a ``state.reset`` when
        they are no longer kept. Returns why the member may not join, as
        ``(close code, reason)``, or None once it is in.
        """
        self._joining += 1
        try:
            await self.ready.wait()
            refusal = self.refusal(sink.member, class_limit)
            if refusal is not None:
                return refusal
            frames = await self._first_frames(sink.member, last_seq)
            # A removal or the end may have been folded meanwhile.
            refusal = self.refusal(sink.member)
            if refusal is not None:
                return refusal
            # From here to the end nothing awaits: no batch can slip between
            # the first frames and the live ones.
            self._attach(sink, frames)
            return None
        finally:
            self._joining -= 1

    def join_now(self, sink: Sink, class_limit: int) -> tuple[int, str] | None:
        """Admit a new member (no ``last_seq``) to a ready room, without waiting.

        The fast path of a join storm: the welcome goes out at once. Returns
        why the member may not join, or None once it is in.
        """
        refusal = self.refusal(sink.member, class_limit)
        if refusal is not None:
            return refusal
        self._attach(sink, [self._welcome_frame(sink.member)])
        return None

    def _attach(self, sink: Sink, frames: list[str]) -> None:
        self.sinks.setdefault(sink.member.user_id, []).append(sink)
        self.connections += 1
        # Its first frames end at the current position; batches not yet
        # delivered up to there are already in them.
        self.sweeper.add(sink)
        for frame in frames:
            if not sink.offer(frame):
                self._too_slow(sink)
                return
        self._metrics.frames_sent += len(frames)

    async def _first_frames(self, member: Member, last_seq: int | None) -> list[str]:
        if last_seq is None:
            return [self._welcome_frame(member)]
        if last_seq > self.state.seq:
            # The member saw more on another edge than this one has folded.
            try:
                async with asyncio.timeout(2.0):
                    while last_seq > self.state.seq:
                        await self._advanced.wait()
            except TimeoutError:
                return [self._reset_frame(member)]
        if last_seq >= self._ring_floor:
            return member_frames(
                self._ring_after(last_seq), member, last_seq, self.state.seq
            )
        try:
            older = await self._read_older(last_seq)
        except ClassLogError:
            return [self._reset_frame(member)]
        ring = [e for e in self._ring if older and e.seq > older[-1].seq]
        return member_frames(older + ring, member, last_seq, self.state.seq)

    def _ring_after(self, seq: int) -> list[LogEvent]:
        """The remembered entries after ``seq``, walked from the newest end:
        a resuming member is usually a few entries behind, and a move storm
        must not cost each member a walk over the whole window."""
        tail: list[LogEvent] = []
        for entry in reversed(self._ring):
            if entry.seq <= seq:
                break
            tail.append(entry)
        tail.reverse()
        return tail

    async def _read_older(self, last_seq: int) -> list[LogEvent]:
        """Entries after ``last_seq`` up to the resume window, from the log.

        They come as stored: a poll or question closed in that range lacks
        the counts and leaderboard the fold adds. Chat messages sent again
        (see :func:`~liveclass.origin.contract.sent_event_id`) are left out
        as the fold left them out: those it folded as copies, and a second
        one of an id in the range.
        """
        out: list[LogEvent] = []
        chat_ids: set[str] = set()
        chat = self.state.chat
        after = last_seq
        while after < self._ring_floor:
            page = await self.log.read(self.class_id, after, READ_PAGE)
            if not page:
                break
            for entry in page:
                if entry.type == "chat.message":
                    if entry.id in chat_ids or chat.is_copy(entry.seq):
                        continue
                    chat_ids.add(entry.id)
                out.append(entry)
            after = page[-1].seq
        return out

    def _welcome_frame(self, member: Member) -> str:
        # Key order as Event.model_dump_json, so clients see one shape.
        head = '{"type":"welcome","seq":null,"ts":0.0,"actor":null,"data":'
        # As json.dumps encodes the dict of the member's fields, without
        # building the dict and an encoder per join.
        who = (
            f'{{"user_id": {_quote(member.user_id)}, "name": {_quote(member.name)}, '
            f'"role": {_quote(member.role)}}}'
        )
        body = (
            f'{{"snapshot":{self._snapshot_json(member)},'
            f'"member":{who},"edge_id":{self._edge_json}}}'
        )
        return frame_json(self.state.seq, self.state.seq, [head + body + "}"])

    def _snapshot_json(self, member: Member) -> str:
        """The snapshot as JSON; the plain students' one is encoded once per
        log position, as thousands join at the same one."""
        state = self.state
        if member.role.is_staff or self._has_own_state(member.user_id):
            return to_json(state.snapshot(member)).decode()
        cache = self._snapshot_cache
        if cache is not None and cache[0] is state and cache[1] == state.seq:
            return cache[2]
        text = to_json(state.snapshot(_PLAIN_STUDENT)).decode()
        self._snapshot_cache = (state, state.seq, text)
        return text

    def _has_own_state(self, user_id: str) -> bool:
        # The personal fields of ClassState.snapshot: whether any of them
        # differs from a student's who never did anything.
        state = self.state
        poll, quiz = state.polls.open, state.quizzes.open
        return (
            user_id in state.chat.muted
            or user_id in state.quizzes.totals
            or (poll is not None and user_id in poll.votes)
            or (quiz is not None and user_id in quiz.answers)
        )

    def _reset_frame(self, member: Member) -> str:
        data = {"snapshot": self.state.snapshot(member)}
        event = Event(type="state.reset", data=data).model_dump_json()
        return frame_json(self.state.seq, self.state.seq, [event])

    def detach(self, sink: Sink) -> bool:
        """Forget ``sink``; whether it was attached."""
        sinks = self.sinks.get(sink.member.user_id)
        if not sinks or sink not in sinks:
            return False
        sinks.remove(sink)
        self.sweeper.remove(sink)
        if not sinks:
            del self.sinks[sink.member.user_id]
            self.validator.forget(sink.member.user_id)
        self.connections -= 1
        return True
