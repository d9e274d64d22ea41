"""Presence: who is connected, over all edges, from member.joined/left."""

from __future__ import annotations

from typing import Any

from liveclass.origin.contract import Audience, LogEvent
from liveclass.sdk.protocol import Member


def presence_entry(
    type_: str, member: Member, edge_id: str, worker: int | None = None
) -> LogEvent:
    """The ``member.joined`` or ``member.left`` entry of one connection of
    ``member`` on ``edge_id`` (on its process ``worker``, when the edge
    runs several; see :func:`source_of`)."""
    data: dict[str, Any] = {"user_id": member.user_id}
    if type_ == "member.joined":
        data |= {"name": member.name, "role": member.role.value}
    if worker is not None:
        data["worker"] = worker
    return LogEvent(
        type=type_,
        edge_id=edge_id,
        actor=member.user_id,
        audience=Audience.STAFF,
        data=data,
    )


def source_of(edge_id: str, data: dict[str, Any]) -> str:
    """The presence source of an entry: its edge, or ``edge/worker`` for one
    process of an edge that runs several (``data.worker``). Each process
    counts, resets and heartbeats its own members, so that one process
    (re)opening a class does not void the members of its siblings."""
    worker = data.get("worker")
    if isinstance(worker, int) and not isinstance(worker, bool):
        return f"{edge_id}/{worker}"
    return edge_id


def edge_of(source: str) -> str:
    """The edge id of a presence source (see :func:`source_of`)."""
    return source.partition("/")[0]


class Presence:
    """Connections per presence source and user; a user on two devices
    counts once. A source is an edge, or one process of an edge (see
    :func:`source_of`)."""

    def __init__(self) -> None:
        # source -> user_id -> open connections of that user through it
        self._edges: dict[str, dict[str, int]] = {}
        # user_id -> connections on all edges
        self._users: dict[str, int] = {}
        self._info: dict[str, dict[str, str]] = {}

    @property
    def count(self) -> int:
        """Distinct users connected now."""
        return len(self._users)

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._users

    def role_of(self, user_id: str) -> str | None:
        """The role a connected user joined with, or None."""
        info = self._info.get(user_id)
        return info["role"] if info and user_id in self._users else None

    def joined(self, source: str, user_id: str, name: str, role: str) -> None:
        """Fold one ``member.joined``: one more connection."""
        on_edge = self._edges.setdefault(source, {})
        on_edge[user_id] = on_edge.get(user_id, 0) + 1
        self._users[user_id] = self._users.get(user_id, 0) + 1
        self._info[user_id] = {"user_id": user_id, "name": name, "role": role}

    def left(self, source: str, user_id: str) -> None:
        """Fold one ``member.left``: one connection fewer (never below none)."""
        on_edge = self._edges.get(source, {})
        if on_edge.get(user_id, 0) <= 0:
            return
        on_edge[user_id] -= 1
        if not on_edge[user_id]:
            del on_edge[user_id]
        self._users[user_id] -= 1
        if not self._users[user_id]:
            del self._users[user_id]
            self._info.pop(user_id, None)

    def drop_source(self, source: str) -> bool:
        """Forget every connection through ``source`` (it restarted or went
        silent); whether anyone was connected through it."""
        on_edge = self._edges.pop(source, None)
        if not on_edge:
            return False
        for user_id, n in on_edge.items():
            self._users[user_id] -= n
            if self._users[user_id] <= 0:
                del self._users[user_id]
                self._info.pop(user_id, None)
        return True

    @property
    def sources(self) -> list[str]:
        """The presence sources some member is connected through."""
        return [s for s, users in self._edges.items() if users]

    @property
    def edges(self) -> list[str]:
        """The edges some member is connected through."""
        return sorted({edge_of(s) for s in self.sources})

    def on_edge(self, edge_id: str) -> int:
        """Distinct users connected through ``edge_id`` (any of its processes)."""
        users: set[str] = set()
        for source, on_source in self._edges.items():
            if edge_of(source) == edge_id:
                users.update(on_source)
        return len(users)

    def members(self) -> list[dict[str, Any]]:
        """``[{user_id, name, role}]`` of everyone here, sorted by user id."""
        return [self._info[u] for u in sorted(self._users)]
