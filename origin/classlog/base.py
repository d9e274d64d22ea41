"""The interface every class log implements."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass

from liveclass.origin.contract import LogEvent

DEFAULT_RETENTION = 100_000
"""Entries kept per class; older ones are trimmed and cannot be resumed.

Every writer trims as it appends, so edges and origin sharing a log should
be given the same retention (``--log-retention``). Redis trims in whole
blocks of its stream (``stream-node-max-entries``, 100 by default), so it
may keep that many more. A member that resumes from a trimmed number, on an
edge that no longer remembers it either, gets a ``state.reset``; an origin
whose database is away for longer than the retention covers loses what was
trimmed before it was stored."""


class ClassLogError(Exception):
    """The class log could not be reached or refused an operation."""


class HistoryTrimmed(ClassLogError):
    """The entries after the asked position are no longer kept.

    ``first`` is the oldest number still kept: a reader this far behind must
    start again from a snapshot.
    """

    def __init__(self, class_id: str, after: int, first: int) -> None:
        super().__init__(
            f"class {class_id}: entries after {after} were trimmed; "
            f"the oldest kept is {first}, resume from a snapshot"
        )
        self.class_id = class_id
        self.after = after
        self.first = first


class GroupMissing(ClassLogError):
    """The consumer group does not exist: it was never created, or it went
    with its stream (a Redis restarted without persistence). Create it again
    at the position the consumer last stored."""

    def __init__(self, class_id: str, group: str) -> None:
        super().__init__(
            f"class {class_id}: consumer group {group!r} does not exist; "
            "create it at the last entry stored"
        )
        self.class_id = class_id
        self.group = group


@dataclass(frozen=True)
class Backlog:
    """What a consumer group has not acknowledged in one class's log."""

    pending: int
    """Entries delivered to a consumer and not acknowledged yet."""
    undelivered: int
    """Entries appended that the group has not delivered yet."""

    @property
    def total(self) -> int:
        """Every entry still waiting for the group."""
        return self.pending + self.undelivered


class ClassLog(abc.ABC):
    """One ordered, gap-free, numbered log per class.

    Numbers start at 1 and grow by one per entry, so a reader that saw ``n``
    has missed exactly the entries after ``n``.
    """

    @abc.abstractmethod
    async def append(self, class_id: str, events: Sequence[LogEvent]) -> list[LogEvent]:
        """Append ``events`` atomically, in order; return them numbered.

        Raises :class:`ClassLogError` if the log cannot be reached; then none of
        the events was appended.
        """

    @abc.abstractmethod
    async def read(
        self, class_id: str, after: int, limit: int = 1000
    ) -> list[LogEvent]:
        """Return up to ``limit`` entries numbered above ``after``, in order.

        Raises :class:`HistoryTrimmed` if some of them are no longer kept.
        """

    @abc.abstractmethod
    async def wait(
        self, class_id: str, after: int, timeout: float, limit: int = 1000
    ) -> list[LogEvent]:
        """Like :meth:`read`, but wait up to ``timeout`` seconds for entries."""

    @abc.abstractmethod
    async def head(self, class_id: str) -> int:
        """The number of the last entry, 0 for an empty log."""

    # --- consumer groups -------------------------------------------------
    #
    # A consumer group reads the log once for a durable consumer (the
    # origin's reconciler): each entry is delivered once and stays pending
    # until the consumer acknowledges it, so what a consumer read but never
    # finished comes back to it after a failure or a restart.

    @abc.abstractmethod
    async def create_group(self, class_id: str, group: str, after: int) -> bool:
        """Create the consumer group ``group``, to deliver the entries
        numbered above ``after``; return False (and change nothing) if it
        exists already."""

    @abc.abstractmethod
    async def read_group(
        self,
        class_id: str,
        group: str,
        consumer: str,
        limit: int = 1000,
        timeout: float = 0.0,
    ) -> list[LogEvent]:
        """Deliver up to ``limit`` entries that ``group`` has not delivered
        yet, in order, waiting up to ``timeout`` seconds for one.

        Each stays pending for ``consumer`` until :meth:`ack`. Entries
        trimmed before their delivery are skipped: the caller sees a gap in
        the numbers. Raises :class:`GroupMissing` if there is no such group.
        """

    @abc.abstractmethod
    async def read_pending(
        self, class_id: str, group: str, consumer: str, limit: int = 1000
    ) -> list[LogEvent]:
        """Up to ``limit`` entries delivered to ``consumer`` and not
        acknowledged, in order: what it must finish after a failure or a
        restart. An entry trimmed while pending can never be delivered; it
        is acknowledged here and skipped. Raises :class:`GroupMissing`.
        """

    @abc.abstractmethod
    async def ack(self, class_id: str, group: str, seqs: Sequence[int]) -> None:
        """Mark the entries numbered ``seqs`` done for ``group``; numbers
        not pending are ignored."""

    @abc.abstractmethod
    async def backlog(self, class_id: str, group: str) -> Backlog:
        """What ``group`` has not acknowledged yet (all of the log when the
        group does not exist)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
