"""Presence: who is connected, over all edges, from member.joined/left."""

from __future__ import annotations

from typing import Any

from liveclass.origin.contract import Audience, LogEvent
from liveclass.sdk.protocol import Member


def presence_entry(type_: str, member: Member, edge_id: str) -> LogEvent:
    """The ``member.joined`` or ``member.left`` entry of one connection of
    ``member`` on ``edge_id``."""
    data: dict[str, Any] = {"user_id": member.user_id}
    if type_ == "member.joined":
        data |= {"name": member.name, "role": member.role.value}
    return LogEvent(
        type=type_,
        edge_id=edge_id,
        actor=member.user_id,
        audience=Audience.STAFF,
        data=data,
    )


class Presence:
    """Connections per edge and user; a user on two devices counts once."""

    def __init__(self) -> None:
        # edge_id -> user_id -> open connections of that user on that edge
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

    def joined(self, edge_id: str, user_id: str, name: str, role: str) -> None:
        """Fold one ``member.joined``: one more connection."""
        on_edge = self._edges.setdefault(edge_id, {})
        on_edge[user_id] = on_edge.get(user_id, 0) + 1
        self._users[user_id] = self._users.get(user_id, 0) + 1
        self._info[user_id] = {"user_id": user_id, "name": name, "role": role}

    def left(self, edge_id: str, user_id: str) -> None:
        """Fold one ``member.left``: one connection fewer (never below none)."""
        on_edge = self._edges.get(edge_id, {})
        if on_edge.get(user_id, 0) <= 0:
            return
        on_edge[user_id] -= 1
        if not on_edge[user_id]:
            del on_edge[user_id]
        self._users[user_id] -= 1
        if not self._users[user_id]:
            del self._users[user_id]
            self._info.pop(user_id, None)

    def drop_edge(self, edge_id: str) -> bool:
        """Forget every connection of ``edge_id`` (it restarted or went
        silent); whether anyone was connected through it."""
        on_edge = self._edges.pop(edge_id, None)
        if not on_edge:
            return False
        for user_id, n in on_edge.items():
            self._users[user_id] -= n
            if self._users[user_id] <= 0:
                del self._users[user_id]
                self._info.pop(user_id, None)
        return True

    @property
    def edges(self) -> list[str]:
        """The edges some member is connected through."""
        return [e for e, users in self._edges.items() if users]

    def on_edge(self, edge_id: str) -> int:
        """Distinct users connected through ``edge_id``."""
        return len(self._edges.get(edge_id, {}))

    def members(self) -> list[dict[str, Any]]:
        """``[{user_id, name, role}]`` of everyone here, sorted by user id."""
        return [self._info[u] for u in sorted(self._users)]
