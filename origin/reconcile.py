"""The reconciler: from each live class's log into the database.

One task per live class reads the class log through the consumer group
:data:`GROUP` and stores what the origin keeps (attendance, chat, polls,
quizzes, the recording, the end of the class). An entry is acknowledged to
the group only after the transaction storing it has committed
(write-behind): until then it stays pending in the log, and a reconciler
that failed, or the one of a restarted origin, reads its pending entries
again before any new one.

The same transaction moves the class's offset, the number of the last entry
stored. It closes the window the group leaves open, a crash between the
commit and the acknowledgement: an entry at or below the offset is
acknowledged again, never stored again. Storing is idempotent by event id
besides. Each event is therefore stored once.

While the database or the class log cannot be reached, the reconciler
retries with a capped backoff and the class goes on: its events wait in the
class log (which keeps
:data:`~liveclass.origin.classlog.base.DEFAULT_RETENTION` entries per class),
and :class:`~liveclass.origin.outages.Outages` says so once for the origin.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable
from enum import StrEnum
from typing import TypeVar

from liveclass.origin.classlog import (
    ClassLog,
    ClassLogError,
    GroupMissing,
    HistoryTrimmed,
)
from liveclass.origin.contract import LogEvent
from liveclass.origin.outages import Dependency, Outages, describe, is_unreachable
from liveclass.origin.results import Results
from liveclass.origin.store import Store

logger = logging.getLogger(__name__)

T = TypeVar("T")

GROUP = "origin"
"""The consumer group through which the origin reads every class log."""

CONSUMER = "reconciler"
"""The reconciler's name in :data:`GROUP`. Every origin process uses the
same name, so a restarted origin finds what its predecessor left pending
by reading the consumer's own pending entries, with nothing to claim.

One origin reconciles a class at a time. Should two overlap (a rolling
restart), the group splits new entries between them; each reads the part
it missed by number (see :meth:`Reconciler.step`), so both still fold every
vote, and storing is idempotent."""


class State(StrEnum):
    """What a reconciler is doing."""

    RUNNING = "running"
    LOG_UNREACHABLE = "class log unreachable"
    STORE_UNREACHABLE = "database unreachable"
    FAILING = "failing"
    """The database is reachable but refuses to store; needs a person."""


class StoreFailed(Exception):
    """A database call of the reconciler failed; ``__cause__`` says how."""


class Backoff:
    """Delays between retries: doubling from ``first_s`` up to ``cap_s``.

    Each delay is shortened by up to a fifth at random, so the reconcilers
    of many classes, which fail together, do not retry in step.
    """

    def __init__(self, first_s: float, cap_s: float) -> None:
        self.first_s = first_s
        self.cap_s = cap_s
        self._failures = 0

    def next(self) -> float:
        """The delay before the next retry; each call doubles the next."""
        delay = min(self.cap_s, self.first_s * 2 ** min(self._failures, 30))
        self._failures += 1
        return delay * random.uniform(0.8, 1.0)

    def reset(self) -> None:
        """Start again from ``first_s`` (after a success)."""
        self._failures = 0


class Reconciler:
    """Persists one class's log; :meth:`run` until the class ends.

    ``ended_at`` (seconds since the epoch) makes a reconciler for a class
    that has ended already: it stores what the log still holds for it, and
    waits for a recording until ``after_end_s`` after that time. Once caught
    up, it reads again ``pace_s`` after its last read at the soonest.
    """

    def __init__(
        self,
        store: Store,
        log: ClassLog,
        class_id: str,
        *,
        batch: int = 1000,
        wait_s: float = 1.0,
        pace_s: float = 0.5,
        retry_s: float = 0.5,
        max_retry_s: float = 5.0,
        after_end_s: float = 120.0,
        ended_at: float | None = None,
        outages: Outages | None = None,
    ) -> None:
        self.store = store
        self.log = log
        self.class_id = class_id
        self.batch = batch
        self.wait_s = wait_s
        self.pace_s = pace_s
        self.retry_s = retry_s
        self.max_retry_s = max_retry_s
        self.after_end_s = after_end_s
        self.outages = outages if outages is not None else Outages()
        self.offset: int | None = None
        """The number of the last entry stored; None until read from the
        store, and again after a database failure."""
        self.state = State.RUNNING
        self.ended = False
        self.recorded = False
        self.has_media = False
        self._ended_at = 0.0
        if ended_at is not None:
            # Whether it had media is not known any more: wait for a
            # recording as if it had.
            self.ended = self.has_media = True
            self._ended_at = time.monotonic() - max(0.0, time.time() - ended_at)
        self.drained = False
        """Whether the last step found nothing to store."""
        self.results = Results()
        self.stopping = False
        """Set (by :meth:`stop`) to make :meth:`run` return after the step
        in progress."""
        self._wake = asyncio.Event()
        self._recover = True
        self._folded_to = 0
        self._filled: dict[int, LogEvent] = {}

    async def step(self, wait_s: float = 0.0) -> int:
        """Store the next entries, waiting up to ``wait_s`` for some.

        Entries this consumer left pending come first. Returns how many
        entries were handled: stored, or acknowledged as stored before.
        Raises :class:`~liveclass.origin.classlog.ClassLogError` and
        :class:`StoreFailed`; nothing is acknowledged then, and the next
        step reads the pending entries again.
        """
        if self.offset is None:
            await self._resume()
        assert self.offset is not None
        entries = await self._next(wait_s)
        self.outages.reached(Dependency.CLASS_LOG, self.class_id)
        self.drained = not entries
        if not entries:
            return 0

        stored = [entry for entry in entries if entry.seq <= self.offset]
        fresh = await self._in_order([e for e in entries if e.seq > self.offset])
        if fresh:
            folded = [self._fold(entry) for entry in fresh]
            self.offset = await self._store(self.store.persist(self.class_id, folded))
            self._note(fresh)
        # Only now: an entry acknowledged before its commit could be lost.
        handled = [entry.seq for entry in stored + fresh]
        await self.log.ack(self.class_id, GROUP, handled)
        return len(handled)

    async def _resume(self) -> None:
        """Start, or start again after a database failure, from the offset
        the database holds."""
        offset = await self._store(self.store.offset(self.class_id))
        # A new group starts after what is stored: an origin upgraded from
        # reading by offset alone neither skips nor repeats anything.
        await self.log.create_group(self.class_id, GROUP, offset)
        if self._folded_to < offset:
            await self._refold(offset)
        self.offset = offset
        self._recover = True

    async def _next(self, wait_s: float) -> list[LogEvent]:
        """This consumer's pending entries if it may have some, else new
        ones (waiting up to ``wait_s``)."""
        assert self.offset is not None
        try:
            if self._recover:
                pending = await self.log.read_pending(
                    self.class_id, GROUP, CONSUMER, self.batch
                )
                if pending:
                    return pending
                self._recover = False
            return await self.log.read_group(
                self.class_id, GROUP, CONSUMER, self.batch, wait_s
            )
        except GroupMissing:
            logger.warning(
                "class %s: the class log lost its consumer group (Redis "
                "restarted without persistence?); reading again after entry %d",
                self.class_id,
                self.offset,
                extra=self._extra,
            )
            await self.log.create_group(self.class_id, GROUP, self.offset)
            return []

    async def _in_order(self, fresh: list[LogEvent]) -> list[LogEvent]:
        """Of ``fresh`` (entries above the offset), those that follow the
        offset without a gap.

        The group delivers in order but can skip: entries trimmed before
        their delivery, a group made again after Redis lost it, another
        origin's reader. What was skipped is read by number here; what is
        cut off stays pending and comes back at the next step.
        """
        assert self.offset is not None
        if fresh and fresh[0].seq != self.offset + 1:
            fresh = await self._read_after_offset()
            self._recover = True
        run = 0
        while run < len(fresh) and fresh[run].seq == self.offset + 1 + run:
            run += 1
        if run < len(fresh):
            self._recover = True
        return fresh[:run]

    async def _read_after_offset(self) -> list[LogEvent]:
        """The entries after the offset, read by number; a trimmed stretch
        is skipped (and the offset moved past it) with a warning."""
        assert self.offset is not None
        while True:
            try:
                return await self.log.read(self.class_id, self.offset, self.batch)
            except HistoryTrimmed as exc:
                # What was trimmed is gone for good; persist what is left
                # rather than stall the class forever.
                logger.warning(
                    "class %s: entries %d..%d were trimmed before they were stored",
                    self.class_id,
                    exc.after + 1,
                    exc.first - 1,
                    extra=self._extra,
                )
                self.offset = exc.first - 1

    async def _store(self, call: Awaitable[T]) -> T:
        """Await a database call; its failure becomes :class:`StoreFailed`."""
        try:
            result = await call
        except Exception as exc:
            raise StoreFailed(describe(exc)) from exc
        self.outages.reached(Dependency.STORE, self.class_id)
        return result

    def _note(self, entries: list[LogEvent]) -> None:
        """Note the end, the media and the recording among stored entries."""
        types = {entry.type for entry in entries}
        if "class.ended" in types and not self.ended:
            self.ended = True
            self._ended_at = time.monotonic()
        if "media.live" in types:
            self.has_media = True
        if "recording.ready" in types:
            self.recorded = True

    def _fold(self, entry: LogEvent) -> LogEvent:
        """``entry`` with its poll or quiz results filled in.

        Each entry is folded once; a retry after a failed commit gets the
        same filled-in entry again from ``_filled``.
        """
        if entry.seq > self._folded_to:
            filled = self.results.fold(entry)
            self._folded_to = entry.seq
            if filled is not entry:
                self._filled[entry.seq] = filled
        return self._filled.get(entry.seq, entry)

    async def _refold(self, upto: int) -> None:
        """Rebuild the results fold from the log after a restart: the votes
        of a poll still open were persisted as batches, not as counts."""
        after = self._folded_to
        while after < upto:
            try:
                entries = await self.log.read(self.class_id, after, self.batch)
            except HistoryTrimmed as exc:
                logger.warning(
                    "class %s: entries up to %d are trimmed; results of a poll "
                    "or quiz open across them will miss their votes",
                    self.class_id,
                    exc.first - 1,
                    extra=self._extra,
                )
                after = exc.first - 1
                continue
            if not entries:
                break
            for entry in entries:
                if entry.seq > upto:
                    break
                self._fold(entry)
            after = entries[-1].seq
        self._folded_to = max(self._folded_to, upto)

    @property
    def done(self) -> bool:
        """Whether nothing more is expected: the class ended and its
        recording arrived (if it had media), or did not within
        ``after_end_s``.

        The ingest edge publishes the recording after the end, so the
        reconciler keeps reading for a while after ``class.ended``.
        """
        if not self.ended:
            return False
        waited = time.monotonic() - self._ended_at
        return not self.has_media or self.recorded or waited > self.after_end_s

    async def drain(self) -> int:
        """Persist everything the log holds now; return how many entries."""
        total = 0
        while count := await self.step():
            total += count
        return total

    def stop(self) -> None:
        """Make :meth:`run` return after the step in progress, or at once
        if it waits to retry."""
        self.stopping = True
        self._wake.set()

    async def run(self) -> None:
        """Persist entries as they come until the class is :attr:`done` and
        the log holds nothing more for it.

        Failures of the log or the database are retried after a capped
        backoff; nothing is acknowledged before its commit, so a retry
        starts at the right entry. Only changes of :attr:`state` are logged.
        """
        logger.info("reconciling class %s", self.class_id, extra=self._extra)
        backoff = Backoff(self.retry_s, self.max_retry_s)
        try:
            while not (self.done and self.drained) and not self.stopping:
                try:
                    handled = await self.step(self.wait_s)
                except asyncio.CancelledError:
                    raise
                except ClassLogError as exc:
                    self._failed(State.LOG_UNREACHABLE, exc)
                except StoreFailed as exc:
                    # The commit's outcome is unknown: read the offset again.
                    self.offset = None
                    cause = exc.__cause__ or exc
                    unreachable = is_unreachable(cause)
                    self._failed(
                        State.STORE_UNREACHABLE if unreachable else State.FAILING,
                        cause,
                    )
                except Exception as exc:
                    self._failed(State.FAILING, exc)
                else:
                    self._running()
                    backoff.reset()
                    if 0 < handled < self.batch and not self.done:
                        # Caught up: let entries gather for a while, so that
                        # a busy class costs a read a pace, not one per
                        # append (nothing members see waits on the store).
                        await self._pause(self.pace_s)
                    continue
                delay = backoff.next()
                logger.debug(
                    "class %s: %s; retrying in %.1f s",
                    self.class_id,
                    self.state,
                    delay,
                    extra=self._extra,
                )
                await self._pause(delay)
        finally:
            self.outages.forget(self.class_id)
        if self.done:
            logger.info("class %s ended; reconciled", self.class_id, extra=self._extra)
        else:
            logger.info(
                "class %s: reconciling stopped", self.class_id, extra=self._extra
            )

    async def _pause(self, delay_s: float) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), delay_s)
        except TimeoutError:
            pass

    def _failed(self, state: State, error: BaseException) -> None:
        """Enter ``state`` after ``error``, logging only a change."""
        self._recover = True
        previous, self.state = self.state, state
        if state is State.LOG_UNREACHABLE:
            self.outages.unreachable(Dependency.CLASS_LOG, self.class_id, error)
        elif state is State.STORE_UNREACHABLE:
            self.outages.unreachable(Dependency.STORE, self.class_id, error)
        if state is previous:
            return
        if state is State.FAILING:
            # Not an outage: a bug or a schema problem, the same at every
            # retry. The traceback once, then silence until it changes.
            logger.warning(
                "class %s: could not persist (%s); retrying",
                self.class_id,
                describe(error),
                exc_info=error,
                extra=self._extra,
            )
        else:
            # The outage itself is logged once for the origin by Outages.
            logger.debug(
                "class %s: %s (%s)",
                self.class_id,
                state,
                describe(error),
                extra=self._extra,
            )

    def _running(self) -> None:
        if self.state is State.FAILING:
            logger.warning(
                "class %s: persisting again", self.class_id, extra=self._extra
            )
        self.state = State.RUNNING

    @property
    def _extra(self) -> dict[str, str]:
        return {"class_id": self.class_id}


CLOSE_TIMEOUT_S = 10.0
"""How long closing waits for a reconciler's step before cancelling it."""

BACKLOG_TIMEOUT_S = 1.0
"""How long :meth:`Reconcilers.backlog` waits for the class log."""


class Reconcilers:
    """The running reconciler tasks, one per live class.

    Tasks are kept here until they finish, so none is lost to the garbage
    collector, and :meth:`close` stops and awaits whatever still runs.
    ``outages`` is shared by all of them.
    """

    def __init__(self, store: Store, log: ClassLog, *, wait_s: float = 1.0) -> None:
        self.store = store
        self.log = log
        self.wait_s = wait_s
        self.outages = Outages()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._reconcilers: dict[str, Reconciler] = {}

    def start(self, class_id: str, *, ended_at: float | None = None) -> None:
        """Start reconciling a class, unless it already is; ``ended_at`` for
        a class that has ended (see :class:`Reconciler`)."""
        task = self._tasks.get(class_id)
        if task is not None and not task.done():
            return
        reconciler = Reconciler(
            self.store,
            self.log,
            class_id,
            wait_s=self.wait_s,
            ended_at=ended_at,
            outages=self.outages,
        )
        task = asyncio.create_task(reconciler.run(), name=f"reconcile {class_id}")
        self._tasks[class_id] = task
        self._reconcilers[class_id] = reconciler
        task.add_done_callback(lambda done: self._forget(class_id, done))

    def _forget(self, class_id: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(class_id) is task:
            del self._tasks[class_id]
            self._reconcilers.pop(class_id, None)

    def running(self) -> list[str]:
        """The ids of the classes being reconciled."""
        return sorted(self._tasks)

    async def backlog(self) -> int | None:
        """Class-log entries not yet stored, over every class being
        reconciled; None when the class log does not answer within
        :data:`BACKLOG_TIMEOUT_S`."""
        try:
            async with asyncio.timeout(BACKLOG_TIMEOUT_S):
                found = await asyncio.gather(
                    *(self.log.backlog(c, GROUP) for c in self.running())
                )
        except (ClassLogError, TimeoutError):
            return None
        return sum(backlog.total for backlog in found)

    async def finished(self, class_id: str, within_s: float) -> None:
        """Wait until the class's reconciler finishes (the class ended).

        Raises TimeoutError if it still runs after ``within_s`` seconds.
        """
        task = self._tasks.get(class_id)
        if task is not None:
            await asyncio.wait_for(asyncio.shield(task), within_s)

    async def close(self) -> None:
        """Stop every reconciler after its current step, and wait for them.

        They are asked, not cancelled: cancelling one inside a database
        transaction can leave the async driver waiting forever (seen with
        aiosqlite), and a step ends within ``wait_s`` plus one commit. Only
        one that has not stopped after :data:`CLOSE_TIMEOUT_S` is cancelled.
        """
        for reconciler in self._reconcilers.values():
            reconciler.stop()
        tasks = list(self._tasks.values())
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=self.wait_s + CLOSE_TIMEOUT_S)
            for task in late:
                logger.warning("a reconciler did not stop in time; cancelling it")
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._reconcilers.clear()
