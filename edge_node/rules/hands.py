"""The hand queue: members in order of raising."""

from __future__ import annotations


class HandQueue:
    """Raised hands, first raised first; folded from the log."""

    def __init__(self) -> None:
        # dicts keep insertion order: the order hands were raised in.
        self._queue: dict[str, str] = {}

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._queue

    def __len__(self) -> int:
        return len(self._queue)

    def raise_hand(self, user_id: str, name: str) -> bool:
        """Add ``user_id`` at the end; False if its hand is already up."""
        if user_id in self._queue:
            return False
        self._queue[user_id] = name
        return True

    def lower(self, user_id: str) -> bool:
        """Take ``user_id`` out of the queue; False if its hand was down."""
        return self._queue.pop(user_id, None) is not None

    def first(self) -> tuple[str, str] | None:
        """The member to call next as ``(user_id, name)``, or None."""
        for user_id, name in self._queue.items():
            return user_id, name
        return None

    def snapshot(self) -> list[dict[str, str]]:
        """The queue as ``[{user_id, name}]``, first raised first."""
        return [{"user_id": u, "name": n} for u, n in self._queue.items()]
