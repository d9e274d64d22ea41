"""Quizzes: timed questions scored by correctness and speed.

A question closes in two steps, as a poll does (see
:mod:`liveclass.origin.results.polls`): ``quiz.closed`` makes it closing,
each edge appends the answers it holds and a ``quiz.flushed`` marker, and it
is final (points added, leaderboard out) once the expected edges flushed,
or at a ``quiz.finalize`` entry.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from liveclass.origin.results.polls import note_flushed

MAX_POINTS = 1000
"""Points for a correct answer given at once; half of it at the deadline."""

LEADERBOARD_SIZE = 10
"""Members listed in the leaderboard published after each question."""


def points(correct: bool, elapsed_s: float, duration_s: float) -> int:
    """Points for one answer: 0 if wrong, else 1000 falling to 500 at the end."""
    if not correct or duration_s <= 0:
        return 0
    elapsed = min(max(elapsed_s, 0.0), duration_s)
    return round(MAX_POINTS * (1 - elapsed / duration_s / 2))


@dataclass
class Question:
    """An open quiz question and the answers folded so far."""

    quiz_id: str
    question: str
    options: list[str]
    correct: int
    asked_at: float
    duration_s: float
    opened_by_edge: str = ""
    # user_id -> (option, points)
    answers: dict[str, tuple[int, int]] = field(default_factory=dict)
    answer_edges: set[str] = field(default_factory=set)
    """Edges whose answers were folded: each is expected to flush."""
    closed_at: float | None = None
    """The time on the ``quiz.closed`` entry, once closing."""
    expected: set[str] = field(default_factory=set)
    """Edges whose ``quiz.flushed`` marker is still awaited, once closing."""
    flushed: dict[str, set[int]] = field(default_factory=dict)
    """Per edge, its processes whose marker came."""

    @property
    def closes_at(self) -> float:
        """When answers stop counting (wall clock, seconds)."""
        return self.asked_at + self.duration_s

    def public(self) -> dict[str, Any]:
        """What a student may know while the question is open."""
        return {
            "quiz_id": self.quiz_id,
            "question": self.question,
            "options": list(self.options),
            "closes_at": self.closes_at,
        }


@dataclass
class QuizResult:
    """One closed question: its leaderboard and every answerer's points."""

    quiz_id: str
    correct: int
    points: dict[str, int]
    leaderboard: list[dict[str, Any]]


class Quizzes:
    """The open question and every member's running total, folded from the log."""

    def __init__(self) -> None:
        self.open: Question | None = None
        self.closing: dict[str, Question] = {}
        """Questions closed but not final yet, by id."""
        self.totals: dict[str, int] = {}
        self.names: dict[str, str] = {}

    def fold_asked(self, data: dict[str, Any], ts: float, edge_id: str) -> bool:
        """Open a question; False (entry ignored) if one is open or it is bad."""
        if self.open is not None:
            return False
        options = data.get("options")
        correct = data.get("correct")
        if not isinstance(options, list) or not isinstance(correct, int):
            return False
        if not 0 <= correct < len(options):
            return False
        self.open = Question(
            quiz_id=str(data.get("quiz_id", "")),
            question=str(data.get("question", "")),
            options=[str(o) for o in options],
            correct=correct,
            asked_at=float(data.get("asked_at", ts)),
            duration_s=float(data.get("duration_s", 20.0)),
            opened_by_edge=edge_id,
        )
        return True

    def fold_answers(self, data: dict[str, Any], edge_id: str = "") -> None:
        """Score one edge's batch of answers; only a member's first one
        counts, and none given after the deadline or the close."""
        quiz_id = data.get("quiz_id")
        q = self.open
        if q is None or quiz_id != q.quiz_id:
            q = self.closing.get(str(quiz_id))
        if q is None:
            return
        if edge_id:
            q.answer_edges.add(edge_id)
        end = q.closes_at if q.closed_at is None else min(q.closes_at, q.closed_at)
        for answer in data.get("answers", []):
            try:
                user_id, name = str(answer[0]), str(answer[1])
                option, ts = int(answer[2]), float(answer[3])
            except (TypeError, ValueError, IndexError):
                continue
            if user_id in q.answers or not 0 <= option < len(q.options):
                continue
            if ts > end:
                continue
            won = points(option == q.correct, ts - q.asked_at, q.duration_s)
            q.answers[user_id] = (option, won)
            self.names[user_id] = name

    def fold_closed(
        self, quiz_id: str, ts: float = 0.0, expected: Iterable[str] | None = None
    ) -> QuizResult | None:
        """Close the open question at time ``ts``; its result if that makes
        it final (points added to the totals), else None (it was not open,
        or it is closing now: see :attr:`closing`).

        ``expected`` are the edges whose ``quiz.flushed`` must come first
        (with those that sent answers); None makes it final now.
        """
        q = self.open
        if q is None or q.quiz_id != quiz_id:
            return None
        self.open = None
        q.closed_at = ts
        if expected is not None:
            q.expected = {str(e) for e in expected} | q.answer_edges
            if q.expected:
                self.closing[quiz_id] = q
                return None
        return self._final(q)

    def fold_flushed(
        self, quiz_id: str, edge_id: str, data: dict[str, Any] | None = None
    ) -> QuizResult | None:
        """Fold ``edge_id``'s marker (``data``, see
        :func:`~liveclass.origin.results.polls.note_flushed`); the result if
        it made the question final."""
        q = self.closing.get(quiz_id)
        if q is None:
            return None
        note_flushed(q.expected, q.flushed, edge_id, data or {})
        if q.expected:
            return None
        del self.closing[quiz_id]
        return self._final(q)

    def fold_finalize(self, quiz_id: str) -> QuizResult | None:
        """Make a closing question final whatever edge has not flushed."""
        q = self.closing.pop(quiz_id, None)
        return self._final(q) if q is not None else None

    def _final(self, q: Question) -> QuizResult:
        won = {user_id: pts for user_id, (_, pts) in q.answers.items()}
        for user_id, pts in won.items():
            self.totals[user_id] = self.totals.get(user_id, 0) + pts
        return QuizResult(q.quiz_id, q.correct, won, self.leaderboard())

    def leaderboard(self) -> list[dict[str, Any]]:
        """The best totals, ties broken by user id so every edge agrees."""
        best = sorted(self.totals.items(), key=lambda kv: (-kv[1], kv[0]))
        return [
            {"user_id": u, "name": self.names.get(u, u), "score": s}
            for u, s in best[:LEADERBOARD_SIZE]
        ]
