"""Typed events, parsed from the protocol's generic :class:`Event`.

``room.events()`` yields these. Each class names one event type of
:data:`liveclass.sdk.protocol.EVENT_TYPES`; a type this SDK does not know yet
arrives as :class:`UnknownEvent`, so a newer edge never breaks an older app.
Fields an edge adds beyond those listed here are ignored.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from liveclass.sdk.protocol import ErrorCode, Event, Member, Role

logger = logging.getLogger(__name__)


class ClassEvent(BaseModel):
    """Base of every typed event.

    ``seq`` is the class-log number (``None`` for views such as counts and
    errors); ``actor`` is the user id of who caused it, when known.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    TYPE: ClassVar[str] = ""
    RENAMES: ClassVar[dict[str, str]] = {}
    """Data fields whose names clash with the base fields, and their new names."""

    seq: int | None = None
    ts: float = 0.0
    actor: str | None = None

    @property
    def type(self) -> str:
        """The protocol event type."""
        return self.TYPE


class UnknownEvent(ClassEvent):
    """An event type this SDK does not know, or one whose fields were invalid."""

    event_type: str
    data: dict[str, Any] = Field(default_factory=dict)

    @property
    def type(self) -> str:
        """The protocol event type, as sent."""
        return self.event_type


# --- snapshots -----------------------------------------------------------


class HandEntry(BaseModel):
    """One member in the hand queue."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    user_id: str
    name: str = ""


class Snapshot(BaseModel):
    """The class state an edge sends in ``welcome`` and ``state.reset``.

    Every field is optional so that a snapshot missing a part still parses;
    unknown fields are kept in ``model_extra``.
    """

    model_config = ConfigDict(frozen=True, extra="allow")

    chat: list[dict[str, Any]] = Field(default_factory=list)
    """Recent ``chat.message`` events, oldest first, as protocol events."""
    chat_enabled: bool = True
    slow_mode_s: float = 0.0
    muted: bool = False
    """Whether this member's chat is muted."""
    hands: list[HandEntry] = Field(default_factory=list)
    poll: dict[str, Any] | None = None
    """The open poll's ``poll.opened`` data, if any."""
    quiz: dict[str, Any] | None = None
    """The open question's ``quiz.asked`` data, if any."""
    presence_count: int = 0
    media: dict[str, Any] | None = None
    """The ``media.live`` data, if the teacher is live."""
    ended: bool = False


class Welcome(ClassEvent):
    """The first event on every connection: who you are and the class state."""

    TYPE = "welcome"

    snapshot: Snapshot = Field(default_factory=Snapshot)
    member: Member
    edge_id: str = ""


class StateReset(ClassEvent):
    """The edge could not replay what was missed; ``snapshot`` replaces state.

    Chat messages and hands between the last seen event and the snapshot
    are not replayed; apps that list them should redraw from ``room.state``.
    """

    TYPE = "state.reset"

    snapshot: Snapshot = Field(default_factory=Snapshot)


# --- chat and members ----------------------------------------------------


class ChatMessage(ClassEvent):
    """A chat message; ``actor`` is the sender's user id.

    ``provisional`` messages have no ``seq`` yet: the class log did not
    answer, and the edge showed its own members their chat at once. Each
    comes once; when the log numbers it, ``room.events()`` yields a
    :class:`ChatConfirmed` with the same ``provisional_id`` instead of the
    message again. Members on other edges get it only then, as a plain
    numbered message.
    """

    TYPE = "chat.message"

    text: str
    name: str = ""
    role: Role = Role.STUDENT
    provisional: bool = False
    provisional_id: str | None = None
    """Set on a provisional message, and on the numbered one it became when
    the same edge delivers it."""
    ref: str | None = None
    """What :meth:`~liveclass.sdk.client.Classroom.send_chat` returned to
    the sender, when the sender gave one."""


class ChatConfirmed(ClassEvent):
    """The class log numbered a message received as provisional before.

    ``seq`` is its number; ``message`` is the numbered message, which
    replaces the provisional one (same ``provisional_id``) in
    ``room.state.chat``. Made by the SDK: no edge sends this type.
    """

    TYPE = "chat.confirmed"

    provisional_id: str
    message: ChatMessage


class ChatDeleted(ClassEvent):
    """Staff deleted the chat message numbered ``message_seq``."""

    TYPE = "chat.deleted"
    RENAMES = {"seq": "message_seq"}

    message_seq: int


class ChatMuted(ClassEvent):
    """A member's chat was muted or unmuted."""

    TYPE = "chat.muted"

    user_id: str
    muted: bool


class ChatSettings(ClassEvent):
    """Chat was turned on or off, or slow mode changed."""

    TYPE = "chat.settings"

    enabled: bool = True
    slow_mode_s: float = 0.0


class MemberJoined(ClassEvent):
    """A member joined (staff only)."""

    TYPE = "member.joined"

    user_id: str
    name: str = ""
    role: Role = Role.STUDENT


class MemberLeft(ClassEvent):
    """A member left (staff only)."""

    TYPE = "member.left"

    user_id: str


class MemberRemoved(ClassEvent):
    """Staff removed a member."""

    TYPE = "member.removed"

    user_id: str


class PresenceCount(ClassEvent):
    """How many members are here now."""

    TYPE = "presence.count"

    count: int


class PresenceList(ClassEvent):
    """Who is here (staff only, after ``request_presence_list``)."""

    TYPE = "presence.list"

    members: list[Member] = Field(default_factory=list)


# --- hands ---------------------------------------------------------------


class HandRaised(ClassEvent):
    """A member raised a hand; it joins the end of the queue."""

    TYPE = "hand.raised"

    user_id: str
    name: str = ""


class HandLowered(ClassEvent):
    """A hand was lowered."""

    TYPE = "hand.lowered"

    user_id: str


class HandCalled(ClassEvent):
    """Staff called on a member; the hand leaves the queue."""

    TYPE = "hand.called"

    user_id: str
    name: str = ""


# --- polls and quizzes ---------------------------------------------------


class PollOpened(ClassEvent):
    """A poll opened; vote with ``room.vote(poll_id, option)``."""

    TYPE = "poll.opened"

    poll_id: str
    question: str
    options: list[str]
    closes_at: float | None = None


class PollTally(ClassEvent):
    """Live vote counts per option (staff only)."""

    TYPE = "poll.tally"

    poll_id: str
    counts: list[int]


class PollClosed(ClassEvent):
    """A poll closed with its final counts."""

    TYPE = "poll.closed"

    poll_id: str
    counts: list[int]
    votes: int = 0


class QuizAsked(ClassEvent):
    """A timed question; answer with ``room.answer_quiz(quiz_id, option)``."""

    TYPE = "quiz.asked"

    quiz_id: str
    question: str
    options: list[str]
    closes_at: float | None = None


class LeaderboardEntry(BaseModel):
    """One line of a quiz leaderboard."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    user_id: str
    name: str = ""
    score: float = 0


class QuizClosed(ClassEvent):
    """A question closed: the correct option and the leaderboard."""

    TYPE = "quiz.closed"

    quiz_id: str
    correct: int
    leaderboard: list[LeaderboardEntry] = Field(default_factory=list)


class QuizScore(ClassEvent):
    """This member's own result for a question."""

    TYPE = "quiz.score"

    quiz_id: str
    correct: bool
    points: float = 0
    total: float = 0


# --- media and the class -------------------------------------------------


class MediaLive(ClassEvent):
    """The teacher's stream is live: HLS master playlist and WHEP endpoint."""

    TYPE = "media.live"

    master_url: str
    renditions: list[Any] = Field(default_factory=list)
    whep_url: str | None = None


class RecordingReady(ClassEvent):
    """The recording can be played."""

    TYPE = "recording.ready"

    playlist_url: str
    duration_s: float = 0.0


class ClassEndedEvent(ClassEvent):
    """The class is over; ``room.events()`` ends after this event."""

    TYPE = "class.ended"


class ErrorEvent(ClassEvent):
    """The edge refused one message; ``ref`` is what the send method returned."""

    TYPE = "error"

    code: ErrorCode | str
    message: str = ""
    ref: str | None = None


EVENT_CLASSES: dict[str, type[ClassEvent]] = {
    cls.TYPE: cls
    for cls in (
        Welcome,
        StateReset,
        ChatMessage,
        ChatDeleted,
        ChatMuted,
        ChatSettings,
        MemberJoined,
        MemberLeft,
        MemberRemoved,
        PresenceCount,
        PresenceList,
        HandRaised,
        HandLowered,
        HandCalled,
        PollOpened,
        PollTally,
        PollClosed,
        QuizAsked,
        QuizClosed,
        QuizScore,
        MediaLive,
        RecordingReady,
        ClassEndedEvent,
        ErrorEvent,
    )
}
"""The typed class for each protocol event type."""


def parse_event(event: Event) -> ClassEvent:
    """The typed form of a protocol event; never raises.

    An unknown type, or a known one with invalid fields (logged at WARNING),
    gives :class:`UnknownEvent`.
    """
    base = {"seq": event.seq, "ts": event.ts, "actor": event.actor}
    cls = EVENT_CLASSES.get(event.type)
    if cls is None:
        return UnknownEvent(
            seq=event.seq,
            ts=event.ts,
            actor=event.actor,
            event_type=event.type,
            data=event.data,
        )
    fields = {cls.RENAMES.get(key, key): value for key, value in event.data.items()}
    # The envelope wins over data fields of the same name.
    fields.update(base)
    try:
        return cls.model_validate(fields)
    except ValidationError as exc:
        logger.warning(
            "event %s seq=%s has invalid fields: %s",
            event.type,
            event.seq,
            exc.errors(include_url=False, include_input=False),
        )
        return UnknownEvent(
            seq=event.seq,
            ts=event.ts,
            actor=event.actor,
            event_type=event.type,
            data=event.data,
        )
