"""The class room's fan-out, resume and timers, with fake connections."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from liveclass.edge_node.fanout import Batch, member_frames
from liveclass.edge_node.room import ClassRoom
from liveclass.edge_node.rules.state import EDGE_TIMEOUT_S
from liveclass.origin.classlog import MemoryClassLog
from liveclass.origin.contract import Audience, LogEvent
from liveclass.sdk.protocol import CloseCode, Event, Frame, Member, Role

TEA = Member(user_id="tea", name="Tea", role=Role.TEACHER)
ANN = Member(user_id="ann", name="Ann", role=Role.STUDENT)
BOB = Member(user_id="bob", name="Bob", role=Role.STUDENT)


class FakeSink:
    """A connection that stores frames; ``room`` frames fit before it is full."""

    def __init__(self, member: Member, room: int = 1000) -> None:
        self.member = member
        self.frames: list[str] = []
        self.room = room
        self.closed: tuple[int, str] | None = None

    def offer(self, data: str) -> bool:
        if len(self.frames) >= self.room:
            return False
        self.frames.append(data)
        return True

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def events(self) -> list[dict[str, Any]]:
        return [e for f in self.frames for e in json.loads(f)["events"]]


def chat(text: str, **kw: Any) -> LogEvent:
    return LogEvent(type="chat.message", actor="tea", data={"text": text}, **kw)


@pytest.fixture
async def log() -> MemoryClassLog:
    return MemoryClassLog()


@pytest.fixture
async def room(log: MemoryClassLog) -> AsyncIterator[ClassRoom]:
    async def append(class_id: str, entries: Sequence[LogEvent]) -> None:
        await log.append(class_id, entries)

    r = ClassRoom("c1", log, "edge-a", append)
    r.start()
    yield r
    await r.stop()


async def settle(room: ClassRoom, log: MemoryClassLog) -> None:
    head = await log.head("c1")
    for _ in range(200):
        if room.state.seq >= head:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("room did not catch up")


def test_batch_encodes_each_variant_once() -> None:
    entries = [
        chat("hi", seq=1),
        LogEvent(
            seq=2,
            type="chat.muted",
            audience=Audience.USER,
            user="bob",
            data={"user_id": "bob", "muted": True},
        ),
        LogEvent(seq=3, type="member.joined", audience=Audience.STAFF, data={}),
        LogEvent(seq=4, type="poll.votes", audience=Audience.EDGES, data={}),
    ]
    batch = Batch(0, 4, entries, views_staff=[Event(type="poll.tally")])
    ann, ann2 = (
        batch.for_member(ANN),
        batch.for_member(Member(user_id="cat", name="C", role=Role.STUDENT)),
    )
    assert ann is ann2  # one string shared by every plain student
    assert [e.type for e in Frame.model_validate_json(ann).events] == ["chat.message"]
    bob = Frame.model_validate_json(batch.for_member(BOB))
    assert [e.type for e in bob.events] == ["chat.message", "chat.muted"]
    staff = Frame.model_validate_json(batch.for_member(TEA))
    assert [e.type for e in staff.events] == [
        "chat.message",
        "chat.muted",
        "member.joined",
        "poll.tally",
    ]
    assert (staff.seq_from, staff.seq_to) == (0, 4)


def test_member_frames_split_long_ranges_contiguously() -> None:
    entries = [chat(str(i), seq=i) for i in range(1, 12)]
    frames = [
        Frame.model_validate_json(f) for f in member_frames(entries, ANN, 0, 12, 5)
    ]
    assert [(f.seq_from, f.seq_to) for f in frames] == [(0, 5), (5, 10), (10, 12)]
    assert sum(len(f.events) for f in frames) == 11


async def test_slow_member_is_closed_and_others_go_on(
    room: ClassRoom, log: MemoryClassLog
) -> None:
    slow, fast = FakeSink(ANN, room=2), FakeSink(BOB)
    assert await room.join(slow, None, 100) is None
    assert await room.join(fast, None, 100) is None
    for i in range(5):
        await log.append("c1", [chat(f"m{i}")])
        await settle(room, log)
    assert slow.closed is not None and slow.closed[0] == CloseCode.TOO_SLOW
    assert [e["data"]["text"] for e in fast.events()[1:]] == [f"m{i}" for i in range(5)]
    assert room.connections == 1


async def test_readers_that_stop_together_are_logged_in_one_line(
    room: ClassRoom, log: MemoryClassLog, caplog: pytest.LogCaptureFixture
) -> None:
    slow = [
        FakeSink(Member(user_id=f"s{n}", name="S", role=Role.STUDENT), room=1)
        for n in range(7)
    ]
    for sink in slow:
        assert await room.join(sink, None, 100) is None
    with caplog.at_level("INFO", logger="liveclass.edge_node.room"):
        await log.append("c1", [chat("one"), chat("two")])
        await settle(room, log)
        await room.tick(time.time())
    assert all(s.closed and s.closed[0] == CloseCode.TOO_SLOW for s in slow)
    lines = [r.getMessage() for r in caplog.records if "too far behind" in r.message]
    assert lines == [
        "closed 7 members too far behind (s0, s1, s2, s3, s4, ...); they may resume"
    ]


async def test_resume_from_memory_and_from_the_log(
    room: ClassRoom, log: MemoryClassLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    await log.append("c1", [chat(f"m{i}") for i in range(10)])
    await settle(room, log)
    chats = [e for e in await log.read("c1", 0) if e.type == "chat.message"]
    head = room.state.seq
    sink = FakeSink(ANN)
    await room.join(sink, chats[7].seq - 1, 100)
    frame = Frame.model_validate_json(sink.frames[0])
    assert (frame.seq_from, frame.seq_to) == (chats[7].seq - 1, head)
    assert [e.data["text"] for e in frame.events] == ["m7", "m8", "m9"]

    # Pretend the in-memory window starts further on: older entries come
    # from the log.
    monkeypatch.setattr(room, "_ring_floor", chats[5].seq)
    older = FakeSink(BOB)
    await room.join(older, chats[2].seq - 1, 100)
    texts = [e["data"]["text"] for e in older.events()]
    assert texts == [f"m{i}" for i in range(2, 10)]


async def test_a_message_sent_again_is_resumed_once(
    room: ClassRoom, log: MemoryClassLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message in the log twice (its first edge died after appending it,
    and the sender sent it again elsewhere) reaches a member resuming from
    memory or from the log once, as it reached live members."""
    again = chat("again")
    await log.append("c1", [chat("m0"), again, chat("m1"), again, chat("m2")])
    await settle(room, log)
    live = [e for e in room._ring_after(0) if e.type == "chat.message"]
    assert [e.data["text"] for e in live] == ["m0", "again", "m1", "m2"]
    from_memory = FakeSink(ANN)
    await room.join(from_memory, 0, 100)
    assert [e["data"]["text"] for e in from_memory.events()] == [
        e.data["text"] for e in live
    ]
    # Older than the window: from the log, where both copies are; whether
    # the resume starts before the first copy or between the two.
    monkeypatch.setattr(room, "_ring_floor", room.state.seq)
    for last_seq in (0, live[0].seq, live[1].seq):
        from_log = FakeSink(BOB)
        await room.join(from_log, last_seq, 100)
        texts = [e["data"]["text"] for e in from_log.events()]
        assert texts == [e.data["text"] for e in live if e.seq > last_seq]


async def test_resume_after_trimmed_history_resets() -> None:
    small = MemoryClassLog(retention=5)

    async def append(class_id: str, entries: Sequence[LogEvent]) -> None:
        await small.append(class_id, entries)

    r = ClassRoom("c1", small, "edge-a", append)
    r.start()
    try:
        await small.append("c1", [chat(f"m{i}") for i in range(20)])
        await r.ready.wait()
        await settle(r, small)
        r._ring_floor = 18  # as if the window were small too
        sink = FakeSink(ANN)
        await r.join(sink, 3, 100)
        assert sink.events()[0]["type"] == "state.reset"
    finally:
        await r.stop()


async def test_timed_poll_is_closed_by_the_opening_edge(
    room: ClassRoom, log: MemoryClassLog
) -> None:
    tea = FakeSink(TEA)
    await room.join(tea, None, 100)
    data = {
        "poll_id": "p1",
        "question": "q",
        "options": ["a", "b"],
        "closes_at": time.time() + 0.2,
    }
    await log.append("c1", [LogEvent(type="poll.opened", edge_id="edge-a", data=data)])
    for _ in range(100):
        if any(e["type"] == "poll.closed" for e in tea.events()):
            break
        await asyncio.sleep(0.02)
    closed = [e for e in tea.events() if e["type"] == "poll.closed"]
    assert closed and closed[0]["data"]["counts"] == [0, 0]


async def test_removed_member_is_closed(room: ClassRoom, log: MemoryClassLog) -> None:
    ann, bob = FakeSink(ANN), FakeSink(BOB)
    await room.join(ann, None, 100)
    await room.join(bob, None, 100)
    await log.append("c1", [LogEvent(type="member.removed", data={"user_id": "ann"})])
    await settle(room, log)
    assert ann.closed is not None and ann.closed[0] == CloseCode.REMOVED
    assert bob.closed is None
    assert await room.join(FakeSink(ANN), None, 100) == (
        CloseCode.REMOVED,
        "you were removed from this class",
    )


async def test_a_big_room_gets_its_count_less_often_unless_a_frame_carries_it(
    room: ClassRoom, log: MemoryClassLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    from liveclass.edge_node import room as room_module

    # Two writes a second for counts: two members get a count every second
    # at most, three every 1.5 s.
    monkeypatch.setattr(room_module, "PRESENCE_WRITES_PER_S", 2)
    await room.ready.wait()
    sinks = [
        FakeSink(Member(user_id=f"u{i}", name="U", role=Role.STUDENT)) for i in range(3)
    ]
    for sink in sinks:
        assert await room.join(sink, None, 100) is None

    def joined(user: str) -> LogEvent:
        return LogEvent(
            type="member.joined",
            audience=Audience.STAFF,
            data={"user_id": user, "name": "X", "role": "student"},
        )

    def counts() -> list[int]:
        return [
            e["data"]["count"]
            for e in sinks[0].events()
            if e["type"] == "presence.count"
        ]

    room._count_at = time.monotonic() - 1.2  # a second since the last count
    await log.append("c1", [joined("x1")])
    await settle(room, log)
    await asyncio.sleep(0.05)
    assert counts() == []  # alone, it waits for 1.5 s
    await log.append("c1", [chat("hello")])
    await settle(room, log)
    await asyncio.sleep(0.05)
    assert counts() == [1]  # carried by a frame that goes to everyone


async def test_a_room_dropped_by_the_sweep_says_who_it_holds(
    room: ClassRoom, log: MemoryClassLog
) -> None:
    """Another edge's entries come far later by their times (this edge's
    were held, or its clock is behind): the sweep drops this edge's members,
    and the room appends who it holds, so every edge counts them again."""
    ann, bob, ann_again = FakeSink(ANN), FakeSink(BOB), FakeSink(ANN)
    for sink in (ann, bob, ann_again):
        assert await room.join(sink, None, 100) is None
    joined = [
        LogEvent(type="member.joined", edge_id="edge-a", data=m)
        for m in (
            {"user_id": "ann", "name": "Ann", "role": "student"},
            {"user_id": "bob", "name": "Bob", "role": "student"},
        )
    ]
    await log.append("c1", joined)
    await settle(room, log)
    assert room.state.presence.count == 2
    later = time.time() + EDGE_TIMEOUT_S + 5
    beat = LogEvent(
        type="presence.edge", edge_id="edge-b", ts=later, audience=Audience.EDGES
    )
    await log.append("c1", [beat])
    for _ in range(200):
        entries = await log.read("c1", 0, 100)
        rosters = [e for e in entries if e.data.get("roster")]
        if rosters:
            break
        await asyncio.sleep(0.01)
    (roster,) = rosters
    assert roster.edge_id == "edge-a" and roster.data["reset"] is True
    assert sorted(map(tuple, roster.data["roster"])) == [
        ("ann", "Ann", "student"),
        ("ann", "Ann", "student"),
        ("bob", "Bob", "student"),
    ]
    await settle(room, log)
    assert room.state.presence.on_edge("edge-a") == 2


async def test_the_lowest_edge_tells_of_a_silent_one(
    room: ClassRoom, log: MemoryClassLog
) -> None:
    """Edge Z falls silent: edge A, the lowest live edge with members, writes
    one ``presence.gone`` naming it and when it was last heard of."""
    assert await room.join(FakeSink(ANN), None, 100) is None
    now = time.time()
    members = [
        LogEvent(type="member.joined", edge_id=edge, ts=now, data=data)
        for edge, data in (
            ("edge-a", {"user_id": "ann", "name": "Ann", "role": "student"}),
            ("edge-z", {"user_id": "zed", "name": "Zed", "role": "student"}),
        )
    ]
    await log.append("c1", members)
    beat = LogEvent(
        type="presence.edge",
        edge_id="edge-a",
        ts=now + EDGE_TIMEOUT_S + 1,
        audience=Audience.EDGES,
    )
    await log.append("c1", [beat])
    for _ in range(200):
        gone = [e for e in await log.read("c1", 0, 100) if e.type == "presence.gone"]
        if gone:
            break
        await asyncio.sleep(0.01)
    (entry,) = gone
    assert entry.data == {"edge_id": "edge-z", "process": None, "last_seen": now}
    await settle(room, log)
    assert room.state.presence.members() == [
        {"user_id": "ann", "name": "Ann", "role": "student"}
    ]


async def test_an_ending_class_ends_once_its_polls_are_final(
    room: ClassRoom, log: MemoryClassLog
) -> None:
    """The teacher ended the class with a poll open: the room writes
    ``class.ended`` once the poll is final (here: its own flush, as the
    only edge with members), and its members are closed."""
    ann = FakeSink(ANN)
    assert await room.join(ann, None, 100) is None
    joined = {"user_id": "ann", "name": "Ann", "role": "student"}
    opened = {"poll_id": "p1", "question": "?", "options": ["a", "b"]}
    await log.append(
        "c1",
        [
            LogEvent(type="member.joined", edge_id="edge-a", data=joined),
            LogEvent(type="poll.opened", edge_id="edge-a", data=opened),
        ],
    )
    await settle(room, log)
    close = {"poll_id": "p1", "expected": ["edge-a"]}
    closed = LogEvent(id="poll.closed:p1", type="poll.closed", data=close)
    ending = LogEvent(type="class.ending", audience=Audience.EDGES)
    await log.append("c1", [closed, ending])
    for _ in range(300):
        if ann.closed is not None:
            break
        await asyncio.sleep(0.01)
    assert ann.closed is not None and ann.closed[0] == CloseCode.CLASS_ENDED
    types = [e.type for e in await log.read("c1", 0, 100)]
    assert types.index("poll.flushed") < types.index("class.ended")
    assert types.count("class.ended") == 1
    events = [e["type"] for e in ann.events()]
    assert events.index("poll.closed") < events.index("class.ended")
