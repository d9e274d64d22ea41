"""The per-edge batcher: every tick, one append per class to the class log.

When the class log does not answer (Redis down, paused or restarting), the
batcher holds what members send and appends it once the log answers again,
in the order it came; see :class:`Batcher`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from liveclass.origin.classlog import ClassLog, ClassLogError
from liveclass.origin.contract import PRESENCE_CHANGES, LogEvent, presence_change

logger = logging.getLogger(__name__)

MAX_PENDING = 50_000
"""Entries held per class while the log does not answer. Beyond it, the
edge refuses members' messages and joins (see :meth:`Batcher.full`)."""

MAX_APPEND = 1000
"""Entries per append: a backlog goes to the log in appends of this size,
so that no single one holds Redis for long."""

HOLD_AFTER_S = 1.0
"""An append unanswered for this long means the log is not answering: what
waits for it is shown to members as held (provisional chat) from then on."""

RETRY_MIN_S = 0.1
RETRY_MAX_S = 1.0
"""The wait before retrying a failed append doubles from the first value to
the second: a log that refuses connections costs a retry a second at most,
and one that is back is used again within a second."""

STOP_TIMEOUT_S = 5.0
"""How long stopping waits for a last append."""

HeldHook = Callable[[str, list[LogEvent]], None]
"""Called with a class id and entries members see that wait for its log."""

# Internal batch types whose entries of one tick merge into one entry, keyed
# by the item they belong to, with the list field that is concatenated.
_MERGED: dict[str, tuple[str, str]] = {
    "poll.votes": ("poll_id", "votes"),
    "quiz.answers": ("quiz_id", "answers"),
}


_PRESENCE = frozenset({"member.joined", "member.left"})

# Entries no member waits for: their effect reaches members through views
# sent at most once a second (counts, tallies), so they may wait for the
# tick and leave in bulk. Any other entry is something members see at once
# (chat, a question, a hand) and goes to the log without waiting for it.
_TICKED = frozenset({*_MERGED, *_PRESENCE, PRESENCE_CHANGES, "presence.edge"})

TICK_S = 0.5
"""How long ticked entries wait to leave together. Counts and tallies reach
members at most once a second anyway; a longer tick means fewer, bigger
entries for every reader of the log (the origin above all). Anything a
member sees at once cuts the wait short and takes them along."""


def merge_batches(events: Sequence[LogEvent]) -> list[LogEvent]:
    """Merge a tick's entries: votes and answers into one entry per poll or
    quiz, member.joined and member.left into one ``presence.changes``.

    A merged entry takes the place of the first one it holds, so votes
    still come before a close written later in the same tick. Presence
    changes keep their order; a ``presence.edge`` entry (a reset voids
    the changes before it) starts a new merged entry.
    """
    out: list[LogEvent] = []
    merged: dict[tuple[str, str], LogEvent] = {}
    changes: LogEvent | None = None
    for event in events:
        if event.type in _PRESENCE:
            if changes is None:
                data: dict[str, Any] = {"changes": []}
                if "worker" in event.data:
                    data["worker"] = event.data["worker"]
                changes = event.model_copy(
                    update={"type": PRESENCE_CHANGES, "actor": None, "data": data}
                )
                out.append(changes)
            changes.data["changes"].append(presence_change(event))
            continue
        if event.type == "presence.edge":
            changes = None
        spec = _MERGED.get(event.type)
        if spec is None:
            out.append(event)
            continue
        key_field, list_field = spec
        key = (event.type, str(event.data.get(key_field)))
        into = merged.get(key)
        if into is None:
            into = event.model_copy(
                update={
                    "data": {**event.data, list_field: list(event.data[list_field])}
                }
            )
            merged[key] = into
            out.append(into)
        else:
            into.data[list_field].extend(event.data[list_field])
    return out


class Batcher:
    """Collects entries per class and appends them to the log in batches.

    :meth:`add` never waits for the log: members' messages are accepted at
    once. Entries members see (chat, questions, hands) leave as soon as no
    append is in flight, so a quiet class pays no tick and a busy one puts
    what arrived during one append into the next. Votes, answers and
    presence changes wait for the tick (``tick_s``), so a vote storm costs
    the log one append per class per tick, whatever the number of votes.

    When a class's log does not answer (an append failed, or has waited
    :data:`HOLD_AFTER_S`), the class is *held*: its entries stay here, in
    order, and go to the log when it answers again. ``on_held`` is called
    once with each entry members see that is held, so that the edge can
    show it to its own members meanwhile. Nothing is dropped; callers
    refuse members' messages once :meth:`full` says the class holds
    ``max_pending`` entries.
    """

    def __init__(
        self,
        log: ClassLog,
        tick_s: float = TICK_S,
        on_appended: Callable[[int], None] | None = None,
        *,
        max_pending: int = MAX_PENDING,
        on_held: HeldHook | None = None,
    ) -> None:
        self.log = log
        self.tick_s = tick_s
        self.max_pending = max_pending
        self.on_held = on_held
        self.append_errors = 0
        """Appends that failed since start (each is retried)."""
        self._pending: dict[str, list[LogEvent]] = {}
        self._in_doubt: dict[str, list[LogEvent]] = {}
        # Per class, the batches of the flush in progress not appended yet.
        self._flying: dict[str, list[list[LogEvent]]] = {}
        self._held: set[str] = set()
        self._shown: set[str] = set()
        self._down_since: float | None = None
        self._retry_s = 0.0
        self._retry_at = 0.0
        self._on_appended = on_appended
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._urgent = False
        self._stopping = False

    async def add(self, class_id: str, events: Sequence[LogEvent]) -> None:
        """Queue ``events`` for the next flush (the ``EdgeContext.append``)."""
        self.add_now(class_id, events)

    def add_now(self, class_id: str, events: Sequence[LogEvent]) -> None:
        """:meth:`add` for callers that cannot await; it never waits anyway.

        It never refuses either: what is accepted here is appended or, if
        the edge stops first, logged as lost. Check :meth:`full` before
        accepting a member's message.
        """
        first = not self._pending
        self._pending.setdefault(class_id, []).extend(events)
        if class_id in self._held:
            self._show(class_id, events)
        urgent = not self._urgent and any(e.type not in _TICKED for e in events)
        if urgent:
            self._urgent = True
        # The flushing task waits for a first entry, then for the tick or an
        # urgent one: waking it for each join of a storm would cost a task
        # step each, to go back to waiting.
        if first or urgent:
            self._wake.set()

    def held(self, class_id: str) -> int:
        """Entries of ``class_id`` not appended yet (in flight included)."""
        count = len(self._pending.get(class_id, ()))
        count += len(self._in_doubt.get(class_id, ()))
        return count + sum(len(b) for b in self._flying.get(class_id, ()))

    def full(self, class_id: str) -> bool:
        """Whether ``class_id`` holds ``max_pending`` entries: members'
        messages and joins are refused until its log takes some."""
        return self.held(class_id) >= self.max_pending

    @property
    def held_classes(self) -> int:
        """Classes whose log is not answering."""
        return len(self._held)

    @property
    def backlog(self) -> int:
        """Entries waiting for the class log, in flight and retried included."""
        classes = {*self._pending, *self._in_doubt, *self._flying}
        return sum(self.held(c) for c in classes)

    def start(self) -> None:
        """Start flushing every tick."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="edge-batcher")

    async def stop(self) -> None:
        """Flush what is pending and stop.

        The flushing task is not cancelled but let finish, so that entries
        taken for an append in flight are neither lost nor appended twice.
        What the log still has not taken then is lost, and logged as such.
        """
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, STOP_TIMEOUT_S)
            except TimeoutError:
                logger.warning("class log flush did not finish; entries lost")
            self._task = None
        await self.flush()
        if self.backlog:
            logger.error(
                "stopping with %d entries the class log never took; they are lost",
                self.backlog,
            )

    async def _run(self) -> None:
        # Ticked entries wait for the tick that follows the last append; an
        # urgent one cuts the wait short, but not the wait before a retry.
        # Appends never overlap: what comes during one goes with the next.
        loop = asyncio.get_running_loop()
        last = -self.tick_s
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()
            await self._pause(self._retry_at - loop.time(), urgent_cuts=False)
            await self._pause(last + self.tick_s - loop.time(), urgent_cuts=True)
            last = loop.time()
            await self.flush()

    async def _pause(self, delay: float, urgent_cuts: bool) -> None:
        """Wait ``delay`` seconds, less if stopping (or, with ``urgent_cuts``,
        if something urgent arrives)."""
        if delay <= 0 or self._stopping or (urgent_cuts and self._urgent):
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                while not self._stopping and not (urgent_cuts and self._urgent):
                    await self._wake.wait()
                    self._wake.clear()

    async def flush(self) -> None:
        """Append every class's pending entries now, classes side by side.

        A batch whose append failed is retried first and alone, exactly as it
        was: the log may have stored it before the error reached us, and only
        an identical batch is recognised as a retry (and not stored twice).
        Calls must not overlap (the batcher's task, or else its only user).
        """
        if not self._pending and not self._in_doubt:
            return
        self._urgent = False
        self._flying = self._take()
        try:
            results = await asyncio.gather(
                *(self._append_all(c, b) for c, b in self._flying.items())
            )
        finally:
            self._flying = {}
        if all(results):
            self._retry_s = 0.0
        else:
            self._retry_s = min(RETRY_MAX_S, max(RETRY_MIN_S, 2 * self._retry_s))
            self._retry_at = asyncio.get_running_loop().time() + self._retry_s
            # A retry is paced by its backoff, not by the tick as well.
            self._urgent = True
        if self._pending or self._in_doubt:
            self._wake.set()

    def _take(self) -> dict[str, list[list[LogEvent]]]:
        """The batches to append now, per class, in order."""
        pending, self._pending = self._pending, {}
        work = {c: [batch] for c, batch in self._in_doubt.items()}
        self._in_doubt.clear()
        for class_id, events in pending.items():
            if class_id in work:
                # The rest waits for the next flush, behind the retried batch.
                self._pending[class_id] = events
                continue
            merged = merge_batches(events)
            work[class_id] = [
                merged[i : i + MAX_APPEND] for i in range(0, len(merged), MAX_APPEND)
            ]
        return work

    async def _append_all(self, class_id: str, batches: list[list[LogEvent]]) -> bool:
        """Append ``batches`` in order, removing each from the list once in
        the log; False if one failed (it and the rest are kept)."""
        while batches:
            batch = batches[0]
            try:
                numbered = await self._append(class_id, batch)
            except ClassLogError as exc:
                # Keep the batch and retry it alone: an accepted message is
                # not lost to an outage, nor stored twice.
                self._in_doubt[class_id] = batch
                rest = [e for b in batches[1:] for e in b]
                batches.clear()
                if rest:
                    self._pending[class_id] = rest + self._pending.get(class_id, [])
                self.append_errors += 1
                self._hold(class_id, str(exc))
                return False
            except Exception:
                batches.pop(0)
                self._shown.difference_update(e.id for e in batch)
                logger.exception(
                    "class log append failed; entries dropped",
                    extra={"class_id": class_id},
                )
                continue
            batches.pop(0)
            self._appended(class_id, batch, numbered)
        return True

    async def _append(self, class_id: str, batch: list[LogEvent]) -> list[LogEvent]:
        """One append; the class is held if it takes :data:`HOLD_AFTER_S`."""
        task = asyncio.ensure_future(self.log.append(class_id, batch))
        done, _ = await asyncio.wait({task}, timeout=HOLD_AFTER_S)
        if not done:
            self._hold(class_id, f"an append has waited {HOLD_AFTER_S:.0f} s")
        return await task

    def _appended(
        self, class_id: str, batch: list[LogEvent], numbered: list[LogEvent]
    ) -> None:
        if self._shown:
            self._shown.difference_update(e.id for e in batch)
        if self._on_appended is not None:
            self._on_appended(len(numbered))
        if class_id not in self._held:
            return
        self._held.discard(class_id)
        if not self._held and self._down_since is not None:
            logger.warning(
                "class log answering again after %.1f s; appending the %d entries held",
                time.monotonic() - self._down_since,
                self.backlog,
            )
            self._down_since = None

    def _hold(self, class_id: str, why: str) -> None:
        """The log of ``class_id`` is not answering: show what waits for it."""
        if class_id in self._held:
            logger.debug("class log still not answering: %s", why)
            return
        self._held.add(class_id)
        if self._down_since is None:
            self._down_since = time.monotonic()
            logger.warning(
                "class log not answering (%s); holding what members send, up "
                "to %d entries per class, until it does",
                why,
                self.max_pending,
                extra={"class_id": class_id},
            )
        for batch in self._flying.get(class_id, ()):
            self._show(class_id, batch)
        self._show(class_id, self._in_doubt.get(class_id, ()))
        self._show(class_id, self._pending.get(class_id, ()))

    def _show(self, class_id: str, events: Sequence[LogEvent]) -> None:
        """Pass entries members see to ``on_held``, each once."""
        if self.on_held is None:
            return
        fresh = [e for e in events if e.type not in _TICKED and e.id not in self._shown]
        if fresh:
            self._shown.update(e.id for e in fresh)
            self.on_held(class_id, fresh)
