"""Quizzes: timed questions scored by correctness and speed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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

    def fold_answers(self, data: dict[str, Any]) -> None:
        """Score one edge's batch of answers; only a member's first one counts."""
        q = self.open
        if q is None or data.get("quiz_id") != q.quiz_id:
            return
        for answer in data.get("answers", []):
            try:
                user_id, name = str(answer[0]), str(answer[1])
                option, ts = int(answer[2]), float(answer[3])
            except (TypeError, ValueError, IndexError):
                continue
            if user_id in q.answers or not 0 <= option < len(q.options):
                continue
            if ts > q.closes_at:
                continue
            won = points(option == q.correct, ts - q.asked_at, q.duration_s)
            q.answers[user_id] = (option, won)
            self.names[user_id] = name

    def fold_closed(self, quiz_id: str) -> QuizResult | None:
        """Close the question, add its points to the totals; None if not open."""
        q = self.open
        if q is None or q.quiz_id != quiz_id:
            return None
        self.open = None
        won = {user_id: pts for user_id, (_, pts) in q.answers.items()}
        for user_id, pts in won.items():
            self.totals[user_id] = self.totals.get(user_id, 0) + pts
        return QuizResult(quiz_id, q.correct, won, self.leaderboard())

    def leaderboard(self) -> list[dict[str, Any]]:
        """The best totals, ties broken by user id so every edge agrees."""
        best = sorted(self.totals.items(), key=lambda kv: (-kv[1], kv[0]))
        return [
            {"user_id": u, "name": self.names.get(u, u), "score": s}
            for u, s in best[:LEADERBOARD_SIZE]
        ]
