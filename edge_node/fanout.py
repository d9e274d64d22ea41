"""Frames for members: who sees which entry, and encoding each variant once.

Nothing here touches a socket. A :class:`Sink` is whatever holds one
member's connection; the WebSocket layer provides it, so it can be swapped
without touching the rules of who sees what.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from json.encoder import encode_basestring_ascii as _quote
from typing import Any, Protocol

from liveclass.origin.contract import (
    PRESENCE_CHANGES,
    Audience,
    LogEvent,
    presence_items,
)
from liveclass.sdk.protocol import Event, Member, Role

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


compact_json = json.JSONEncoder(separators=(",", ":")).encode
"""``json.dumps`` without spaces, with one encoder made once instead of one
per call (a third of the cost of a small event)."""


def event_json(entry: LogEvent, staff: bool) -> str:
    """One log entry as the JSON of an :class:`Event` for staff or a student."""
    data = entry.data
    hidden = _STAFF_FIELDS.get(entry.type)
    if hidden and not staff:
        data = {k: v for k, v in data.items() if k not in hidden}
    return compact_json(
        {
            "type": entry.type,
            "seq": entry.seq,
            "ts": entry.ts,
            "actor": entry.actor,
            "data": data,
        }
    )


def entry_jsons(entry: LogEvent, staff: bool) -> list[str]:
    """The events ``entry`` is to a member, as JSON: one, except for a
    ``presence.changes`` entry, which is the ``member.joined`` and
    ``member.left`` events it holds, each with the entry's number."""
    if entry.type == PRESENCE_CHANGES:
        return _presence_jsons(entry)
    return [event_json(entry, staff)]


def _presence_jsons(entry: LogEvent) -> list[str]:
    # What event_json makes of each of presence_events(entry), for staff
    # and students alike (presence has no staff-only field): a join storm's
    # entries hold hundreds of changes, encoded here without making an
    # entry of each, and with their shared number and time encoded once.
    shared = f'"seq":{compact_json(entry.seq)},"ts":{compact_json(entry.ts)}'
    out = []
    for _, type_, data in presence_items(entry):
        actor = _quote(data["user_id"])
        out.append(
            f'{{"type":{_quote(type_)},{shared},"actor":{actor},'
            f'"data":{_presence_data_json(data)}}}'
        )
    return out


def _presence_data_json(data: dict[str, Any]) -> str:
    # A join's data on a single-process edge, the bulk of a storm, is these
    # three strings: encoded as compact_json would, five times faster.
    if len(data) == 3 and "role" in data:
        return (
            f'{{"user_id":{_quote(data["user_id"])},"name":{_quote(data["name"])},'
            f'"role":{_quote(data["role"])}}}'
        )
    return compact_json(data)


def view_json(event: Event) -> str:
    """A view (count, tally, score, error) as JSON."""
    return event.model_dump_json()


def frame_json(seq_from: int | None, seq_to: int | None, events: Iterable[str]) -> str:
    """A :class:`~liveclass.sdk.protocol.Frame` from already-encoded events.

    Built by hand so that an event encoded once is shared by every variant
    of a frame instead of being encoded again for each.
    """
    start = "null" if seq_from is None else int(seq_from)
    end = "null" if seq_to is None else int(seq_to)
    return f'{{"seq_from":{start},"seq_to":{end},"events":[{",".join(events)}]}}'


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


MAX_OUT_FRAME_BYTES = 32 * 1024
"""The largest frame the edge sends, unless one event alone is larger.

Coalesced batches are split across frames at this size, each frame starting
where the previous one ended."""

Item = tuple[int, str]
"""One encoded event and the log position a frame covers once it is in."""


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
        self._all: list[Item] = []
        self._staff: list[Item] = []
        self._user: dict[str, list[tuple[int, Item]]] = {}
        for entry in entries:
            audience = entry.audience
            if audience is Audience.EDGES:
                continue
            if entry.type == PRESENCE_CHANGES:
                self._staff += [(entry.seq, j) for j in entry_jsons(entry, True)]
                continue
            staff_json = event_json(entry, staff=True)
            self._staff.append((entry.seq, staff_json))
            if audience is Audience.ALL:
                student_json = (
                    staff_json
                    if entry.type not in _STAFF_FIELDS
                    else event_json(entry, staff=False)
                )
                self._all.append((entry.seq, student_json))
            elif audience is Audience.USER and entry.user:
                # Remember where it goes among the students' events.
                mine = self._user.setdefault(entry.user, [])
                mine.append((len(self._all), (entry.seq, staff_json)))
        # Views are computed at seq_to: a frame holding one covers the batch.
        all_views = [(seq_to, view_json(v)) for v in views_all]
        self._staff += all_views + [(seq_to, view_json(v)) for v in views_staff]
        self._entries_all = self._all
        self._views_all = all_views
        self._all = self._all + all_views
        self._views_user = {
            u: [(seq_to, view_json(v)) for v in vs]
            for u, vs in (views_user or {}).items()
        }
        self._encoded: dict[str, str] = {}

    def __bool__(self) -> bool:
        return bool(self._staff or self._all or self._views_user)

    @property
    def personal(self) -> Iterable[str]:
        """Users with something of their own in this batch."""
        return self._user.keys() | self._views_user.keys()

    @property
    def for_students(self) -> bool:
        """Whether students see anything of this batch."""
        return bool(self._all or self._user or self._views_user)

    def items(self, member: Member) -> list[Item]:
        """What ``member`` sees of this batch, in order."""
        user_id = member.user_id
        own_views = self._views_user.get(user_id)
        if member.role.is_staff:
            return self._staff + own_views if own_views else self._staff
        own = self._user.get(user_id)
        if not own and not own_views:
            return self._all
        events = list(self._entries_all)
        for offset, (index, item) in enumerate(own or ()):
            events.insert(index + offset, item)
        return events + self._views_all + (own_views or [])

    def for_member(self, member: Member) -> str:
        """The encoded frame for ``member`` (shared text for shared variants)."""
        user_id = member.user_id
        staff = member.role.is_staff
        if user_id not in self._views_user and (staff or user_id not in self._user):
            key = "staff" if staff else "all"
            text = self._encoded.get(key)
            if text is None:
                text = self._encoded[key] = frame_items(
                    self.seq_from, self.seq_to, self.items(member)
                )
            return text
        return frame_items(self.seq_from, self.seq_to, self.items(member))


def frame_items(seq_from: int, seq_to: int, items: Sequence[Item]) -> str:
    """One frame of already-encoded items."""
    return frame_json(seq_from, seq_to, [text for _, text in items])


def split_items(
    seq_from: int, seq_to: int, items: Sequence[Item], limit: int
) -> list[str]:
    """Frames covering ``(seq_from, seq_to]`` with ``items``, each under ``limit``.

    A frame ends where its last item's position is, and the next one starts
    there: the chain of ranges stays contiguous. Items at one position stay
    in one frame (a client skips events at or below the end of the frame
    it had). An item alone over the limit gets a frame of its own.
    """
    frames: list[str] = []
    start = seq_from
    chunk: list[str] = []
    size = 64
    last = seq_from
    for pos, text in items:
        if chunk and size + len(text) + 1 > limit and pos != last:
            frames.append(frame_json(start, last, chunk))
            start, chunk, size = last, [], 64
        chunk.append(text)
        size += len(text) + 1
        last = pos
    frames.append(frame_json(start, seq_to, chunk))
    return frames


class Outgoing:
    """Consecutive batches coalesced into frames, encoded once per variant.

    A variant is what one kind of member sees from one batch on: staff,
    students, or one student with something of its own. Members are at
    different batches when some joined or were visited between two batches;
    ``start`` is the index of the first batch a member has not had.
    """

    def __init__(self, batches: Sequence[Batch], limit: int) -> None:
        self.batches = batches
        self.limit = limit
        self.seq_to = batches[-1].seq_to if batches else 0
        personal: set[str] = set()
        last_for_students = -1
        for i, batch in enumerate(batches):
            personal.update(batch.personal)
            if batch.for_students:
                last_for_students = i
        self.personal = personal
        self._last_for_students = last_for_students
        self._cache: dict[tuple[bool, int], list[str]] = {}

    def shared(self, staff: bool, start: int) -> list[str]:
        """Frames for plain staff or plain students from batch ``start`` on."""
        key = (staff, start)
        frames = self._cache.get(key)
        if frames is None:
            member = _STAFF if staff else _STUDENT
            frames = self._cache[key] = self._frames(member, start)
        return frames

    def personal_frames(self, member: Member, start: int) -> list[str]:
        """Frames for one member with something of its own."""
        return self._frames(member, start)

    def quiet_for_students(self, start: int) -> bool:
        """Whether no student sees anything from batch ``start`` on."""
        return start > self._last_for_students

    def _frames(self, member: Member, start: int) -> list[str]:
        batches = self.batches[start:]
        if not batches:
            return []
        items: list[Item] = []
        for batch in batches:
            items += batch.items(member)
        return split_items(batches[0].seq_from, self.seq_to, items, self.limit)


_STAFF = Member(user_id="", name="", role=Role.TEACHER)
_STUDENT = Member(user_id="", name="", role=Role.STUDENT)


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
            chunk += entry_jsons(entry, staff)
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
