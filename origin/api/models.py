"""Request and response bodies of the admin API.

These models are the API's contract: handlers validate with them and the
OpenAPI document is generated from them. Times are seconds since the Unix
epoch, like the class log's ``ts``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from liveclass.origin.contract import EdgeLocation
from liveclass.sdk.protocol import Role

CLASS_ID_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
"""Class ids stay in a safe alphabet: they appear in URLs and in Redis keys
as hash tags, where a brace would split the tag."""

MAX_BULK_TOKENS = 20_000
"""The most tokens one bulk request mints."""

MAX_TTL_S = 7 * 24 * 3600


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClassStatus(StrEnum):
    """Where a class is in its life: created, then live, then ended."""

    CREATED = "created"
    LIVE = "live"
    ENDED = "ended"


class ClassCreate(_Request):
    """Create a class; the origin picks an id when none is given."""

    title: str = Field(min_length=1, max_length=200)
    max_members: int = Field(default=50_000, ge=1, le=1_000_000)
    class_id: str | None = Field(default=None, pattern=CLASS_ID_PATTERN)


class ClassInfo(BaseModel):
    """A class as the origin knows it."""

    id: str
    title: str
    status: ClassStatus
    max_members: int
    created_at: float
    started_at: float | None = None
    ended_at: float | None = None


class ClassList(BaseModel):
    """Every class, newest first."""

    classes: list[ClassInfo]


class TokenRequest(_Request):
    """Mint one join token."""

    user_id: str = Field(min_length=1, max_length=128)
    name: str = Field(min_length=1, max_length=200)
    role: Role = Role.STUDENT
    ttl_s: float = Field(default=4 * 3600, gt=0, le=MAX_TTL_S)


class TokenIssued(BaseModel):
    """One join token and when it expires."""

    token: str
    expires_at: float


class BulkTokenRequest(_Request):
    """Mint one join token per member, all with the same lifetime by default."""

    members: list[TokenRequest] = Field(min_length=1, max_length=MAX_BULK_TOKENS)


class BulkToken(BaseModel):
    """One member's token in a bulk answer."""

    user_id: str
    token: str
    expires_at: float


class BulkTokenIssued(BaseModel):
    """The tokens of a bulk request, in the order of the request."""

    tokens: list[BulkToken]


class PublicKey(BaseModel):
    """One public key that verifies join tokens."""

    kid: str
    alg: str
    pem: str


class PublicKeys(BaseModel):
    """The document edges fetch to verify join tokens."""

    keys: list[PublicKey]


class EdgeInfo(BaseModel):
    """An edge in the registry, with its last heartbeat."""

    edge_id: str
    public_url: str
    location: EdgeLocation
    capacity: int
    members: int
    classes: dict[str, int]
    cpu: float
    draining: bool = Field(
        description="the edge says it drains: it refuses new members and "
        "moves its own to other edges"
    )
    drain_requested: bool = Field(
        default=False,
        description="an admin asked the edge to drain; the answer to its "
        "next heartbeat tells it so",
    )
    load: float = Field(description="members / capacity")
    seconds_since_heartbeat: float
    healthy: bool = Field(description="offered by routing")


class EdgeList(BaseModel):
    """Every registered edge."""

    edges: list[EdgeInfo]


class AttendanceRow(BaseModel):
    """One join session of one member."""

    user_id: str
    name: str
    role: Role
    joined_at: float
    left_at: float | None = None


class ChatRow(BaseModel):
    """One chat message."""

    seq: int
    user_id: str | None
    name: str
    text: str
    ts: float
    deleted: bool


class PollRow(BaseModel):
    """One poll and, once closed, its result."""

    poll_id: str
    question: str
    options: list[str]
    counts: list[int] | None = None
    votes: int | None = None
    opened_at: float
    closed_at: float | None = None


class QuizRow(BaseModel):
    """One quiz question and its leaderboard."""

    quiz_id: str
    question: str
    correct: int | None = None
    leaderboard: list[dict[str, Any]] = Field(default_factory=list)


class RecordingInfo(BaseModel):
    """Where a class's recording is."""

    playlist_url: str
    duration_s: float


class ClassReport(BaseModel):
    """Everything the origin persisted about a class."""

    model_config = ConfigDict(populate_by_name=True)

    class_: ClassInfo = Field(alias="class")
    attendance: list[AttendanceRow]
    chat: list[ChatRow]
    polls: list[PollRow]
    quizzes: list[QuizRow]
    recording: RecordingInfo | None = None


class Problem(BaseModel):
    """What went wrong."""

    code: str
    message: str


class ErrorBody(BaseModel):
    """Every 4xx and 5xx answer."""

    error: Problem
