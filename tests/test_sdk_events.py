"""Typed events from protocol events, and the state they maintain."""

from __future__ import annotations

import logging

import pytest

from liveclass import sdk
from liveclass.sdk.events import EVENT_CLASSES, parse_event
from liveclass.sdk.protocol import EVENT_TYPES, Event
from liveclass.sdk.provisional import Provisional


def ev(type_: str, at: int | None = None, /, **data: object) -> sdk.ClassEvent:
    return parse_event(Event(type=type_, seq=at, ts=5.0, actor="a1", data=data))


def test_every_protocol_event_type_has_a_class() -> None:
    assert set(EVENT_CLASSES) == set(EVENT_TYPES)


def test_chat_message() -> None:
    message = ev("chat.message", 7, text="hi", name="Ada", role="teacher")
    assert isinstance(message, sdk.ChatMessage)
    assert (message.seq, message.ts, message.actor) == (7, 5.0, "a1")
    assert message.role is sdk.Role.TEACHER and message.type == "chat.message"


def test_chat_deleted_keeps_both_numbers() -> None:
    deleted = ev("chat.deleted", 9, seq=7)
    assert isinstance(deleted, sdk.ChatDeleted)
    assert (deleted.seq, deleted.message_seq) == (9, 7)


def test_unknown_type_and_invalid_fields_fall_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    future = ev("sticker.sent", 3, sticker="cat")
    assert isinstance(future, sdk.UnknownEvent)
    assert future.type == "sticker.sent" and future.data == {"sticker": "cat"}
    with caplog.at_level(logging.WARNING):
        broken = ev("poll.opened", 4, poll_id="p")
    assert isinstance(broken, sdk.UnknownEvent) and broken.type == "poll.opened"
    assert "invalid fields" in caplog.text


def test_extra_fields_are_ignored() -> None:
    count = ev("presence.count", None, count=3, by_edge={"a": 1})
    assert isinstance(count, sdk.PresenceCount) and count.count == 3


def test_state_follows_events() -> None:
    state = sdk.ClassState()
    welcome = ev(
        "welcome",
        None,
        member={"user_id": "u1", "name": "Una", "role": "student"},
        edge_id="e1",
        snapshot={"presence_count": 3, "chat_enabled": False},
    )
    state.apply(welcome)
    assert state.user_id == "u1" and not state.chat_enabled
    assert state.presence_count == 3

    state.apply(ev("chat.message", 2, text="one"))
    state.apply(ev("chat.message", 3, text="two"))
    state.apply(ev("chat.deleted", 4, seq=2))
    assert [m.text for m in state.chat] == ["two"]

    state.apply(ev("hand.raised", 5, user_id="u1", name="Una"))
    state.apply(ev("hand.raised", 6, user_id="u2", name="Bo"))
    assert state.hand_raised
    state.apply(ev("hand.called", 7, user_id="u1"))
    assert not state.hand_raised and [h.user_id for h in state.hands] == ["u2"]

    state.apply(ev("poll.opened", 8, poll_id="p", question="q", options=["a", "b"]))
    state.apply(ev("poll.tally", None, poll_id="p", counts=[1, 2]))
    assert state.poll is not None and state.poll_counts == [1, 2]
    state.apply(ev("poll.closed", 9, poll_id="p", counts=[2, 2], votes=4))
    assert state.poll is None and state.last_poll is not None

    state.apply(ev("chat.muted", 10, user_id="u1", muted=True))
    assert state.muted
    state.apply(ev("media.live", 11, master_url="https://e/m.m3u8"))
    assert state.media is not None
    state.apply(ev("class.ended", 12))
    assert state.ended


def test_state_reset_replaces_everything() -> None:
    state = sdk.ClassState(user_id="u1")
    state.apply(ev("chat.message", 2, text="old"))
    state.apply(
        ev(
            "state.reset",
            None,
            snapshot={
                "chat": [{"type": "chat.message", "seq": 50, "data": {"text": "new"}}],
                "quiz": {"quiz_id": "q", "question": "?", "options": ["a", "b"]},
            },
        )
    )
    assert [m.text for m in state.chat] == ["new"]
    assert state.quiz is not None and state.quiz.quiz_id == "q"


def provisional(text: str, pid: str, ts: float = 5.0) -> sdk.ChatMessage:
    event = Event(
        type="chat.message",
        ts=ts,
        actor="a1",
        data={"text": text, "provisional": True, "provisional_id": pid},
    )
    message = parse_event(event)
    assert isinstance(message, sdk.ChatMessage) and message.provisional
    return message


def test_a_provisional_message_is_confirmed_once() -> None:
    pending = Provisional()
    shown = provisional("hi", "p1")
    assert pending.settle(shown) is shown and shown.seq is None
    assert pending.settle(provisional("hi", "p1")) is None  # shown already

    numbered = ev("chat.message", 9, text="hi", provisional_id="p1")
    assert isinstance(numbered, sdk.ChatMessage)
    confirmed = pending.settle(numbered)
    assert isinstance(confirmed, sdk.ChatConfirmed)
    assert (confirmed.seq, confirmed.provisional_id) == (9, "p1")
    assert confirmed.message is numbered and len(pending) == 0
    # Numbered again (a resume replaying it): a plain message, as before.
    assert pending.settle(numbered) is numbered


def test_confirmation_from_another_edge_matches_sender_time_and_text() -> None:
    pending = Provisional()
    pending.settle(provisional("hi", "p1", ts=7.5))
    other = ev("chat.message", 3, text="hi")  # same ts (5.0): not the same
    assert pending.settle(other) is other
    moved = parse_event(
        Event(type="chat.message", seq=4, ts=7.5, actor="a1", data={"text": "hi"})
    )
    assert isinstance(moved, sdk.ChatMessage)
    confirmed = pending.settle(moved)
    assert isinstance(confirmed, sdk.ChatConfirmed)
    assert confirmed.provisional_id == "p1"


def test_provisional_messages_are_bounded() -> None:
    pending = Provisional(limit=2)
    for n in range(3):
        pending.settle(provisional(f"m{n}", f"p{n}", ts=float(n)))
    assert len(pending) == 2
    first = ev("chat.message", 1, text="m0", provisional_id="p0")
    assert pending.settle(first) is first  # forgotten: shown as it comes


def test_state_puts_a_confirmed_message_in_log_order() -> None:
    state = sdk.ClassState()
    pending = Provisional()
    for event in (
        provisional("mine", "p1"),
        ev("chat.message", 10, text="theirs"),
        ev("chat.message", 11, text="mine", provisional_id="p1"),
    ):
        assert isinstance(event, sdk.ChatMessage)
        settled = pending.settle(event)
        assert settled is not None
        state.apply(settled)
    assert [(m.seq, m.text) for m in state.chat] == [(10, "theirs"), (11, "mine")]
