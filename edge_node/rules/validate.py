"""Checks one member's message against the class state, on the member's edge."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from liveclass.edge_node.rules.chat import RateLimiter, SlowMode
from liveclass.edge_node.rules.state import ClassState
from liveclass.origin.contract import Audience, LogEvent, sent_event_id
from liveclass.sdk import protocol as p
from liveclass.sdk.protocol import MAX_CHAT_CHARS, ErrorCode, Event, Member, Role

OPENING_S = 2.0
"""How long a poll accepted on this edge counts as open before the state has
folded it back from the class log."""


def error_event(code: ErrorCode, message: str, ref: str | None = None) -> Event:
    """The ``error`` view that refuses one client message."""
    return Event(
        type="error", data={"code": code.value, "message": message, "ref": ref}
    )


@dataclass
class Outcome:
    """What one client message led to.

    ``entries`` go to the class log; ``reply`` goes to the sender alone (an
    error, or a view it asked for).
    """

    entries: list[LogEvent] = field(default_factory=list)
    reply: list[Event] = field(default_factory=list)


class Validator:
    """Validates the messages of one class's members on this edge.

    Holds what only this edge knows: rate-limit buckets, slow-mode times and
    the quiz answers sent in the current tick but not yet folded.
    """

    def __init__(
        self,
        edge_id: str,
        chat_limit: RateLimiter | None = None,
        action_limit: RateLimiter | None = None,
    ) -> None:
        self.edge_id = edge_id
        self.chat_limit = chat_limit or RateLimiter(burst=5, per_s=10.0)
        self.action_limit = action_limit or RateLimiter(burst=20, per_s=10.0)
        self.slow_mode = SlowMode()
        self._answered: set[tuple[str, str]] = set()
        self._poll_opened_at = float("-inf")

    def forget(self, user_id: str, now: float | None = None) -> None:
        """Drop what this edge kept about a member who left it, once it can
        no longer limit them (``now`` on the clock :meth:`check` gets)."""
        now = time.time() if now is None else now
        self.chat_limit.forget(user_id, now)
        self.action_limit.forget(user_id, now)
        self.slow_mode.forget(user_id, now)

    def check(self, state: ClassState, member: Member, msg: Any, now: float) -> Outcome:
        """Check ``msg`` (a parsed client message) sent by ``member`` at ``now``."""
        ref = msg.ref
        if not p.allowed(member.role, msg.type):
            who = "the teacher" if msg.type in p.TEACHER_ONLY else "teachers and TAs"
            return _refuse(ErrorCode.FORBIDDEN, f"only {who} may send {msg.type}", ref)
        if member.user_id in state.removed:
            return _refuse(ErrorCode.FORBIDDEN, "you were removed from this class", ref)
        if state.ended:
            return _refuse(ErrorCode.CONFLICT, "the class has ended", ref)
        limiter = self.chat_limit if msg.type == "chat.send" else self.action_limit
        if not member.role.is_staff and not limiter.allow(member.user_id, now):
            return _refuse(ErrorCode.RATE_LIMITED, "too many messages; slow down", ref)
        check = _CHECKS[msg.type]
        result = check(self, state, member, msg, now)
        if isinstance(result, Event):
            return Outcome(reply=[result])
        if isinstance(result, Outcome):
            return result
        for entry in result:
            entry.edge_id = self.edge_id
            entry.actor = member.user_id
            entry.ts = now
        return Outcome(entries=result)

    # --- chat ------------------------------------------------------------

    def _chat_send(self, state: ClassState, m: Member, msg: Any, now: float) -> Any:
        text = msg.text.strip()
        if not text:
            return error_event(ErrorCode.INVALID, "chat text is blank", msg.ref)
        if len(text) > MAX_CHAT_CHARS:
            return error_event(
                ErrorCode.TOO_LONG,
                f"chat messages are at most {MAX_CHAT_CHARS} characters",
                msg.ref,
            )
        if not m.role.is_staff:
            if not state.chat.enabled:
                return error_event(ErrorCode.CHAT_OFF, "chat is off", msg.ref)
            if m.user_id in state.chat.muted:
                return error_event(ErrorCode.MUTED, "you are muted", msg.ref)
            wait = self.slow_mode.wait_s(m.user_id, state.chat.slow_mode_s, now)
            if wait > 0:
                return error_event(
                    ErrorCode.SLOW_MODE, f"slow mode: wait {wait:.1f} s", msg.ref
                )
            self.slow_mode.sent(m.user_id, now)
        data = {"text": text, "name": m.name, "role": m.role.value}
        if not msg.ref:
            return [LogEvent(type="chat.message", data=data)]
        # The ref goes back to the sender, which then knows the message is
        # in the log; and it names the entry, so a copy sent again after a
        # lost edge is folded as a duplicate, and stored once.
        data["ref"] = msg.ref
        entry_id = sent_event_id(state.class_id, m.user_id, msg.ref, text)
        return [LogEvent(id=entry_id, type="chat.message", data=data)]

    def _chat_delete(self, state: ClassState, m: Member, msg: Any, now: float) -> Any:
        if msg.seq > state.seq:
            return error_event(ErrorCode.NOT_FOUND, f"no entry {msg.seq}", msg.ref)
        return [LogEvent(type="chat.deleted", data={"seq": msg.seq})]

    def _chat_mute(self, state: ClassState, m: Member, msg: Any, now: float) -> Any:
        data = {"user_id": msg.user_id, "muted": msg.muted}
        return [
            LogEvent(
                type="chat.muted", audience=Audience.USER, user=msg.user_id, data=data
            )
        ]

    def _slow_mode(self, state: ClassState, m: Member, msg: Any, now: float) -> Any:
        return [LogEvent(type="chat.settings", data={"slow_mode_s": msg.seconds})]

    def _chat_enable(self, state: ClassState, m: Member, msg: Any, now: float) -> Any:
        return [LogEvent(type="chat.settings", data={"enabled": msg.enabled})]

    def _remove(self, state: ClassState, m: Member, msg: Any, now: float) -> Any:
        if msg.user_id == m.user_id:
            return error_event(ErrorCode.INVALID, "you cannot remove yourself", msg.ref)
        if state.presence.role_of(msg.user_id) == Role.TEACHER.value:
            return error_event(
                ErrorCode.FORBIDDEN, "the teacher cannot be removed", msg.ref
            )
        if msg.user_id in state.removed:
            return error_event(ErrorCode.CONFLICT, "already removed", msg.ref)
        return [LogEvent(type="member.removed", data={"user_id": msg.user_id})]

    # --- hands -----------------------------------------------------------

    def _hand_raise(self, state: ClassState, m: Member, msg: Any, now: float) -> Any:
        if m.user_id in state.hands:
            return error_event(ErrorCode.CONFLICT, "your hand is already up", msg.ref)
        data = {"user_id": m.user_id, "name": m.name}
        return [LogEvent(type="hand.raised", data=data)]

    def _hand_lower(self, state: ClassState, m: Member, msg: Any, now: float) -> Any:
        target = msg.user_id or m.user_id
        if target != m.user_id and not m.role.is_staff:
            return error_event(
                ErrorCode.FORBIDDEN, "only staff may lower another hand", msg.ref
            )
        if target not in state.hands:
            return error_event(ErrorCode.NOT_FOUND, "that hand is not up", msg.ref)
        return [LogEvent(type="hand.lowered", data={"user_id": target})]

    def _call_next(self, state: ClassState, m: Member, msg: Any, now: float) -> Any:
        first = state.hands.first()
        if first is None:
            return error_event(ErrorCode.NOT_FOUND, "no hand is up", msg.ref)
        data = {"user_id": first[0], "name": first[1]}
        return [LogEvent(type="hand.called", data=data)]

    # --- polls -----------------------------------------------------------

    def _poll_open(self, state: ClassState, m: Member, msg: Any, now: float) -> Any:
        # A poll accepted here reaches the state only when its entry comes
        # back from the log, a tick or two later: until then it is opening.
        opening = now - self._poll_opened_at < OPENING_S
        if state.ending:
            return error_event(ErrorCode.CONFLICT, "the class is ending", msg.ref)
        if state.polls.open is not None or opening:
            return error_event(ErrorCode.CONFLICT, "close the open poll first", msg.ref)
        self._poll_opened_at = now
        closes_at = now + msg.duration_s if msg.duration_s else None
        data = {
            "poll_id": uuid.uuid4().hex[:12],
            "question": msg.question,
            "options": list(msg.options),
            "closes_at": closes_at,
        }
        return [LogEvent(type="poll.opened", data=data)]

    def _poll_vote(self, state: ClassState, m: Member, msg: Any, now: float) -> Any:
        poll = state.polls.open
        if poll is None or poll.poll_id != msg.poll_id:
            return error_event(ErrorCode.NOT_FOUND, "that poll is not open", msg.ref)
        if msg.option >= len(poll.options):
            return error_event(ErrorCode.INVALID, "no such option", msg.ref)
        if poll.closes_at is not None and now > poll.closes_at:
            return error_event(ErrorCode.CONFLICT, "the poll has closed", msg.ref)
        # One entry per vote here; the batcher merges a tick's votes into one.
        data = {"poll_id": poll.poll_id, "votes": [[m.user_id, msg.option, now]]}
        return [LogEvent(type="poll.votes", audience=Audience.EDGES, data=data)]

    def _poll_close(self, state: ClassState, m: Member, msg: Any, now: float) -> Any:
        poll = state.polls.open
        if poll is None or poll.poll_id != msg.poll_id:
            return error_event(ErrorCode.NOT_FOUND, "that poll is not open", msg.ref)
        expected = state.presence.edges
        return [closing_entry("poll.closed", "poll_id", poll.poll_id, expected)]

    # --- quizzes ---------------------------------------------------------

    def _quiz_ask(self, state: ClassState, m: Member, msg: Any, now: float) -> Any:
        if state.ending:
            return error_event(ErrorCode.CONFLICT, "the class is ending", msg.ref)
        if state.quizzes.open is not None:
            return error_event(
                ErrorCode.CONFLICT, "close the open question first", msg.ref
            )
        if msg.correct >= len(msg.options):
            return error_event(ErrorCode.INVALID, "correct is not an option", msg.ref)
        self._answered.clear()
        data = {
            "quiz_id": uuid.uuid4().hex[:12],
            "question": msg.question,
            "options": list(msg.options),
            "correct": msg.correct,
            "duration_s": msg.duration_s,
            "asked_at": now,
        }
        return [LogEvent(type="quiz.asked", data=data)]

    def _quiz_answer(self, state: ClassState, m: Member, msg: Any, now: float) -> Any:
        q = state.quizzes.open
        if q is None or q.quiz_id != msg.quiz_id:
            return error_event(
                ErrorCode.NOT_FOUND, "that question is not open", msg.ref
            )
        if msg.option >= len(q.options):
            return error_event(ErrorCode.INVALID, "no such option", msg.ref)
        if now > q.closes_at:
            return error_event(ErrorCode.CONFLICT, "time is up", msg.ref)
        key = (q.quiz_id, m.user_id)
        if m.user_id in q.answers or key in self._answered:
            return error_event(ErrorCode.CONFLICT, "you already answered", msg.ref)
        self._answered.add(key)
        data = {"quiz_id": q.quiz_id, "answers": [[m.user_id, m.name, msg.option, now]]}
        return [LogEvent(type="quiz.answers", audience=Audience.EDGES, data=data)]

    def _quiz_close(self, state: ClassState, m: Member, msg: Any, now: float) -> Any:
        q = state.quizzes.open
        if q is None or q.quiz_id != msg.quiz_id:
            return error_event(
                ErrorCode.NOT_FOUND, "that question is not open", msg.ref
            )
        expected = state.presence.edges
        return [closing_entry("quiz.closed", "quiz_id", q.quiz_id, expected)]

    # --- the rest --------------------------------------------------------

    def _presence_list(self, state: ClassState, m: Member, msg: Any, now: float) -> Any:
        view = Event(type="presence.list", data={"members": state.presence.members()})
        return Outcome(reply=[view])

    def _class_end(self, state: ClassState, m: Member, msg: Any, now: float) -> Any:
        # What is open is closed first, as any close: every edge appends the
        # votes and answers it holds, so that they count and every reader
        # (members, the origin's report) gets exact results. The class ends
        # once they are final (see ClassState.end_due); ending at once
        # would close every member and the origin's reading before then.
        entries = []
        expected = state.presence.edges
        if state.polls.open is not None:
            poll_id = state.polls.open.poll_id
            entries.append(closing_entry("poll.closed", "poll_id", poll_id, expected))
        if state.quizzes.open is not None:
            quiz_id = state.quizzes.open.quiz_id
            entries.append(closing_entry("quiz.closed", "quiz_id", quiz_id, expected))
        if entries or state.polls.closing or state.quizzes.closing:
            return [*entries, LogEvent(type="class.ending", audience=Audience.EDGES)]
        return [ended_entry(state.class_id)]


def ended_entry(class_id: str) -> LogEvent:
    """The ``class.ended`` entry; its id is the same from every writer, so
    the origin stores one of those that edges write at the same time."""
    return LogEvent(id=f"class.ended:{class_id}", type="class.ended")


def closing_entry(
    type_: str, key: str, item_id: str, expected: Sequence[str] | None = None
) -> LogEvent:
    """The entry that closes a poll or question; its id is the same from every
    writer, so a store that keys on ids keeps one of concurrent closes.

    ``expected``: the edges with members as the writer knows them; a poll
    is final once they have flushed their votes (see
    :mod:`liveclass.origin.results.polls`). None: final at once.
    """
    data: dict[str, Any] = {key: item_id}
    if expected is not None:
        data["expected"] = sorted(expected)
    return LogEvent(id=f"{type_}:{item_id}", type=type_, data=data)


def flushed_entry(
    kind: str, item_id: str, edge_id: str, worker: int = 0, workers: int = 1
) -> LogEvent:
    """The marker that ``edge_id`` appended everything it held for the
    closing poll or question (``kind`` ``"poll"`` or ``"quiz"``).

    An edge served by several processes (``workers``) is flushed once the
    marker of each (``worker``, from 0) is in.
    """
    data: dict[str, Any] = {f"{kind}_id": item_id}
    if workers > 1:
        data |= {"worker": worker, "workers": workers}
    return LogEvent(
        type=f"{kind}.flushed",
        edge_id=edge_id,
        audience=Audience.EDGES,
        data=data,
    )


def finalize_entry(kind: str, item_id: str) -> LogEvent:
    """The entry that makes a closing poll or question (``kind``) final
    without the edges not flushed yet; one id from every writer."""
    return LogEvent(
        id=f"{kind}.finalize:{item_id}",
        type=f"{kind}.finalize",
        audience=Audience.EDGES,
        data={f"{kind}_id": item_id},
    )


def _refuse(code: ErrorCode, message: str, ref: str | None) -> Outcome:
    return Outcome(reply=[error_event(code, message, ref)])


_Check = Callable[[Validator, ClassState, Member, Any, float], Any]

_CHECKS: dict[str, _Check] = {
    "chat.send": Validator._chat_send,
    "chat.delete": Validator._chat_delete,
    "chat.mute": Validator._chat_mute,
    "chat.slow_mode": Validator._slow_mode,
    "chat.enable": Validator._chat_enable,
    "member.remove": Validator._remove,
    "hand.raise": Validator._hand_raise,
    "hand.lower": Validator._hand_lower,
    "hand.call_next": Validator._call_next,
    "poll.open": Validator._poll_open,
    "poll.vote": Validator._poll_vote,
    "poll.close": Validator._poll_close,
    "quiz.ask": Validator._quiz_ask,
    "quiz.answer": Validator._quiz_answer,
    "quiz.close": Validator._quiz_close,
    "presence.list": Validator._presence_list,
    "class.end": Validator._class_end,
}

MESSAGE_TYPES: frozenset[str] = frozenset(_CHECKS)
"""Every client message type the validator knows."""
