"""Polls: one open at a time, one vote per member, changeable until close.

Closing takes two steps, so that votes an edge still holds when the close
is written count, and every reader of the log agrees on the result:

1. ``poll.closed`` makes the poll *closing*: no edge takes votes for it any
   more, and votes stamped after the close's time never count. Its
   ``data.expected`` lists the edges its writer knew to have members; the
   edges that sent votes for the poll before it are expected too.
2. Every edge that folds the close appends the votes it holds for the poll,
   then a ``poll.flushed`` marker. The poll is *final* once every expected
   edge's marker is folded, or at a ``poll.finalize`` entry (any edge
   writes one a grace period after folding the close, should an expected
   edge be gone); the first of them in the log makes it final. The results
   are then those of a ``poll.closed`` entry, as members receive it.

A ``poll.closed`` without ``data.expected`` (from a writer that knows no
second step) makes the poll final at once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from liveclass.origin.contract import Audience, LogEvent


@dataclass
class Poll:
    """An open poll and the votes folded so far."""

    poll_id: str
    question: str
    options: list[str]
    closes_at: float | None
    opened_by_edge: str = ""
    votes: dict[str, int] = field(default_factory=dict)
    vote_edges: set[str] = field(default_factory=set)
    """Edges whose votes were folded: each is expected to flush at the close."""
    closed_at: float | None = None
    """The time on the ``poll.closed`` entry, once closing."""
    expected: set[str] = field(default_factory=set)
    """Edges whose ``poll.flushed`` marker is still awaited, once closing."""
    flushed: dict[str, set[int]] = field(default_factory=dict)
    """Per edge, its processes whose marker came."""

    def counts(self) -> list[int]:
        """Votes per option, in option order."""
        counts = [0] * len(self.options)
        for option in self.votes.values():
            counts[option] += 1
        return counts

    def public(self) -> dict[str, Any]:
        """What every member may know about the poll."""
        return {
            "poll_id": self.poll_id,
            "question": self.question,
            "options": list(self.options),
            "closes_at": self.closes_at,
        }

    def result(self) -> dict[str, Any]:
        """The final results, as a ``poll.closed`` entry's data."""
        return {
            "poll_id": self.poll_id,
            "question": self.question,
            "options": self.options,
            "counts": self.counts(),
            "votes": len(self.votes),
        }


def note_flushed(
    expected: set[str], flushed: dict[str, set[int]], edge_id: str, data: dict[str, Any]
) -> None:
    """Fold one ``*.flushed`` marker of ``edge_id``: the edge leaves
    ``expected`` once every one of its processes (``data.workers``, 1 if
    absent) sent its own (``data.worker``)."""
    workers, worker = data.get("workers", 1), data.get("worker", 0)
    if not isinstance(workers, int) or not isinstance(worker, int):
        workers, worker = 1, 0
    seen = flushed.setdefault(edge_id, set())
    seen.add(worker)
    if len(seen) >= workers:
        expected.discard(edge_id)


def closed_entry(
    entry: LogEvent, result: dict[str, Any], type_: str = "poll.closed"
) -> LogEvent:
    """The ``poll.closed`` (or ``type_``) entry members receive when
    ``entry`` (a marker or a finalize entry) made a closing poll (or
    question) final: at its number, with the results."""
    return entry.model_copy(
        update={
            "type": type_,
            "actor": None,
            "audience": Audience.ALL,
            "user": None,
            "data": result,
        }
    )


class Polls:
    """The open poll of a class and those closing, folded from the log."""

    def __init__(self) -> None:
        self.open: Poll | None = None
        self.closing: dict[str, Poll] = {}
        """Polls closed but not final yet, by id."""

    def fold_opened(self, data: dict[str, Any], edge_id: str) -> bool:
        """Open a poll; False (entry ignored) if one is already open."""
        if self.open is not None:
            return False
        options = data.get("options")
        if not isinstance(options, list) or len(options) < 2:
            return False
        closes_at = data.get("closes_at")
        self.open = Poll(
            poll_id=str(data.get("poll_id", "")),
            question=str(data.get("question", "")),
            options=[str(o) for o in options],
            closes_at=float(closes_at) if closes_at is not None else None,
            opened_by_edge=edge_id,
        )
        return True

    def fold_votes(self, data: dict[str, Any], edge_id: str = "") -> bool:
        """Apply one edge's batch of votes; whether any of them counted.

        A vote cast after the poll's closing time, or after its close, is
        ignored, judged by the time its edge stamped on it, so every edge
        ignores the same votes. Votes for a closing poll still count.
        """
        poll_id = data.get("poll_id")
        poll = self.open
        if poll is None or poll_id != poll.poll_id:
            poll = self.closing.get(str(poll_id))
        if poll is None:
            return False
        if edge_id:
            poll.vote_edges.add(edge_id)
        ends = [t for t in (poll.closes_at, poll.closed_at) if t is not None]
        end = min(ends) if ends else None
        changed = False
        for vote in data.get("votes", []):
            try:
                user_id, option, ts = str(vote[0]), int(vote[1]), float(vote[2])
            except (TypeError, ValueError, IndexError):
                continue
            if not 0 <= option < len(poll.options):
                continue
            if end is not None and ts > end:
                continue
            poll.votes[user_id] = option
            changed = True
        return changed

    def fold_closed(
        self, poll_id: str, ts: float = 0.0, expected: Iterable[str] | None = None
    ) -> dict[str, Any] | None:
        """Close the open poll at time ``ts``; its results if that makes it
        final, else None (it was not open, or it is closing now: see
        :attr:`closing`).

        ``expected`` are the edges whose ``poll.flushed`` must come before
        it is final (with those that sent votes); None makes it final now.
        """
        poll = self.open
        if poll is None or poll.poll_id != poll_id:
            return None
        self.open = None
        poll.closed_at = ts
        if expected is None:
            return poll.result()
        poll.expected = {str(e) for e in expected} | poll.vote_edges
        if not poll.expected:
            return poll.result()
        self.closing[poll_id] = poll
        return None

    def fold_flushed(
        self, poll_id: str, edge_id: str, data: dict[str, Any] | None = None
    ) -> dict[str, Any] | None:
        """Fold ``edge_id``'s marker (``data``, see :func:`note_flushed`);
        the results if it made the poll final."""
        poll = self.closing.get(poll_id)
        if poll is None:
            return None
        note_flushed(poll.expected, poll.flushed, edge_id, data or {})
        if poll.expected:
            return None
        del self.closing[poll_id]
        return poll.result()

    def fold_finalize(self, poll_id: str) -> dict[str, Any] | None:
        """Make a closing poll final whatever edge has not flushed; its
        results, or None if it was not closing."""
        poll = self.closing.pop(poll_id, None)
        return poll.result() if poll is not None else None
