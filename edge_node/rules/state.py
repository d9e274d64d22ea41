"""The state of one class, folded deterministically from its log."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from liveclass.edge_node.rules.chat import ChatState
from liveclass.edge_node.rules.hands import HandQueue
from liveclass.edge_node.rules.presence import Presence, source_of
from liveclass.origin.contract import (
    INTERNAL_TYPES,
    PRESENCE_CHANGES,
    Audience,
    LogEvent,
    presence_items,
    roster_items,
)
from liveclass.origin.results import quiz_data
from liveclass.origin.results.polls import Polls, closed_entry
from liveclass.origin.results.quizzes import QuizResult, Quizzes
from liveclass.sdk.protocol import Member

EDGE_TIMEOUT_S = 9.0
"""An edge (or one process of it) that wrote nothing to a class log for this
long, by the times on later entries, is taken to be gone, and its members
with it. Edges with members write a ``presence.edge`` entry every
:data:`~liveclass.edge_node.room.PRESENCE_HEARTBEAT_S` to stay counted, so a
dead edge leaves the count within this plus one heartbeat and one sweep
(about 13 s). Edges' clocks must agree to well within it (NTP); an edge
dropped while alive (a skewed clock, or its entries held through a log
outage while others' went in) says who it holds again, see
:attr:`Folded.dropped`."""

_SWEEP_EVERY_S = 1.0


@dataclass
class Folded:
    """What folding one entry produced.

    ``deliver`` is the entry to send members, completed from the fold (a
    closed poll's counts, full chat settings), or None when members must not
    see it (internal batches, duplicates every edge ignores alike).
    """

    deliver: LogEvent | None
    tally_changed: bool = False
    presence_changed: bool = False
    quiz_result: QuizResult | None = None
    removed: str | None = None
    ended: bool = False
    closing: tuple[str, str] | None = None
    """``("poll", id)`` or ``("quiz", id)``: this entry started closing it,
    and the edge appends what it holds for it, then its marker."""
    dropped: tuple[str, ...] = ()
    """Presence sources the sweep at this entry took to be gone."""


class ClassState:
    """Everything an edge knows about one class, as of log entry ``seq``.

    :meth:`fold` reads only the entry and the state, never a clock, so every
    edge that folds the same log reaches the same state.
    """

    def __init__(self, class_id: str) -> None:
        self.class_id = class_id
        self.seq = 0
        self.chat = ChatState()
        self.hands = HandQueue()
        self.polls = Polls()
        self.quizzes = Quizzes()
        self.presence = Presence()
        self.removed: set[str] = set()
        self.media: dict[str, Any] | None = None
        self.recording: dict[str, Any] | None = None
        self.ended = False
        self.ending = False
        self._edge_seen: dict[str, float] = {}
        self._next_sweep = 0.0

    def fold(self, entry: LogEvent) -> Folded:
        """Apply one log entry; entries must come in log order."""
        self.seq = max(self.seq, entry.seq)
        if entry.edge_id:
            source = source_of(entry.edge_id, entry.data)
            seen = self._edge_seen.get(source, 0.0)
            self._edge_seen[source] = max(seen, entry.ts)
        if entry.type in INTERNAL_TYPES or entry.audience is Audience.EDGES:
            folded = self._fold_internal(entry)
        else:
            handler = _HANDLERS.get(entry.type)
            # Types this edge does not know (written by a newer origin) are
            # passed on as they are, to the audience the writer chose.
            folded = handler(self, entry, entry.data) if handler else Folded(entry)
        if entry.ts >= self._next_sweep:
            self._next_sweep = entry.ts + _SWEEP_EVERY_S
            dropped = self._sweep(entry.ts)
            if dropped:
                folded.presence_changed = True
                folded.dropped = dropped
        return folded

    @property
    def end_due(self) -> bool:
        """The teacher ended the class and every poll and question open
        then is final: time for ``class.ended``."""
        return (
            self.ending
            and not self.ended
            and self.polls.open is None
            and self.quizzes.open is None
            and not self.polls.closing
            and not self.quizzes.closing
        )

    def last_seen(self, source: str) -> float:
        """The time on the latest entry of ``source`` folded (0 if none)."""
        return self._edge_seen.get(source, 0.0)

    def _sweep(self, now: float) -> tuple[str, ...]:
        """Drop the members of sources silent since ``now - EDGE_TIMEOUT_S``.

        ``now`` is the time on the entry being folded, not a clock, so every
        edge drops the same members at the same entry.
        """
        dropped = []
        for source in self.presence.sources:
            if self._edge_seen.get(source, 0.0) < now - EDGE_TIMEOUT_S:
                if self.presence.drop_source(source):
                    dropped.append(source)
        return tuple(dropped)

    def _fold_internal(self, entry: LogEvent) -> Folded:
        if entry.type == "poll.votes":
            changed = self.polls.fold_votes(entry.data, entry.edge_id)
            return Folded(None, tally_changed=changed)
        if entry.type in ("poll.flushed", "poll.finalize"):
            poll_id = str(entry.data.get("poll_id"))
            if entry.type == "poll.flushed":
                result = self.polls.fold_flushed(poll_id, entry.edge_id, entry.data)
            else:
                result = self.polls.fold_finalize(poll_id)
            return Folded(closed_entry(entry, result) if result else None)
        if entry.type in ("quiz.flushed", "quiz.finalize"):
            quiz_id = str(entry.data.get("quiz_id"))
            if entry.type == "quiz.flushed":
                quiz = self.quizzes.fold_flushed(quiz_id, entry.edge_id, entry.data)
            else:
                quiz = self.quizzes.fold_finalize(quiz_id)
            if quiz is None:
                return Folded(None)
            deliver = closed_entry(entry, quiz_data(quiz), "quiz.closed")
            return Folded(deliver, quiz_result=quiz)
        if entry.type == "class.ending":
            self.ending = True
        elif entry.type == "quiz.answers":
            self.quizzes.fold_answers(entry.data, entry.edge_id)
        elif entry.type == "presence.edge":
            # A reset: the edge (re)opened this class, so members it counted
            # before a restart are gone, and no member.left will come for
            # them. A roster, if any, is who it holds now (it was dropped
            # while alive); a long one continues in entries without a reset.
            source = source_of(entry.edge_id, entry.data)
            changed = bool(entry.data.get("reset")) and self.presence.drop_source(
                source
            )
            for _, who in roster_items(entry):
                if who["user_id"] not in self.removed:
                    self.presence.joined(source, **who)
                    changed = True
            return Folded(None, presence_changed=changed)
        return Folded(None)

    # --- one method per member-visible type ------------------------------

    def _chat_message(self, entry: LogEvent, data: dict[str, Any]) -> Folded:
        if not self.chat.fold_message(entry):
            return Folded(None)
        return Folded(entry)

    def _chat_deleted(self, entry: LogEvent, data: dict[str, Any]) -> Folded:
        seq = data.get("seq")
        if isinstance(seq, int):
            self.chat.fold_deleted(seq)
        return Folded(entry)

    def _chat_muted(self, entry: LogEvent, data: dict[str, Any]) -> Folded:
        self.chat.fold_muted(str(data.get("user_id")), bool(data.get("muted", True)))
        return Folded(entry)

    def _chat_settings(self, entry: LogEvent, data: dict[str, Any]) -> Folded:
        full = self.chat.fold_settings(data)
        return Folded(entry.model_copy(update={"data": full}))

    def _member_joined(self, entry: LogEvent, data: dict[str, Any]) -> Folded:
        user_id = str(data.get("user_id"))
        if user_id in self.removed:
            # The edge admitted it before folding the removal; its socket is
            # being closed, so it never counts.
            return Folded(None)
        self.presence.joined(
            source_of(entry.edge_id, data),
            user_id,
            str(data.get("name", "")),
            str(data.get("role")),
        )
        return Folded(entry, presence_changed=True)

    def _member_left(self, entry: LogEvent, data: dict[str, Any]) -> Folded:
        before = self.presence.count
        self.presence.left(source_of(entry.edge_id, data), str(data.get("user_id")))
        return Folded(entry, presence_changed=before != self.presence.count)

    def _presence_changes(self, entry: LogEvent, data: dict[str, Any]) -> Folded:
        # One edge's joins and leaves of one tick, folded in their order;
        # staff get those that took effect, as the entries they stand for.
        kept = []
        changed = False
        for _, type_, change in presence_items(entry):
            if type_ == "member.joined":
                folded = self._member_joined(entry, change)
                item = ["+", change["user_id"], change["name"], change["role"]]
            else:
                folded = self._member_left(entry, change)
                item = ["-", change["user_id"], "", ""]
            changed |= folded.presence_changed
            if folded.deliver is not None:
                kept.append(item)
        if not kept:
            return Folded(None, presence_changed=changed)
        deliver = entry.model_copy(update={"data": {"changes": kept}})
        return Folded(deliver, presence_changed=changed)

    def _member_removed(self, entry: LogEvent, data: dict[str, Any]) -> Folded:
        user_id = str(data.get("user_id"))
        self.removed.add(user_id)
        self.hands.lower(user_id)
        return Folded(entry, removed=user_id)

    def _hand_raised(self, entry: LogEvent, data: dict[str, Any]) -> Folded:
        ok = self.hands.raise_hand(str(data.get("user_id")), str(data.get("name")))
        return Folded(entry if ok else None)

    def _hand_lowered(self, entry: LogEvent, data: dict[str, Any]) -> Folded:
        ok = self.hands.lower(str(data.get("user_id")))
        return Folded(entry if ok else None)

    def _hand_called(self, entry: LogEvent, data: dict[str, Any]) -> Folded:
        # Two staff members may call "next" at once on two edges; both name
        # the same member and only the first call counts.
        ok = self.hands.lower(str(data.get("user_id")))
        return Folded(entry if ok else None)

    def _poll_opened(self, entry: LogEvent, data: dict[str, Any]) -> Folded:
        ok = self.polls.fold_opened(data, entry.edge_id)
        return Folded(entry if ok else None)

    def _poll_closed(self, entry: LogEvent, data: dict[str, Any]) -> Folded:
        # Members get the results once the poll is final: now, or at the
        # entry that makes it so (see liveclass.origin.results.polls).
        poll_id = str(data.get("poll_id"))
        expected = data.get("expected")
        result = self.polls.fold_closed(
            poll_id, entry.ts, expected if isinstance(expected, list) else None
        )
        if result is not None:
            return Folded(entry.model_copy(update={"data": result}))
        if poll_id in self.polls.closing:
            return Folded(None, closing=("poll", poll_id))
        return Folded(None)

    def _quiz_asked(self, entry: LogEvent, data: dict[str, Any]) -> Folded:
        if not self.quizzes.fold_asked(data, entry.ts, entry.edge_id):
            return Folded(None)
        q = self.quizzes.open
        assert q is not None
        public = q.public() | {"correct": q.correct, "duration_s": q.duration_s}
        return Folded(entry.model_copy(update={"data": public}))

    def _quiz_closed(self, entry: LogEvent, data: dict[str, Any]) -> Folded:
        quiz_id = str(data.get("quiz_id"))
        expected = data.get("expected")
        result = self.quizzes.fold_closed(
            quiz_id, entry.ts, expected if isinstance(expected, list) else None
        )
        if result is not None:
            filled = entry.model_copy(update={"data": quiz_data(result)})
            return Folded(filled, quiz_result=result)
        if quiz_id in self.quizzes.closing:
            return Folded(None, closing=("quiz", quiz_id))
        return Folded(None)

    def _media_live(self, entry: LogEvent, data: dict[str, Any]) -> Folded:
        self.media = dict(data)
        return Folded(entry)

    def _recording_ready(self, entry: LogEvent, data: dict[str, Any]) -> Folded:
        self.recording = dict(data)
        return Folded(entry)

    def _class_ended(self, entry: LogEvent, data: dict[str, Any]) -> Folded:
        if self.ended:
            return Folded(None)
        self.ended = True
        return Folded(entry, ended=True)

    # --- views -----------------------------------------------------------

    def snapshot(self, member: Member) -> dict[str, Any]:
        """The class as ``member`` may see it now, for a welcome or a reset."""
        staff = member.role.is_staff
        poll = self.polls.open
        quiz = self.quizzes.open
        # The field names are those the SDK's Snapshot model reads.
        snap: dict[str, Any] = {
            "seq": self.seq,
            "chat": list(self.chat.recent),
            "chat_enabled": self.chat.enabled,
            "slow_mode_s": self.chat.slow_mode_s,
            "muted": member.user_id in self.chat.muted,
            "hands": self.hands.snapshot(),
            "poll": None,
            "quiz": None,
            "score_total": self.quizzes.totals.get(member.user_id, 0),
            "leaderboard": self.quizzes.leaderboard(),
            "media": self.media,
            "recording": self.recording,
            "presence_count": self.presence.count,
            "ended": self.ended,
        }
        if poll is not None:
            snap["poll"] = poll.public() | {"my_vote": poll.votes.get(member.user_id)}
            if staff:
                snap["poll"]["counts"] = poll.counts()
        if quiz is not None:
            answer = quiz.answers.get(member.user_id)
            snap["quiz"] = quiz.public() | {"my_answer": answer[0] if answer else None}
            if staff:
                snap["quiz"]["correct"] = quiz.correct
        if staff:
            snap["muted_users"] = sorted(self.chat.muted)
        return snap

    def tally(self) -> dict[str, Any] | None:
        """The open poll's live counts (a staff view), or None."""
        poll = self.polls.open
        if poll is None:
            return None
        return {"poll_id": poll.poll_id, "counts": poll.counts()}


_HANDLERS = {
    "chat.message": ClassState._chat_message,
    "chat.deleted": ClassState._chat_deleted,
    "chat.muted": ClassState._chat_muted,
    "chat.settings": ClassState._chat_settings,
    "member.joined": ClassState._member_joined,
    "member.left": ClassState._member_left,
    PRESENCE_CHANGES: ClassState._presence_changes,
    "member.removed": ClassState._member_removed,
    "hand.raised": ClassState._hand_raised,
    "hand.lowered": ClassState._hand_lowered,
    "hand.called": ClassState._hand_called,
    "poll.opened": ClassState._poll_opened,
    "poll.closed": ClassState._poll_closed,
    "quiz.asked": ClassState._quiz_asked,
    "quiz.closed": ClassState._quiz_closed,
    "media.live": ClassState._media_live,
    "recording.ready": ClassState._recording_ready,
    "class.ended": ClassState._class_ended,
}
