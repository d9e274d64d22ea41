"""The wire protocol between a client and an edge: the SDK's public contract.

A client opens a WebSocket to an edge at ``/v1/ws`` with query parameters
``token`` (its join token), ``v`` (:data:`PROTOCOL_VERSION`) and optionally
``last_seq`` (the last class-log sequence number it saw, to resume).

Client to edge: one JSON object per text message, a :data:`ClientMessage`.
Every message may carry ``ref``, a client-chosen string echoed back in the
:class:`ErrorEvent` that refuses it.

Edge to client: one JSON object per text message, a :class:`Frame`. A frame
covers the class-log range ``(seq_from, seq_to]``: it holds every event of
that range the member may see, in log order, plus any derived views
(counts, tallies, own scores) computed at ``seq_to``. Events the member may
not see (another member's private score, the edges' internal vote batches)
are left out, but their numbers are still covered, so a client can tell a
filtered event from a lost one: the next frame's ``seq_from`` must equal the
previous frame's ``seq_to``. Frames that carry no log range (errors) have
``seq_from == seq_to == None``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

PROTOCOL_VERSION = 1
"""The version a client states when it connects; the edge refuses others."""

MAX_FRAME_BYTES = 16 * 1024
"""The largest client message an edge accepts; larger ones close the socket."""

MAX_REF_CHARS = 64
"""The longest ``ref`` a client may give a message."""

MAX_CHAT_CHARS = 500
"""The longest chat message, in characters."""


class Role(StrEnum):
    """A member's role in a class."""

    TEACHER = "teacher"
    TA = "ta"
    STUDENT = "student"

    @property
    def is_staff(self) -> bool:
        """Whether the role moderates the class (teacher or TA)."""
        # A set of the values: looking up Role.TEACHER goes through the
        # enum's class attributes, several times slower, on every join.
        return self in _STAFF_ROLES


_STAFF_ROLES = frozenset({"teacher", "ta"})


class CloseCode:
    """WebSocket close codes the edge uses (RFC 6455 section 7.4)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    TRY_AGAIN_LATER = 1013
    # Private-use range (4000-4999), specific to liveclass.
    BAD_TOKEN = 4001
    TOKEN_EXPIRED = 4002
    WRONG_CLASS = 4003
    REMOVED = 4004
    VERSION_UNSUPPORTED = 4005
    CLASS_FULL = 4006
    EDGE_FULL = 4007
    CLASS_ENDED = 4008
    TOO_SLOW = 4009
    # The edge is being taken down on purpose: it refuses new members and
    # closes its own with this code; resume on another edge with last_seq.
    DRAINING = 4010


class ErrorCode(StrEnum):
    """Why the edge refused one client message; the socket stays open."""

    MALFORMED = "malformed"
    UNKNOWN_TYPE = "unknown_type"
    INVALID = "invalid"
    FORBIDDEN = "forbidden"
    RATE_LIMITED = "rate_limited"
    SLOW_MODE = "slow_mode"
    MUTED = "muted"
    CHAT_OFF = "chat_off"
    TOO_LONG = "too_long"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    UNAVAILABLE = "unavailable"
    """The edge cannot take the message now: its class log has not answered
    for a while and it holds all it may. Nothing was sent; try again later."""


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    ref: str | None = Field(default=None, max_length=MAX_REF_CHARS)


# --- client to edge -------------------------------------------------------


class ChatSend(_Message):
    """Send a chat message to the whole class."""

    type: Literal["chat.send"] = "chat.send"
    text: str = Field(min_length=1)


class ChatDelete(_Message):
    """Staff: delete the chat message with class-log number ``seq``."""

    type: Literal["chat.delete"] = "chat.delete"
    seq: int = Field(ge=1)


class ChatMute(_Message):
    """Staff: mute or unmute a member's chat."""

    type: Literal["chat.mute"] = "chat.mute"
    user_id: str
    muted: bool = True


class ChatSlowMode(_Message):
    """Staff: at most one message per member every ``seconds`` (0: off)."""

    type: Literal["chat.slow_mode"] = "chat.slow_mode"
    seconds: float = Field(ge=0, le=3600)


class ChatEnable(_Message):
    """Staff: turn chat on or off for students."""

    type: Literal["chat.enable"] = "chat.enable"
    enabled: bool


class MemberRemove(_Message):
    """Staff: remove a member; its token is refused for this class after."""

    type: Literal["member.remove"] = "member.remove"
    user_id: str


class HandRaise(_Message):
    """Raise one's hand; it joins the queue in order of raising."""

    type: Literal["hand.raise"] = "hand.raise"


class HandLower(_Message):
    """Lower one's own hand, or (staff) another member's."""

    type: Literal["hand.lower"] = "hand.lower"
    user_id: str | None = None


class HandCallNext(_Message):
    """Teacher or TA: call on the first member of the hand queue."""

    type: Literal["hand.call_next"] = "hand.call_next"


class PollOpen(_Message):
    """Teacher or TA: open a poll; it closes after ``duration_s`` if given."""

    type: Literal["poll.open"] = "poll.open"
    question: str = Field(min_length=1, max_length=500)
    options: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        min_length=2, max_length=10
    )
    duration_s: float | None = Field(default=None, gt=0, le=3600)


class PollVote(_Message):
    """Vote in the open poll; a later vote replaces an earlier one."""

    type: Literal["poll.vote"] = "poll.vote"
    poll_id: str
    option: int = Field(ge=0)


class PollClose(_Message):
    """Teacher or TA: close the poll and publish its results."""

    type: Literal["poll.close"] = "poll.close"
    poll_id: str


class QuizAsk(_Message):
    """Teacher or TA: ask a timed question with one correct option."""

    type: Literal["quiz.ask"] = "quiz.ask"
    question: str = Field(min_length=1, max_length=500)
    options: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        min_length=2, max_length=10
    )
    correct: int = Field(ge=0)
    duration_s: float = Field(default=20.0, gt=0, le=600)


class QuizAnswer(_Message):
    """Answer the open quiz question; only the first answer counts."""

    type: Literal["quiz.answer"] = "quiz.answer"
    quiz_id: str
    option: int = Field(ge=0)


class QuizClose(_Message):
    """Teacher or TA: close the question and publish the leaderboard."""

    type: Literal["quiz.close"] = "quiz.close"
    quiz_id: str


class PresenceList(_Message):
    """Teacher or TA: ask for the list of who is here."""

    type: Literal["presence.list"] = "presence.list"


class ClassEnd(_Message):
    """Teacher: end the class for everyone."""

    type: Literal["class.end"] = "class.end"


ClientMessage = Annotated[
    ChatSend
    | ChatDelete
    | ChatMute
    | ChatSlowMode
    | ChatEnable
    | MemberRemove
    | HandRaise
    | HandLower
    | HandCallNext
    | PollOpen
    | PollVote
    | PollClose
    | QuizAsk
    | QuizAnswer
    | QuizClose
    | PresenceList
    | ClassEnd,
    Field(discriminator="type"),
]
"""Any message a client may send."""

CLIENT_MESSAGE = TypeAdapter(ClientMessage)
"""Validates one client message: ``CLIENT_MESSAGE.validate_json(raw)``."""

STAFF_ONLY: frozenset[str] = frozenset(
    {
        "chat.delete",
        "chat.mute",
        "chat.slow_mode",
        "chat.enable",
        "member.remove",
        "hand.call_next",
        "poll.open",
        "poll.close",
        "quiz.ask",
        "quiz.close",
        "presence.list",
    }
)
"""Message types only the teacher and TAs may send."""

TEACHER_ONLY: frozenset[str] = frozenset({"class.end"})
"""Message types only the teacher may send."""


def allowed(role: Role, message_type: str) -> bool:
    """Whether a member with ``role`` may send a message of this type."""
    if message_type in TEACHER_ONLY:
        return role is Role.TEACHER
    if message_type in STAFF_ONLY:
        return role.is_staff
    return True


# --- edge to client -------------------------------------------------------


class Event(BaseModel):
    """One event a member sees: a class-log entry or a derived view.

    ``seq`` is the class-log number for log entries and ``None`` for views
    (presence counts, live tallies, own scores) and errors. ``data`` holds the
    event's fields; the event types and their fields are listed in
    :data:`EVENT_TYPES`.
    """

    model_config = ConfigDict(extra="forbid")

    type: str
    seq: int | None = None
    ts: float = 0.0
    actor: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)


class Frame(BaseModel):
    """What the edge sends in one WebSocket message; see the module doc."""

    model_config = ConfigDict(extra="forbid")

    seq_from: int | None = None
    seq_to: int | None = None
    events: list[Event] = Field(default_factory=list)


EVENT_TYPES: dict[str, str] = {
    "welcome": "first frame: data.snapshot (class state), data.member, "
    "data.edge_id; seq_to is the log position the snapshot reflects",
    "state.reset": "the resume number is older than the log keeps; "
    "data.snapshot replaces the client's state",
    "chat.message": "data.text, data.name, data.role, data.ref (the "
    "sender's ref, if it gave one) (log entry); while the "
    "class log does not answer, the sender's edge shows its members their "
    "chat at once as a view (seq null) with data.provisional true and "
    "data.provisional_id, and the log entry it becomes carries the same "
    "data.provisional_id on that edge",
    "chat.deleted": "data.seq of the deleted message (log entry)",
    "chat.muted": "data.user_id, data.muted (log entry, staff and the member)",
    "chat.settings": "data.enabled, data.slow_mode_s (log entry)",
    "member.joined": "data.user_id, data.name, data.role (log entry, staff)",
    "member.left": "data.user_id (log entry, staff)",
    "member.removed": "data.user_id (log entry)",
    "presence.count": "data.count: members here now (view)",
    "presence.list": "data.members: [{user_id, name, role}] (view, staff)",
    "hand.raised": "data.user_id, data.name (log entry)",
    "hand.lowered": "data.user_id (log entry)",
    "hand.called": "data.user_id, data.name (log entry)",
    "poll.opened": "data.poll_id, question, options, closes_at (log entry)",
    "poll.tally": "data.poll_id, data.counts (view, staff)",
    "poll.closed": "data.poll_id, data.counts, data.votes (log entry)",
    "quiz.asked": "data.quiz_id, question, options, closes_at (log entry)",
    "quiz.closed": "data.quiz_id, correct, leaderboard [{user_id, name, "
    "score}] (log entry)",
    "quiz.score": "data.quiz_id, correct, points, total (view, own)",
    "media.live": "data.master_url, renditions, whep_url (log entry)",
    "recording.ready": "data.playlist_url, data.duration_s (log entry)",
    "class.ended": "the class is over (log entry)",
    "error": "data.code (ErrorCode), data.message, data.ref (view)",
}
"""Every event type an edge sends, with its fields."""


class Member(BaseModel):
    """Who a member is, as its join token says."""

    model_config = ConfigDict(frozen=True)

    user_id: str
    name: str
    role: Role
