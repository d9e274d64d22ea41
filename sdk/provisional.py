"""Chat shown before the class log numbered it, and its confirmation.

While the class log does not answer, an edge shows its members their chat
at once, unnumbered and marked provisional. When the log numbers such a
message, the edge delivers it again, numbered; :class:`Provisional` turns
that second delivery into a :class:`~liveclass.sdk.events.ChatConfirmed`,
so that an app sees each message once. No I/O.
"""

from __future__ import annotations

from collections import OrderedDict

from liveclass.sdk.events import ChatConfirmed, ChatMessage, ClassEvent

MAX_UNCONFIRMED = 1000
"""Provisional messages remembered; older ones are forgotten (their edge
went away before the log took them)."""

_Key = tuple[str | None, float, str]


def _key(message: ChatMessage) -> _Key:
    return message.actor, message.ts, message.text


class Provisional:
    """The provisional messages this member received and not seen numbered."""

    def __init__(self, limit: int = MAX_UNCONFIRMED) -> None:
        self.limit = limit
        self._by_id: OrderedDict[str, _Key] = OrderedDict()
        self._by_key: dict[_Key, str] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def settle(self, message: ChatMessage) -> ClassEvent | None:
        """What to deliver for ``message``: itself, a :class:`ChatConfirmed`
        when it is the numbered form of a provisional one, or None when it
        is a provisional message received already."""
        if message.provisional:
            return self._remember(message)
        if not self._by_id:
            return message
        provisional_id = message.provisional_id
        if provisional_id not in self._by_id:
            # Numbered by another edge than the one that showed it (the
            # member moved meanwhile): the same sender, time and text.
            provisional_id = self._by_key.get(_key(message))
        if provisional_id is None:
            return message
        del self._by_key[self._by_id.pop(provisional_id)]
        return ChatConfirmed(
            seq=message.seq,
            ts=message.ts,
            actor=message.actor,
            provisional_id=provisional_id,
            message=message,
        )

    def _remember(self, message: ChatMessage) -> ChatMessage | None:
        provisional_id = message.provisional_id
        if provisional_id is None:
            return message  # nothing to confirm it by: shown as it is
        if provisional_id in self._by_id:
            return None
        key = _key(message)
        self._by_id[provisional_id] = key
        self._by_key[key] = provisional_id
        while len(self._by_id) > self.limit:
            _, old = self._by_id.popitem(last=False)
            self._by_key.pop(old, None)
        return message
