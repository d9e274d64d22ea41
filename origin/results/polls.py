"""Polls: one open at a time, one vote per member, changeable until close."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Poll:
    """An open poll and the votes folded so far."""

    poll_id: str
    question: str
    options: list[str]
    closes_at: float | None
    opened_by_edge: str = ""
    votes: dict[str, int] = field(default_factory=dict)

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


class Polls:
    """The open poll of a class, folded from the log."""

    def __init__(self) -> None:
        self.open: Poll | None = None

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

    def fold_votes(self, data: dict[str, Any]) -> bool:
        """Apply one edge's batch of votes; whether any of them counted.

        A vote cast after the poll's closing time is ignored, judged by the
        time its edge stamped on it, so every edge ignores the same votes.
        """
        poll = self.open
        if poll is None or data.get("poll_id") != poll.poll_id:
            return False
        changed = False
        for vote in data.get("votes", []):
            try:
                user_id, option, ts = str(vote[0]), int(vote[1]), float(vote[2])
            except (TypeError, ValueError, IndexError):
                continue
            if not 0 <= option < len(poll.options):
                continue
            if poll.closes_at is not None and ts > poll.closes_at:
                continue
            poll.votes[user_id] = option
            changed = True
        return changed

    def fold_closed(self, poll_id: str) -> dict[str, Any] | None:
        """Close the poll; its results, or None if it was not open."""
        poll = self.open
        if poll is None or poll.poll_id != poll_id:
            return None
        self.open = None
        return {
            "poll_id": poll.poll_id,
            "question": poll.question,
            "options": poll.options,
            "counts": poll.counts(),
            "votes": len(poll.votes),
        }
