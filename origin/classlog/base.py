"""The interface every class log implements."""

from __future__ import annotations

import abc
from collections.abc import Sequence

from liveclass.origin.contract import LogEvent

DEFAULT_RETENTION = 100_000
"""Entries kept per class; older ones are trimmed and cannot be resumed."""


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

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
