"""One edge's joins and leaves of a tick as one ``presence.changes`` entry:
batching, the edge's fold, what staff receive, and the origin's attendance."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from liveclass.edge_node.batcher import merge_batches
from liveclass.edge_node.fanout import (
    Batch,
    entry_jsons,
    event_json,
    member_frames,
    split_items,
)
from liveclass.edge_node.rules import ClassState
from liveclass.edge_node.rules.presence import presence_entry
from liveclass.origin.api.models import ClassInfo, ClassStatus
from liveclass.origin.classlog import MemoryClassLog
from liveclass.origin.contract import (
    PRESENCE_CHANGES,
    Audience,
    LogEvent,
    presence_events,
)
from liveclass.origin.reconcile import Reconciler
from liveclass.origin.store import Store, schema
from liveclass.sdk.events import MemberJoined, MemberLeft, parse_event
from liveclass.sdk.protocol import Frame, Member, Role

TEA = Member(user_id="tea", name="Tea", role=Role.TEACHER)
ANN = Member(user_id="ann", name="Ann", role=Role.STUDENT)
BOB = Member(user_id="bob", name="Bob", role=Role.STUDENT)


def joined(member: Member, edge: str = "edge-a") -> LogEvent:
    return presence_entry("member.joined", member, edge)


def left(member: Member, edge: str = "edge-a") -> LogEvent:
    return presence_entry("member.left", member, edge)


def numbered(entries: list[LogEvent], first: int = 1) -> list[LogEvent]:
    return [e.model_copy(update={"seq": first + i}) for i, e in enumerate(entries)]


def test_a_ticks_joins_and_leaves_merge_into_one_entry_in_order() -> None:
    chat = LogEvent(type="chat.message", data={"text": "hi"})
    merged = merge_batches([joined(ANN), chat, left(ANN), joined(BOB)])
    assert [e.type for e in merged] == [PRESENCE_CHANGES, "chat.message"]
    assert merged[0].data["changes"] == [
        ["+", "ann", "Ann", "student"],
        ["-", "ann", "", ""],
        ["+", "bob", "Bob", "student"],
    ]
    assert merged[0].audience is Audience.STAFF and merged[0].edge_id == "edge-a"


def test_a_presence_reset_starts_a_new_merged_entry() -> None:
    # Changes before a reset are void at it; those after must follow it.
    reset = LogEvent(type="presence.edge", audience=Audience.EDGES, data={})
    merged = merge_batches([left(ANN), reset, joined(BOB)])
    assert [e.type for e in merged] == [
        PRESENCE_CHANGES,
        "presence.edge",
        PRESENCE_CHANGES,
    ]


def test_the_edge_folds_changes_in_order_and_delivers_those_that_counted() -> None:
    state = ClassState("c1")
    removed = LogEvent(type="member.removed", data={"user_id": "bob"})
    [changes] = merge_batches([joined(ANN), left(ANN), joined(ANN), joined(BOB)])
    folded = [state.fold(e) for e in numbered([removed, changes])]
    assert state.presence.count == 1 and "ann" in state.presence
    deliver = folded[1].deliver
    assert deliver is not None and folded[1].presence_changed
    # Bob was removed before: his join never counts, and staff don't see it.
    assert [c[:2] for c in deliver.data["changes"]] == [
        ["+", "ann"],
        ["-", "ann"],
        ["+", "ann"],
    ]


def test_staff_receive_the_member_events_at_the_entry_number() -> None:
    [changes] = numbered(merge_batches([joined(ANN), left(BOB)]), first=7)
    batch = Batch(6, 7, [changes])
    staff = Frame.model_validate_json(batch.for_member(TEA))
    assert [(e.type, e.seq) for e in staff.events] == [
        ("member.joined", 7),
        ("member.left", 7),
    ]
    first, second = (parse_event(e) for e in staff.events)
    assert isinstance(first, MemberJoined) and first.name == "Ann"
    assert isinstance(second, MemberLeft) and second.user_id == "bob"
    assert Frame.model_validate_json(batch.for_member(ANN)).events == []
    # A resuming staff member gets the same events from the log.
    [frame] = member_frames([changes], TEA, 6, 7)
    assert Frame.model_validate_json(frame).events == staff.events


@pytest.mark.parametrize("worker", [1, None])
def test_changes_are_encoded_as_the_entries_they_stand_for(worker: int | None) -> None:
    # Staff get each change as its own entry would be encoded, malformed
    # items skipped, the writing process kept, names escaped alike.
    data: dict[str, Any] = {
        "changes": [
            ["+", "ann", 'Ann "Zoë"', "ta"],
            ["-", "bob", "", ""],
            ["+", "cid"],
            ["?", "dan"],
            "malformed",
        ],
    }
    if worker is not None:
        data["worker"] = worker
    changes = LogEvent(
        seq=9,
        type=PRESENCE_CHANGES,
        edge_id="edge-a",
        audience=Audience.STAFF,
        data=data,
    )
    for staff in (True, False):
        expected = [event_json(e, staff) for e in presence_events(changes)]
        assert entry_jsons(changes, staff) == expected
    assert len(entry_jsons(changes, True)) == 3


def test_frames_are_not_split_between_events_of_one_entry() -> None:
    # A client skips events at or below the end of the frame it had.
    items = [
        (seq, json.dumps(c * 40)) for seq, c in ((1, "a"), (2, "b"), (2, "c"), (3, "d"))
    ]
    frames = [json.loads(f) for f in split_items(0, 3, items, limit=120)]
    assert [(f["seq_from"], f["seq_to"]) for f in frames] == [(0, 1), (1, 2), (2, 3)]
    assert [len(f["events"]) for f in frames] == [1, 2, 1]


def test_change_ids_are_stable_and_ordered() -> None:
    [changes] = merge_batches([joined(ANN)] * 12)
    ids = [e.id for e in presence_events(changes)]
    assert ids == [e.id for e in presence_events(changes)]
    assert ids == sorted(ids) and len(set(ids)) == 12


async def _store(tmp_path: Path) -> Store:
    store = Store.open(f"sqlite+aiosqlite:///{tmp_path}/origin.db")
    await store.migrate()
    await store.create_class(
        ClassInfo(
            id="c1",
            title="Physics",
            status=ClassStatus.LIVE,
            max_members=100,
            created_at=1.0,
        )
    )
    return store


async def _sessions(store: Store) -> list[tuple[str, int, bool]]:
    """``(edge_id, join_seq, open)`` of each attendance row, in join order."""
    table = schema.attendance
    query = select(table).order_by(table.c.join_seq, table.c.event_id)
    async with store.engine.connect() as conn:
        rows = (await conn.execute(query)).mappings().all()
    return [(r["edge_id"], r["join_seq"], r["left_at"] is None) for r in rows]


async def test_attendance_from_merged_changes_is_idempotent_and_edge_scoped(
    tmp_path: Path,
) -> None:
    store = await _store(tmp_path)
    log = MemoryClassLog()
    try:
        # Ada joins on edge A, leaves and comes back in one tick; she also
        # joined on edge B, where edge A's leave must not close her session.
        on_b = merge_batches([joined(ANN, "edge-b")])
        on_a = merge_batches([joined(ANN), left(ANN), joined(ANN), left(ANN)])
        late = merge_batches([left(ANN)])
        entries = await log.append("c1", [*on_b, *on_a, *late])
        assert await Reconciler(store, log, "c1").drain() == 3
        sessions = await _sessions(store)
        assert sessions == [
            ("edge-b", 1, True),
            ("edge-a", 2, False),
            ("edge-a", 2, False),
        ]

        # The same entries again (a crash before the offset moved): no change.
        await store.persist("c1", entries)
        assert await _sessions(store) == sessions
    finally:
        await log.close()
        await store.close()


async def test_a_leave_in_the_same_entry_closes_only_a_session_opened_before_it(
    tmp_path: Path,
) -> None:
    store = await _store(tmp_path)
    try:
        [changes] = numbered(merge_batches([left(ANN), joined(ANN)]))
        await store.persist("c1", [changes])
        assert await _sessions(store) == [("edge-a", 1, True)]
    finally:
        await store.close()
