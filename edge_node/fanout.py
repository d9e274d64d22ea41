"""Frames for members: who sees which entry, and encoding each variant once.

Nothing here touches a socket. A :class:`Sink` is whatever holds one
member's connection; the WebSocket layer provides it, so it can be swapped
without touching the rules of who sees what.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Protocol

from liveclass.origin.contract import Audience, LogEvent
from liveclass.sdk.protocol import Event, Member

# Fields of an entry that only staff may see before the item closes.
_STAFF_FIELDS: dict[str, tuple[str, ...]] = {"quiz.asked": ("correct",)}


class Sink(Protocol):
    """One member's connection, as the class room sees it."""

    member: Member

    def offer(self, data: str) -> bool:
        """Queue one encoded frame; False when the connection is too far behind."""
        ...

    def close(self, code: int, reason: str) -> None:
        """Close the connection soon, with a WebSocket close code."""
        ...


def event_json(entry: LogEvent, staff: bool) -> str:
    """One log entry as the JSON of an :class:`Event` for staff or a student."""
    data = entry.data
    hidden = _STAFF_FIELDS.get(entry.type)
    if hidden and not staff:
        data = {k: v for k, v in data.items() if k not in hidden}
    return json.dumps(
        {
            "type": entry.type,
            "seq": entry.seq,
            "ts": entry.ts,
            "actor": entry.actor,
            "data": data,
        },
        separators=(",", ":"),
    )


def view_json(event: Event) -> str:
    """A view (count, tally, score, error) as JSON."""
    return event.model_dump_json()


def frame_json(seq_from: int | None, seq_to: int | None, events: Iterable[str]) -> str:
    """A :class:`~liveclass.sdk.protocol.Frame` from already-encoded events.

    Built by hand so that an event encoded once is shared by every variant
    of a frame instead of being encoded again for each.
    """
    return (
        f'{{"seq_from":{json.dumps(seq_from)},"seq_to":{json.dumps(seq_to)},'
        f'"events":[{",".join(events)}]}}'
    )


def visible(entry: LogEvent, member: Member) -> bool:
    """Whether ``member`` may see ``entry``."""
    audience = entry.audience
    if audience is Audience.ALL:
        return True
    if audience is Audience.EDGES:
        return False
    if member.role.is_staff:
        return True
    return audience is Audience.USER and entry.user == member.user_id


class Batch:
    """The entries ``(seq_from, seq_to]`` one fold produced, ready to send.

    Encodes each entry at most twice (staff and students) and each variant
    of the frame once: one for staff, one for students, and one per student
    only when that student has something of its own in the batch.
    """

    def __init__(
        self,
        seq_from: int,
        seq_to: int,
        entries: Sequence[LogEvent],
        views_all: Sequence[Event] = (),
        views_staff: Sequence[Event] = (),
        views_user: dict[str, list[Event]] | None = None,
    ) -> None:
        self.seq_from = seq_from
        self.seq_to = seq_to
        self._all: list[str] = []
        self._staff: list[str] = []
        self._user: dict[str, list[tuple[int, str]]] = {}
        all_views = [view_json(v) for v in views_all]
        for entry in entries:
            audience = entry.audience
            if audience is Audience.EDGES:
                continue
            staff_json = event_json(entry, staff=True)
            self._staff.append(staff_json)
            if audience is Audience.ALL:
                student_json = (
                    staff_json
                    if entry.type not in _STAFF_FIELDS
                    else event_json(entry, staff=False)
                )
                self._all.append(student_json)
            elif audience is Audience.USER and entry.user:
                # Remember where it goes among the students' events.
                mine = self._user.setdefault(entry.user, [])
                mine.append((len(self._all), staff_json))
        self._staff += all_views + [view_json(v) for v in views_staff]
        self._views_all = all_views
        self._views_user = {
            u: [view_json(v) for v in vs] for u, vs in (views_user or {}).items()
        }
        self._encoded: dict[str, str] = {}

    def __bool__(self) -> bool:
        return bool(self._staff or self._all or self._views_user)

    def for_member(self, member: Member) -> str:
        """The encoded frame for ``member``."""
        user_id = member.user_id
        own_views = self._views_user.get(user_id)
        if member.role.is_staff:
            if own_views:
                return frame_json(self.seq_from, self.seq_to, self._staff + own_views)
            return self._cached("staff", self._staff)
        own = self._user.get(user_id)
        if not own and not own_views:
            return self._cached("all", self._all + self._views_all)
        events = list(self._all)
        for offset, (index, text) in enumerate(own or ()):
            events.insert(index + offset, text)
        return frame_json(
            self.seq_from, self.seq_to, events + self._views_all + (own_views or [])
        )

    def _cached(self, key: str, events: list[str]) -> str:
        text = self._encoded.get(key)
        if text is None:
            text = self._encoded[key] = frame_json(self.seq_from, self.seq_to, events)
        return text


def member_frames(
    entries: Sequence[LogEvent],
    member: Member,
    seq_from: int,
    seq_to: int,
    max_events: int = 500,
) -> list[str]:
    """Frames covering ``(seq_from, seq_to]`` with what ``member`` may see.

    Used to send one resuming member what it missed; long ranges are split
    so that no frame grows without bound, each frame starting where the
    previous one ended.
    """
    staff = member.role.is_staff
    frames: list[str] = []
    chunk: list[str] = []
    start = seq_from
    last = seq_from
    for entry in entries:
        if entry.seq <= seq_from or entry.seq > seq_to:
            continue
        if visible(entry, member):
            chunk.append(event_json(entry, staff))
        last = entry.seq
        if len(chunk) >= max_events:
            frames.append(frame_json(start, last, chunk))
            chunk, start = [], last
    if chunk or start < seq_to or not frames:
        frames.append(frame_json(start, seq_to, chunk))
    return frames


def single(events: Sequence[Event], seq: int | None = None) -> str:
    """A frame of views only, at log position ``seq`` (None: no position)."""
    return frame_json(seq, seq, [view_json(e) for e in events])
