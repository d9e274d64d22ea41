"""The contract between edges and the origin.

Edges import these models; the origin produces and consumes them. They cover
join-token claims, class-log entries, edge registry records and routing
answers. Every record crossing the boundary is validated with these models.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import secrets
import time
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from liveclass.sdk.protocol import Role

TOKEN_ISSUER = "liveclass-origin"
"""The ``iss`` claim of every join token."""

TOKEN_ALGORITHM = "RS256"
"""Join tokens are RSA-2048 signatures: the fastest of the asymmetric
schemes to verify, which is what bounds how fast an edge admits members."""


class TokenClaims(BaseModel):
    """What a join token says about its holder."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    sub: str = Field(description="user id")
    cls: str = Field(description="class id")
    name: str
    role: Role
    exp: int
    iat: int
    jti: str
    max: int | None = Field(
        default=None, ge=1, description="the class's size limit, for edges"
    )


class Audience(StrEnum):
    """Who may see a class-log entry."""

    ALL = "all"
    STAFF = "staff"
    USER = "user"
    """Staff and the one member named by the entry's ``user`` field."""
    EDGES = "edges"
    """Internal: read by edges and the origin, never sent to members."""


class _EventIds:
    """Unique entry ids without a system call each: a random 64-bit prefix
    per process (drawn again in a forked child) and a counter."""

    def __init__(self) -> None:
        self.reseed()
        os.register_at_fork(after_in_child=self.reseed)

    def reseed(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._counter = itertools.count()

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"


new_event_id = _EventIds()
"""A fresh :attr:`LogEvent.id`: 32 hex digits, unique across processes."""


def sent_event_id(class_id: str, user_id: str, ref: str, text: str) -> str:
    """The :attr:`LogEvent.id` of the message ``text`` that member
    ``user_id`` sent with ``ref``.

    The SDK sends a message again, with the same ref, when the edge that took
    it may have died before it reached the log. Both copies get this id, so
    edges fold the second as a duplicate and the origin stores it once. The
    text is part of it: a client that reuses a ref for another message
    loses nothing.
    """
    key = f"{class_id}\0{user_id}\0{ref}\0{text}".encode()
    return "r" + hashlib.blake2b(key, digest_size=15).hexdigest()


class LogEvent(BaseModel):
    """One entry of a class log.

    ``seq`` is assigned by the log on append (1, 2, 3...); ``id`` is chosen by
    the writer and makes storing idempotent. ``type`` is an event type of the
    wire protocol, or an internal one (see :data:`INTERNAL_TYPES`).
    """

    model_config = ConfigDict(extra="forbid")

    seq: int = 0
    id: str = Field(default_factory=new_event_id)
    type: str
    ts: float = Field(default_factory=time.time)
    edge_id: str = ""
    actor: str | None = None
    audience: Audience = Audience.ALL
    user: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)


INTERNAL_TYPES: dict[str, str] = {
    "poll.votes": "data.poll_id, data.votes: [[user_id, option, ts]] "
    "(one edge's votes of one tick)",
    "poll.flushed": "data.poll_id: the sending edge appended every vote it "
    "held for the closing poll before this entry",
    "poll.finalize": "data.poll_id: the closing poll is final here, whatever "
    "edge has not flushed (written after a grace, the first one counts)",
    "quiz.flushed": "data.quiz_id: as poll.flushed, for answers",
    "quiz.finalize": "data.quiz_id: as poll.finalize, for a question",
    "quiz.answers": "data.quiz_id, data.answers: [[user_id, name, option, ts]]",
    "presence.edge": "data.count: members on the sending edge, its heartbeat; "
    "data.reset: forget what it counted before; data.roster: "
    "[[user_id, name, role]], its connections (with reset, or continuing one); "
    "data.worker: the process, on an edge that runs several",
    "class.ending": "the teacher ended the class while a poll or question "
    "was open or closing: it ends (class.ended) once they are final",
    "presence.gone": "data.edge_id, data.process (or null), data.last_seen: "
    "readers of the log dropped this edge's members, silent since last_seen; "
    "the origin closes their attendance then",
}
"""Class-log entry types that edges exchange and members never see."""

PRESENCE_CHANGES = "presence.changes"
"""The entry type of one edge's member.joined and member.left of one tick,
in order: ``data.changes: [[op, user_id, name, role]]`` with ``op`` ``"+"``
(joined) or ``"-"`` (left; name and role empty). Staff receive it as the
``member.joined`` and ``member.left`` events it holds (see
:func:`presence_events`)."""

_PRESENCE_OPS = {"+": "member.joined", "-": "member.left"}


def presence_change(event: LogEvent) -> list[str]:
    """``event`` (a ``member.joined`` or ``member.left``) as one item of a
    :data:`PRESENCE_CHANGES` entry."""
    data = event.data
    if event.type == "member.joined":
        name, role = str(data.get("name", "")), str(data.get("role", ""))
        return ["+", str(data.get("user_id")), name, role]
    return ["-", str(data.get("user_id")), "", ""]


def roster_items(entry: LogEvent) -> list[tuple[int, dict[str, str]]]:
    """``(index, {user_id, name, role})`` of each connection in the
    ``data.roster`` of a ``presence.edge`` entry (an edge saying who it
    holds); none without one. Malformed items are skipped."""
    roster = entry.data.get("roster")
    if not isinstance(roster, list):
        return []
    return [
        (i, dict(zip(("user_id", "name", "role"), map(str, item), strict=True)))
        for i, item in enumerate(roster)
        if isinstance(item, list) and len(item) == 3
    ]


def presence_items(entry: LogEvent) -> list[tuple[int, str, dict[str, Any]]]:
    """``(index, type, data)`` of each ``member.joined`` and ``member.left``
    a :data:`PRESENCE_CHANGES` entry holds, in order: what
    :func:`presence_events` makes entries of, for readers that need no
    entry per change. ``index`` is the item's place in the entry; malformed
    items are skipped."""
    out = []
    # The process of a multi-process edge that wrote them, kept on each.
    worker = entry.data.get("worker")
    for i, item in enumerate(entry.data.get("changes") or ()):
        if not isinstance(item, list | tuple) or len(item) < 2:
            continue
        type_ = _PRESENCE_OPS.get(item[0])
        if type_ is None:
            continue
        data: dict[str, Any] = {"user_id": str(item[1])}
        if type_ == "member.joined":
            data["name"] = str(item[2]) if len(item) > 2 else ""
            data["role"] = str(item[3]) if len(item) > 3 and item[3] else "student"
        if worker is not None:
            data["worker"] = worker
        out.append((i, type_, data))
    return out


def presence_events(entry: LogEvent) -> list[LogEvent]:
    """The ``member.joined`` and ``member.left`` entries a
    :data:`PRESENCE_CHANGES` entry stands for, in order.

    Each keeps the entry's number, time and edge, and gets an id of its own
    derived from the entry's, the same for every reader: the origin stores
    each change idempotently by it. The index is zero-padded so that ids of
    one entry sort in their order. Malformed items are skipped.
    """
    return [
        entry.model_copy(
            update={
                "id": f"{entry.id}:{i:06d}",
                "type": type_,
                "actor": data["user_id"],
                "data": data,
            }
        )
        for i, type_, data in presence_items(entry)
    ]


class EdgeLocation(BaseModel):
    """Where an edge is, for distance ranking."""

    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=180)
    region: str = ""


class EdgeRegistration(BaseModel):
    """What an edge sends the origin when it starts."""

    model_config = ConfigDict(extra="forbid")

    edge_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    public_url: str = Field(
        description="http(s) base URL members connect to",
        pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$",
        max_length=2048,
    )
    location: EdgeLocation
    capacity: int = Field(default=20000, ge=1)


class EdgeHeartbeat(BaseModel):
    """What an edge sends the origin every few seconds."""

    model_config = ConfigDict(extra="forbid")

    members: int = Field(ge=0)
    classes: dict[str, Annotated[int, Field(ge=0)]] = Field(
        default_factory=dict, description="members per class on this edge"
    )
    cpu: float = Field(default=0.0, ge=0, le=1024)
    draining: bool = False


class RouteCandidate(BaseModel):
    """One edge the SDK may join, best first."""

    edge_id: str
    url: str = Field(description="http(s) base URL of the edge")
    ws_url: str = Field(description="ws(s) URL of the member endpoint")
    ping_url: str = Field(description="URL the SDK probes for round-trip time")
    distance_km: float
    load: float = Field(description="members / capacity")
    serves_class: bool
    score: float


class RouteAnswer(BaseModel):
    """The origin's answer to a route query."""

    class_id: str
    client_ip: str
    client_location: EdgeLocation | None
    candidates: list[RouteCandidate]
