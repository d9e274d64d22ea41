"""The per-edge batcher: every tick, one append per class to the class log."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from liveclass.origin.classlog import ClassLog, ClassLogError
from liveclass.origin.contract import LogEvent

logger = logging.getLogger(__name__)

MAX_PENDING = 50_000
"""Entries held per class while the log is unreachable; beyond, new ones drop."""

STOP_TIMEOUT_S = 5.0
"""How long stopping waits for a last append."""

# Internal batch types whose entries of one tick merge into one entry, keyed
# by the item they belong to, with the list field that is concatenated.
_MERGED: dict[str, tuple[str, str]] = {
    "poll.votes": ("poll_id", "votes"),
    "quiz.answers": ("quiz_id", "answers"),
}


# Entries no member waits for: their effect reaches members through views
# sent at most once a second (counts, tallies), so they may wait for the
# tick and leave in bulk. Any other entry is something members see at once
# (chat, a question, a hand) and goes to the log without waiting for it.
_TICKED = frozenset({*_MERGED, "member.joined", "member.left", "presence.edge"})


def merge_batches(events: Sequence[LogEvent]) -> list[LogEvent]:
    """Merge a tick's vote and answer entries into one entry per poll or quiz.

    The merged entry takes the place of the first one, so it still comes
    before a close written later in the same tick.
    """
    out: list[LogEvent] = []
    merged: dict[tuple[str, str], LogEvent] = {}
    for event in events:
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
    """

    def __init__(
        self,
        log: ClassLog,
        tick_s: float = 0.05,
        on_appended: Callable[[int], None] | None = None,
    ) -> None:
        self.log = log
        self.tick_s = tick_s
        self._pending: dict[str, list[LogEvent]] = {}
        self._in_doubt: dict[str, list[LogEvent]] = {}
        self._on_appended = on_appended
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._urgent = False
        self._stopping = False

    async def add(self, class_id: str, events: Sequence[LogEvent]) -> None:
        """Queue ``events`` for the next flush (the ``EdgeContext.append``)."""
        self.add_now(class_id, events)

    def add_now(self, class_id: str, events: Sequence[LogEvent]) -> None:
        """:meth:`add` for callers that cannot await; it never waits anyway."""
        pending = self._pending.setdefault(class_id, [])
        if len(pending) + len(events) > MAX_PENDING:
            logger.warning(
                "class log backlog full; dropping %d entries",
                len(events),
                extra={"class_id": class_id},
            )
            return
        pending.extend(events)
        if not self._urgent:
            self._urgent = any(e.type not in _TICKED for e in events)
        self._wake.set()

    def start(self) -> None:
        """Start flushing every tick."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="edge-batcher")

    async def stop(self) -> None:
        """Flush what is pending and stop.

        The flushing task is not cancelled but let finish, so that entries
        taken for an append in flight are neither lost nor appended twice.
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

    async def _run(self) -> None:
        # Ticked entries wait for the tick that follows the last append; an
        # urgent one cuts the wait short. Appends never overlap: what comes
        # during one goes with the next.
        loop = asyncio.get_running_loop()
        last = -self.tick_s
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()
            wait = last + self.tick_s - loop.time()
            if not self._stopping and not self._urgent and wait > 0:
                try:
                    async with asyncio.timeout(wait):
                        # Woken early only if something urgent arrives.
                        while not self._urgent and not self._stopping:
                            await self._wake.wait()
                            self._wake.clear()
                except TimeoutError:
                    pass
            last = loop.time()
            await self.flush()

    async def flush(self) -> None:
        """Append every class's pending entries now, one append per class.

        A batch whose append failed is retried first and alone, exactly as it
        was: the log may have stored it before the error reached us, and only
        an identical batch is recognised as a retry (and not stored twice).
        """
        if not self._pending and not self._in_doubt:
            return
        pending, self._pending = self._pending, {}
        self._urgent = False
        batches = dict(self._in_doubt)
        self._in_doubt.clear()
        for class_id, events in pending.items():
            if class_id in batches:
                # The rest waits for the next tick, behind the retried batch.
                self._pending[class_id] = events
            else:
                batches[class_id] = merge_batches(events)
        classes = list(batches)
        results = await asyncio.gather(
            *(self.log.append(c, batches[c]) for c in classes),
            return_exceptions=True,
        )
        for class_id, result in zip(classes, results, strict=True):
            if isinstance(result, ClassLogError):
                # Keep the batch and retry it next tick: an accepted message
                # is not lost to a blip.
                logger.warning(
                    "class log append failed, will retry: %s",
                    result,
                    extra={"class_id": class_id},
                )
                self._in_doubt[class_id] = batches[class_id]
                self._wake.set()
            elif isinstance(result, BaseException):
                logger.error(
                    "class log append failed; entries dropped",
                    exc_info=result,
                    extra={"class_id": class_id},
                )
            elif self._on_appended is not None:
                self._on_appended(len(result))
        if self._pending:
            self._wake.set()

    @property
    def backlog(self) -> int:
        """Entries waiting for the class log, retried batches included."""
        held = sum(len(b) for b in self._in_doubt.values())
        return held + sum(len(p) for p in self._pending.values())
