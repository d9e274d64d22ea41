"""Chat: the settings every edge folds from the log, and per-edge rate limits."""

from __future__ import annotations

from collections import deque
from typing import Any

from liveclass.origin.contract import LogEvent

RECENT_CHAT = 50
"""Chat messages a late joiner receives in its snapshot."""

SEEN_IDS = 4096
"""Ids of the latest chat messages kept to spot one sent again: a client
sends again only what it sent within a reconnect (seconds), so this covers
minutes of the busiest chat a member can keep up with."""


class ChatState:
    """Chat settings, mutes and recent messages, as folded from the log."""

    def __init__(self) -> None:
        self.enabled = True
        self.slow_mode_s = 0.0
        self.muted: set[str] = set()
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT_CHAT)
        self._seen: set[str] = set()
        self._seen_order: deque[str] = deque()
        self._copies: set[int] = set()
        self._copies_order: deque[int] = deque()

    def fold_message(self, entry: LogEvent) -> bool:
        """Remember a ``chat.message`` entry for late joiners; False if it
        is one folded before (the same id: a member's message sent again
        after its edge died), which nobody must see twice."""
        if entry.id in self._seen:
            self._copies.add(entry.seq)
            self._copies_order.append(entry.seq)
            if len(self._copies_order) > SEEN_IDS:
                self._copies.discard(self._copies_order.popleft())
            return False
        self._seen.add(entry.id)
        self._seen_order.append(entry.id)
        if len(self._seen_order) > SEEN_IDS:
            self._seen.discard(self._seen_order.popleft())
        self.recent.append(
            {
                "type": entry.type,
                "seq": entry.seq,
                "ts": entry.ts,
                "actor": entry.actor,
                "data": entry.data,
            }
        )
        return True

    def is_copy(self, seq: int) -> bool:
        """Whether the message numbered ``seq`` was folded as a copy of an
        earlier one (among the latest :data:`SEEN_IDS` copies)."""
        return seq in self._copies

    def fold_deleted(self, seq: int) -> bool:
        """Forget the message numbered ``seq``; whether it was among the recent."""
        for item in self.recent:
            if item["seq"] == seq:
                self.recent.remove(item)
                return True
        return False

    def fold_settings(self, data: dict[str, Any]) -> dict[str, Any]:
        """Apply a partial ``chat.settings`` change; return the full settings.

        Writers send only what changed, so two staff members changing
        different settings at once do not undo each other.
        """
        if isinstance(data.get("enabled"), bool):
            self.enabled = data["enabled"]
        if isinstance(data.get("slow_mode_s"), int | float):
            self.slow_mode_s = max(0.0, float(data["slow_mode_s"]))
        return {"enabled": self.enabled, "slow_mode_s": self.slow_mode_s}

    def fold_muted(self, user_id: str, muted: bool) -> None:
        """Mute or unmute ``user_id``."""
        if muted:
            self.muted.add(user_id)
        else:
            self.muted.discard(user_id)


class RateLimiter:
    """A token bucket per member: ``burst`` actions, refilled over ``per_s``.

    Kept per edge, not folded from the log: a member's messages all pass
    through the edge its connection is on.
    """

    def __init__(self, burst: int = 5, per_s: float = 10.0) -> None:
        self.burst = burst
        self.rate = burst / per_s
        self._buckets: dict[str, tuple[float, float]] = {}
        self._departed: set[str] = set()

    def allow(self, user_id: str, now: float) -> bool:
        """Take one token for ``user_id`` if it has one."""
        self._departed.discard(user_id)
        tokens, last = self._buckets.get(user_id, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[user_id] = (tokens, now)
            return False
        self._buckets[user_id] = (tokens - 1.0, now)
        return True

    def forget(self, user_id: str, now: float) -> None:
        """Drop the bucket of a member who left this edge, once it has
        refilled: leaving and coming back must not buy a fresh burst."""
        self._departed.add(user_id)
        # Sweep a few departed members per call: bounded work, and buckets
        # of members who never come back do not pile up.
        for gone in list(self._departed)[:8]:
            if self._full(gone, now):
                self._departed.discard(gone)
                self._buckets.pop(gone, None)

    def _full(self, user_id: str, now: float) -> bool:
        bucket = self._buckets.get(user_id)
        if bucket is None:
            return True
        tokens, last = bucket
        return tokens + (now - last) * self.rate >= self.burst


class SlowMode:
    """When each member last chatted, to enforce slow mode on this edge."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}

    def wait_s(self, user_id: str, interval_s: float, now: float) -> float:
        """Seconds ``user_id`` must still wait; 0 when it may send now."""
        if interval_s <= 0:
            return 0.0
        last = self._last.get(user_id)
        if last is None:
            return 0.0
        return max(0.0, last + interval_s - now)

    def sent(self, user_id: str, now: float) -> None:
        """Record that ``user_id`` sent a message at ``now``."""
        self._last[user_id] = now

    def forget(self, user_id: str, now: float, longest_s: float = 3600.0) -> None:
        """Drop the record of a member who left this edge, unless it may
        still bind: leaving and coming back must not skip the wait.

        ``longest_s`` is the longest slow-mode interval there can be.
        """
        last = self._last.get(user_id)
        if last is not None and now - last >= longest_s:
            del self._last[user_id]
