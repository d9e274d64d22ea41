"""Poll and quiz results: folds of the class log that every reader computes.

Votes and answers travel in per-tick batches (``poll.votes``,
``quiz.answers``); a ``poll.closed`` or ``quiz.closed`` entry carries no
result, because no single writer has seen every edge's last batch. A poll
is final a step after its close, once the edges flushed the votes they held
(see :mod:`~liveclass.origin.results.polls`). Every reader (each edge, and
the origin when it persists) folds the log with these machines and reaches
the same counts and leaderboards at the same entry.
"""

from __future__ import annotations

from typing import Any

from liveclass.origin.contract import LogEvent
from liveclass.origin.results.polls import Polls, closed_entry
from liveclass.origin.results.quizzes import QuizResult, Quizzes

__all__ = ["Polls", "Quizzes", "Results", "quiz_data"]


def quiz_data(quiz: QuizResult) -> dict[str, Any]:
    """A final question's result as the data of its ``quiz.closed`` entry."""
    return {
        "quiz_id": quiz.quiz_id,
        "correct": quiz.correct,
        "leaderboard": quiz.leaderboard,
    }


class Results:
    """Folds one class's poll and quiz entries; fills in closing results."""

    def __init__(self) -> None:
        self.polls = Polls()
        self.quizzes = Quizzes()

    def fold(self, entry: LogEvent) -> LogEvent:
        """Apply ``entry``; return it, with its results filled in if it
        makes a poll or question final: then as the ``poll.closed`` or
        ``quiz.closed`` entry members receive (a close that only starts
        closing is returned as it is, without results)."""
        data = entry.data
        poll_id = str(data.get("poll_id"))
        match entry.type:
            case "poll.opened":
                self.polls.fold_opened(data, entry.edge_id)
            case "poll.votes":
                self.polls.fold_votes(data, entry.edge_id)
            case "poll.closed":
                expected = data.get("expected")
                result = self.polls.fold_closed(
                    poll_id, entry.ts, expected if isinstance(expected, list) else None
                )
                if result is not None:
                    return entry.model_copy(update={"data": result})
            case "poll.flushed" | "poll.finalize":
                if entry.type == "poll.flushed":
                    result = self.polls.fold_flushed(poll_id, entry.edge_id, data)
                else:
                    result = self.polls.fold_finalize(poll_id)
                if result is not None:
                    return closed_entry(entry, result)
            case "quiz.asked":
                self.quizzes.fold_asked(data, entry.ts, entry.edge_id)
            case "quiz.answers":
                self.quizzes.fold_answers(data, entry.edge_id)
            case "quiz.closed":
                expected = data.get("expected")
                quiz = self.quizzes.fold_closed(
                    str(data.get("quiz_id")),
                    entry.ts,
                    expected if isinstance(expected, list) else None,
                )
                if quiz is not None:
                    return entry.model_copy(update={"data": quiz_data(quiz)})
            case "quiz.flushed" | "quiz.finalize":
                quiz_id = str(data.get("quiz_id"))
                if entry.type == "quiz.flushed":
                    quiz = self.quizzes.fold_flushed(quiz_id, entry.edge_id, data)
                else:
                    quiz = self.quizzes.fold_finalize(quiz_id)
                if quiz is not None:
                    return closed_entry(entry, quiz_data(quiz), "quiz.closed")
        return entry
