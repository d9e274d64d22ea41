"""Poll and quiz results: folds of the class log that every reader computes.

Votes and answers travel in per-tick batches (``poll.votes``,
``quiz.answers``); a ``poll.closed`` or ``quiz.closed`` entry carries no
result, because no single writer has seen every edge's last batch. Every
reader (each edge, and the origin when it persists) folds the log with these
machines and reaches the same counts and leaderboards at the same entry.
"""

from __future__ import annotations

from liveclass.origin.contract import LogEvent
from liveclass.origin.results.polls import Polls
from liveclass.origin.results.quizzes import Quizzes

__all__ = ["Polls", "Quizzes", "Results"]


class Results:
    """Folds one class's poll and quiz entries; fills in closing results."""

    def __init__(self) -> None:
        self.polls = Polls()
        self.quizzes = Quizzes()

    def fold(self, entry: LogEvent) -> LogEvent:
        """Apply ``entry``; return it, with its results filled in if it
        closes a poll or a quiz that was open."""
        data = entry.data
        match entry.type:
            case "poll.opened":
                self.polls.fold_opened(data, entry.edge_id)
            case "poll.votes":
                self.polls.fold_votes(data)
            case "poll.closed":
                result = self.polls.fold_closed(str(data.get("poll_id")))
                if result is not None:
                    return entry.model_copy(update={"data": result})
            case "quiz.asked":
                self.quizzes.fold_asked(data, entry.ts, entry.edge_id)
            case "quiz.answers":
                self.quizzes.fold_answers(data)
            case "quiz.closed":
                quiz = self.quizzes.fold_closed(str(data.get("quiz_id")))
                if quiz is not None:
                    filled = {
                        "quiz_id": quiz.quiz_id,
                        "correct": quiz.correct,
                        "leaderboard": quiz.leaderboard,
                    }
                    return entry.model_copy(update={"data": filled})
        return entry
