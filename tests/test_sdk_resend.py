"""What the SDK sends again after a reconnect, and what edges make of it."""

from __future__ import annotations

from liveclass.edge_node.rules import ClassState, Validator
from liveclass.origin.contract import LogEvent
from liveclass.sdk import protocol as p
from liveclass.sdk.events import (
    ChatMessage,
    ErrorEvent,
    HandRaised,
    PollClosed,
    QuizClosed,
)
from liveclass.sdk.protocol import ErrorCode, Member, Role
from liveclass.sdk.resend import MAX_UNSEEN_CHAT, Unconfirmed

ANN = Member(user_id="ann", name="Ann", role=Role.STUDENT)


def test_chat_is_sent_again_until_it_comes_back_numbered() -> None:
    kept = Unconfirmed("ann")
    first, second = p.ChatSend(ref="r1", text="one"), p.ChatSend(ref="r2", text="two")
    kept.sent(first)
    kept.sent(second)
    assert kept.again() == [first, second]
    # Another member's message with the same ref, or a provisional one,
    # does not settle it; its own numbered one does.
    kept.seen(ChatMessage(seq=3, actor="bob", text="one", ref="r1"))
    kept.seen(ChatMessage(actor="ann", text="one", ref="r1", provisional=True))
    assert len(kept) == 2
    kept.seen(ChatMessage(seq=4, actor="ann", text="one", ref="r1"))
    assert kept.again() == [second]
    # A refusal settles it too, and the app sees that refusal.
    assert kept.seen(ErrorEvent(code=ErrorCode.SLOW_MODE, ref="r2"))
    assert kept.again() == [] and len(kept) == 0


def test_only_the_latest_vote_is_sent_again_under_a_new_ref() -> None:
    kept = Unconfirmed("ann")
    kept.sent(p.PollVote(ref="v1", poll_id="p1", option=0))
    kept.sent(p.PollVote(ref="v2", poll_id="p1", option=2))
    kept.sent(p.QuizAnswer(ref="a1", quiz_id="q1", option=1))
    kept.sent(p.QuizAnswer(ref="a2", quiz_id="q1", option=3))
    vote, answer = kept.again()
    assert isinstance(vote, p.PollVote) and vote.option == 2
    assert vote.ref not in ("v1", "v2")
    # Only the first answer counts, so only the first is sent again.
    assert isinstance(answer, p.QuizAnswer) and answer.option == 1
    # The copy's refusal is kept from the app; the poll stays unconfirmed
    # until it closes (votes never come back to the voter).
    refused = ErrorEvent(code=ErrorCode.CONFLICT, ref=answer.ref)
    assert kept.seen(refused) is False
    kept.seen(PollClosed(poll_id="p1", counts=[0, 0, 1]))
    kept.seen(QuizClosed(quiz_id="q1", correct=1))
    assert kept.again() == []


def test_a_hand_is_raised_again_until_seen_in_the_queue() -> None:
    kept = Unconfirmed("ann")
    kept.sent(p.HandRaise(ref="h1"))
    (copy,) = kept.again()
    assert isinstance(copy, p.HandRaise)
    kept.seen(HandRaised(seq=5, user_id="bob"))
    assert len(kept) == 1
    kept.seen(HandRaised(seq=6, user_id="ann"))
    assert kept.again() == []
    kept.sent(p.HandRaise(ref="h2"))
    kept.sent(p.HandLower(ref="h3"))
    assert kept.again() == []


def test_unseen_chat_is_bounded() -> None:
    kept = Unconfirmed("ann")
    for n in range(MAX_UNSEEN_CHAT + 5):
        kept.sent(p.ChatSend(ref=f"r{n}", text=str(n)))
    again = kept.again()
    assert len(again) == MAX_UNSEEN_CHAT and again[0].ref == "r5"


def test_a_chat_sent_twice_is_folded_once() -> None:
    """Two edges take the same message (the first died after appending it):
    both entries get the same id, and every reader folds the second as a
    duplicate; a message without a ref gets an id of its own."""
    state = ClassState("c1")
    message = p.ChatSend(ref="r1", text="hello")
    entries = []
    for edge in ("edge-a", "edge-b"):
        outcome = Validator(edge).check(state, ANN, message, now=100.0)
        (entry,) = outcome.entries
        entries.append(entry)
    assert entries[0].id == entries[1].id
    assert entries[0].data["ref"] == "r1"
    first = state.fold(entries[0].model_copy(update={"seq": 1, "actor": "ann"}))
    second = state.fold(entries[1].model_copy(update={"seq": 2, "actor": "ann"}))
    assert first.deliver is not None and second.deliver is None
    assert [m["data"]["text"] for m in state.chat.recent] == ["hello"]
    # Another class, or another member, with the same ref: another id.
    other = Validator("edge-a").check(ClassState("c2"), ANN, message, now=100.0)
    assert other.entries[0].id != entries[0].id
    # The same ref for another text (a client that reuses refs) is another
    # message, not a copy.
    reused = p.ChatSend(ref="r1", text="something else")
    (other_text,) = Validator("edge-a").check(state, ANN, reused, now=101.0).entries
    assert other_text.id != entries[0].id
    folded = state.fold(other_text.model_copy(update={"seq": 3, "actor": "ann"}))
    assert folded.deliver is not None
    plain = LogEvent(type="chat.message", data={"text": "x"})
    assert state.fold(plain.model_copy(update={"seq": 4})).deliver is not None
