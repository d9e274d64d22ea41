"""The reconciler: from each live class's log into the database.

One task per live class reads the class log from the last persisted number,
stores what the origin keeps (attendance, chat, polls, quizzes, the
recording, the end of the class) and moves the offset in the same
transaction. An entry counts as persisted only once that transaction has
committed (write-behind): a crash between reading and committing costs a
re-read, never a lost or doubled row.
"""

from __future__ import annotations

import asyncio
import logging
import time

from liveclass.origin.classlog import ClassLog, ClassLogError, HistoryTrimmed
from liveclass.origin.contract import LogEvent
from liveclass.origin.results import Results
from liveclass.origin.store import Store

logger = logging.getLogger(__name__)


class Reconciler:
    """Persists one class's log; :meth:`run` until the class ends."""

    def __init__(
        self,
        store: Store,
        log: ClassLog,
        class_id: str,
        *,
        batch: int = 1000,
        wait_s: float = 1.0,
        retry_s: float = 1.0,
        after_end_s: float = 120.0,
    ) -> None:
        self.store = store
        self.log = log
        self.class_id = class_id
        self.batch = batch
        self.wait_s = wait_s
        self.retry_s = retry_s
        self.after_end_s = after_end_s
        self.offset: int | None = None
        self.ended = False
        self.recorded = False
        self.has_media = False
        self._ended_at = 0.0
        self.results = Results()
        self.stopping = False
        """Set to make :meth:`run` return after the step in progress."""
        self._folded_to = 0
        self._filled: dict[int, LogEvent] = {}

    async def step(self, wait_s: float = 0.0) -> int:
        """Persist the next entries, waiting up to ``wait_s`` for some.

        Returns how many entries were persisted. Raises
        :class:`~liveclass.origin.classlog.ClassLogError` and database errors;
        nothing is marked persisted then.
        """
        if self.offset is None:
            self.offset = await self.store.offset(self.class_id)
            if self._folded_to < self.offset:
                await self._refold(self.offset)
        try:
            if wait_s > 0:
                entries = await self.log.wait(
                    self.class_id, self.offset, wait_s, self.batch
                )
            else:
                entries = await self.log.read(self.class_id, self.offset, self.batch)
        except HistoryTrimmed as exc:
            # What was trimmed is gone for good; persist what is left rather
            # than stall the class forever.
            logger.warning(
                "class %s: entries %d..%d were trimmed before they were stored",
                self.class_id,
                exc.after + 1,
                exc.first - 1,
                extra={"class_id": self.class_id},
            )
            self.offset = exc.first - 1
            return await self.step(wait_s)
        if not entries:
            return 0
        entries = [self._fold(entry) for entry in entries]
        self.offset = await self.store.persist(self.class_id, entries)
        types = {entry.type for entry in entries}
        if "class.ended" in types and not self.ended:
            self.ended = True
            self._ended_at = time.monotonic()
        if "media.live" in types:
            self.has_media = True
        if "recording.ready" in types:
            self.recorded = True
        return len(entries)

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

    async def run(self) -> None:
        """Persist entries as they come until the class is :attr:`done`.

        Errors of the log or the database are logged and retried: the
        offset only moves after a commit, so a retry starts at the right
        entry.
        """
        logger.info("reconciling class %s", self.class_id, extra=self._extra)
        while not self.done and not self.stopping:
            try:
                await self.step(self.wait_s)
            except asyncio.CancelledError:
                raise
            except (ClassLogError, OSError) as exc:
                logger.warning(
                    "class %s: class log unreachable (%s); retrying",
                    self.class_id,
                    exc,
                    extra=self._extra,
                )
                await asyncio.sleep(self.retry_s)
            except Exception:
                logger.exception(
                    "class %s: could not persist; retrying",
                    self.class_id,
                    extra=self._extra,
                )
                # Read the offset again: the failed transaction may have
                # left it anywhere between what we thought and the truth.
                self.offset = None
                await asyncio.sleep(self.retry_s)
        logger.info("class %s ended; reconciled", self.class_id, extra=self._extra)

    @property
    def _extra(self) -> dict[str, str]:
        return {"class_id": self.class_id}


CLOSE_TIMEOUT_S = 10.0
"""How long closing waits for a reconciler's step before cancelling it."""


class Reconcilers:
    """The running reconciler tasks, one per live class.

    Tasks are kept here until they finish, so none is lost to the garbage
    collector, and :meth:`close` cancels and awaits whatever still runs.
    """

    def __init__(self, store: Store, log: ClassLog, *, wait_s: float = 1.0) -> None:
        self.store = store
        self.log = log
        self.wait_s = wait_s
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._reconcilers: dict[str, Reconciler] = {}

    def start(self, class_id: str) -> None:
        """Start reconciling a class, unless it already is."""
        task = self._tasks.get(class_id)
        if task is not None and not task.done():
            return
        reconciler = Reconciler(self.store, self.log, class_id, wait_s=self.wait_s)
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
            reconciler.stopping = True
        tasks = list(self._tasks.values())
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=self.wait_s + CLOSE_TIMEOUT_S)
            for task in late:
                logger.warning("a reconciler did not stop in time; cancelling it")
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._reconcilers.clear()
