"""The demo's report: what happened, checked against the class log."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from liveclass.origin.contract import LogEvent


@dataclass
class StudentResult:
    """What one simulated student saw and did."""

    user_id: str
    joined: bool = False
    edge_id: str = ""
    error: str = ""
    first_seq: int = 0
    last_seq: int = 0
    chat_seqs: list[int] = field(default_factory=list)
    chat_sent: list[str] = field(default_factory=list)
    vote: int | None = None
    votes_cast: int = 0
    answered: bool = False
    reconnects: int = 0
    hls: dict[str, Any] = field(default_factory=dict)


def chat_delivery(
    students: list[StudentResult], log_entries: list[LogEvent]
) -> tuple[bool, list[str]]:
    """Whether every student received every chat message sent while it was in
    the class, once, in class-log order; and the problems found."""
    chat = [e.seq for e in log_entries if e.type == "chat.message"]
    problems = []
    for s in students:
        if not s.joined:
            continue
        expected = [seq for seq in chat if s.first_seq < seq <= s.last_seq]
        if s.chat_seqs != expected:
            missing = len(set(expected) - set(s.chat_seqs))
            extra = len(s.chat_seqs) - len(set(s.chat_seqs))
            problems.append(
                f"{s.user_id}: {len(s.chat_seqs)} received, {len(expected)} "
                f"expected ({missing} missing, {extra} duplicated)"
            )
    return not problems, problems


def sent_chat_logged(
    students: list[StudentResult], log_entries: list[LogEvent]
) -> bool:
    """Whether every message a student sent is in the class log exactly once."""
    logged: dict[str, int] = {}
    for e in log_entries:
        if e.type == "chat.message":
            text = str(e.data.get("text", ""))
            logged[text] = logged.get(text, 0) + 1
    sent = [t for s in students for t in s.chat_sent]
    return all(logged.get(t) == 1 for t in sent)


def poll_matches(
    students: list[StudentResult], closed: dict[str, Any] | None, options: int
) -> bool:
    """Whether the published tally equals the students' last votes."""
    if closed is None:
        return False
    expected = [0] * options
    for s in students:
        if s.vote is not None:
            expected[s.vote] += 1
    return list(closed.get("counts", [])) == expected
