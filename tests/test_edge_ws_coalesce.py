"""Coalescing: several batches per frame, in order, none lost, none too big."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from liveclass.edge_node import sweep as sweep_module
from liveclass.edge_node.fanout import Batch, Outgoing, split_items
from liveclass.edge_node.room import ClassRoom
from liveclass.origin.classlog import MemoryClassLog
from liveclass.origin.contract import Audience, LogEvent
from liveclass.sdk.protocol import Event, Frame, Member, Role

TEA = Member(user_id="tea", name="Tea", role=Role.TEACHER)
ANN = Member(user_id="ann", name="Ann", role=Role.STUDENT)
BOB = Member(user_id="bob", name="Bob", role=Role.STUDENT)


def chat(seq: int, text: str = "hello") -> LogEvent:
    return LogEvent(seq=seq, type="chat.message", actor="tea", data={"text": text})


def staff_only(seq: int) -> LogEvent:
    return LogEvent(seq=seq, type="member.joined", audience=Audience.STAFF, data={})


def chain(frames: Sequence[str], start: int) -> list[Frame]:
    """Parse frames and check that their ranges follow each other."""
    parsed = [Frame.model_validate_json(f) for f in frames]
    at = start
    for f in parsed:
        assert f.seq_from == at, "gap or overlap"
        assert f.seq_to is not None and f.seq_to >= at
        at = f.seq_to
    return parsed


def texts(frames: Sequence[Frame]) -> list[str]:
    return [
        e.data["text"] for f in frames for e in f.events if e.type == "chat.message"
    ]


def event(seq: int, pad: int) -> str:
    return json.dumps({"type": "x", "seq": seq, "data": {"pad": "p" * pad}})


def test_split_keeps_order_chain_and_size() -> None:
    items = [(i, event(i, 90)) for i in range(1, 201)]
    frames = split_items(0, 205, items, limit=1000)
    assert len(frames) > 10
    assert all(len(f.encode()) <= 1000 for f in frames)
    parsed = chain(frames, 0)
    assert parsed[-1].seq_to == 205
    assert [e.seq for f in parsed for e in f.events] == list(range(1, 201))


def test_an_item_over_the_limit_gets_a_frame_of_its_own() -> None:
    items = [(1, event(1, 1)), (2, event(2, 3000)), (3, event(3, 1))]
    parsed = chain(split_items(0, 3, items, limit=1000), 0)
    assert [[e.seq for e in f.events] for f in parsed] == [[1], [2], [3]]


def test_batches_coalesce_per_variant_with_personal_parts() -> None:
    muted = LogEvent(
        seq=3,
        type="chat.muted",
        audience=Audience.USER,
        user="bob",
        data={"user_id": "bob", "muted": True},
    )
    batches = [
        Batch(0, 2, [chat(1, "a"), staff_only(2)]),
        Batch(2, 4, [muted, chat(4, "b")]),
        Batch(4, 4, [], views_all=[Event(type="presence.count", data={"count": 3})]),
        Batch(4, 6, [chat(5, "c"), LogEvent(seq=6, type="poll.votes", data={})]),
    ]
    out = Outgoing(batches, limit=32 * 1024)
    students = out.shared(False, 0)
    assert students is out.shared(False, 0)  # encoded once, shared
    (plain,) = chain(students, 0)
    assert plain.seq_to == 6
    assert [e.type for e in plain.events] == [
        "chat.message",
        "chat.message",
        "presence.count",
        "chat.message",
        "poll.votes",
    ]
    assert "bob" in out.personal
    (bob,) = chain(out.personal_frames(BOB, 0), 0)
    assert [e.type for e in bob.events][:3] == [
        "chat.message",
        "chat.muted",
        "chat.message",
    ]
    (staff,) = chain(out.shared(True, 0), 0)
    assert "member.joined" in [e.type for e in staff.events]
    # A member who has had the first three batches starts at the fourth,
    # where the log position is 4; one who has had all gets nothing.
    (late,) = chain(out.shared(False, 3), 4)
    assert texts([late]) == ["c"]
    assert out.shared(False, 4) == []
    assert not out.quiet_for_students(3)
    assert out.quiet_for_students(4)


# --- in a class room ------------------------------------------------------------


class FakeSink:
    def __init__(self, member: Member) -> None:
        self.member = member
        self.frames: list[str] = []
        self.closed: tuple[int, str] | None = None

    def offer(self, data: str) -> bool:
        self.frames.append(data)
        return True

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def parsed(self) -> list[Frame]:
        return chain(self.frames, Frame.model_validate_json(self.frames[0]).seq_from)


@pytest.fixture
async def log() -> MemoryClassLog:
    return MemoryClassLog()


@pytest.fixture
async def room(log: MemoryClassLog) -> AsyncIterator[ClassRoom]:
    async def append(class_id: str, entries: Sequence[LogEvent]) -> None:
        await log.append(class_id, entries)

    r = ClassRoom("c1", log, "edge-a", append)
    r.start()
    await r.ready.wait()
    yield r
    await r.stop()


async def settle(room: ClassRoom, log: MemoryClassLog) -> None:
    head = await log.head("c1")
    for _ in range(300):
        if room.state.seq >= head and room.sweeper.idle:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("room did not catch up")


def entry(text: str, **kw: Any) -> LogEvent:
    return LogEvent(type="chat.message", actor="tea", data={"text": text}, **kw)


async def test_batches_waiting_for_a_pass_go_out_together(
    room: ClassRoom, log: MemoryClassLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    ann, tea = FakeSink(ANN), FakeSink(TEA)
    assert await room.join(ann, None, 100) is None
    assert await room.join(tea, None, 100) is None
    # A slow previous pass: the next one waits, and batches pile up for it.
    monkeypatch.setattr(sweep_module, "MIN_REST_S", 0.3)
    room.flush()
    await room.apply([])  # an empty pass sets the interval
    room.flush()
    sent = [f"m{i}" for i in range(40)]
    for i in range(0, 40, 4):
        await log.append("c1", [entry(t) for t in sent[i : i + 4]])
        await asyncio.sleep(0.005)
    await settle(room, log)
    frames = ann.parsed()
    assert texts(frames) == sent
    assert len(frames) <= 4  # welcome, then far fewer frames than batches
    assert texts(tea.parsed()) == sent


async def test_a_frame_never_exceeds_the_limit(
    room: ClassRoom, log: MemoryClassLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(room.sweeper, "max_frame", 2000)
    ann = FakeSink(ANN)
    assert await room.join(ann, None, 100) is None
    sent = [f"{i}:" + "x" * 300 for i in range(30)]
    await log.append("c1", [entry(t) for t in sent])
    await settle(room, log)
    assert all(len(f.encode()) <= 2000 for f in ann.frames[1:])
    assert texts(ann.parsed()) == sent


async def test_staff_only_batches_cost_students_nothing_until_they_matter(
    room: ClassRoom, log: MemoryClassLog
) -> None:
    ann, tea = FakeSink(ANN), FakeSink(TEA)
    assert await room.join(ann, None, 100) is None
    assert await room.join(tea, None, 100) is None
    for i in range(5):
        entry_ = LogEvent(
            type="member.left", audience=Audience.STAFF, data={"user_id": f"u{i}"}
        )
        await log.append("c1", [entry_])
        await settle(room, log)
    assert len(ann.frames) == 1  # the welcome only
    assert len(tea.frames) > 1
    await log.append("c1", [entry("now")])
    await settle(room, log)
    frames = ann.parsed()  # the range stayed contiguous
    assert texts(frames) == ["now"]
    assert frames[-1].seq_to == room.state.seq


async def test_a_member_joining_between_batches_gets_only_later_ones(
    room: ClassRoom, log: MemoryClassLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    ann = FakeSink(ANN)
    assert await room.join(ann, None, 100) is None
    monkeypatch.setattr(sweep_module, "MIN_REST_S", 0.5)
    room.flush()
    await room.apply([])
    room.flush()
    await log.append("c1", [entry("before")])
    for _ in range(100):
        if not room.sweeper.idle:
            break
        await asyncio.sleep(0.005)
    bob = FakeSink(BOB)
    assert await room.join(bob, None, 100) is None
    await log.append("c1", [entry("after")])
    await settle(room, log)
    assert texts(ann.parsed()) == ["before", "after"]
    welcome, *rest = bob.parsed()
    assert welcome.events[0].type == "welcome"
    assert texts(rest) == ["after"]


# --- rounds that yield between chunks -------------------------------------------


async def test_a_batch_arriving_mid_round_reaches_the_rest_in_that_round(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sweep_module, "CHUNK", 2)
    slow: list[FakeSink] = []
    sweeper = sweep_module.Sweeper(32 * 1024, slow.append)  # type: ignore[arg-type]
    sinks = [
        FakeSink(Member(user_id=f"s{i}", name="S", role=Role.STUDENT)) for i in range(6)
    ]
    for sink in sinks:
        sweeper.add(sink)
    sweeper.send(Batch(0, 1, [chat(1, "a")]))
    await asyncio.sleep(0)  # the first chunk: two members
    assert [len(s.frames) for s in sinks] == [1, 1, 0, 0, 0, 0]
    sweeper.send(Batch(1, 2, [chat(2, "b")]))
    for _ in range(20):
        await asyncio.sleep(0.005)
    assert sweeper.idle and not slow
    # Those visited late got both in one write; the early ones, two writes.
    for sink in sinks[:2]:
        assert [texts([f]) for f in chain(sink.frames, 0)] == [["a"], ["b"]]
    for sink in sinks[2:]:
        assert [texts([f]) for f in chain(sink.frames, 0)] == [["a", "b"]]


async def test_flush_delivers_everything_at_once_even_mid_round(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sweep_module, "CHUNK", 1)
    sweeper = sweep_module.Sweeper(32 * 1024, lambda sink: None)
    sinks = [
        FakeSink(Member(user_id=f"s{i}", name="S", role=Role.STUDENT)) for i in range(4)
    ]
    tea = FakeSink(TEA)
    for sink in [*sinks, tea]:
        sweeper.add(sink)
    sweeper.send(Batch(0, 1, [chat(1, "a")]))
    await asyncio.sleep(0)
    sweeper.send(Batch(1, 2, [chat(2, "b")]))
    sweeper.flush()
    assert sweeper.idle
    for sink in [*sinks, tea]:
        assert texts(chain(sink.frames, 0)) == ["a", "b"]


async def test_a_member_leaving_mid_round_is_skipped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sweep_module, "CHUNK", 1)
    sweeper = sweep_module.Sweeper(32 * 1024, lambda sink: None)
    sinks = [
        FakeSink(Member(user_id=f"s{i}", name="S", role=Role.STUDENT)) for i in range(3)
    ]
    for sink in sinks:
        sweeper.add(sink)
    sweeper.send(Batch(0, 1, [chat(1, "a")]))
    await asyncio.sleep(0)
    sweeper.remove(sinks[2])
    for _ in range(10):
        await asyncio.sleep(0.005)
    assert sweeper.idle
    assert [len(s.frames) for s in sinks] == [1, 1, 0]
    assert len(sweeper) == 2
