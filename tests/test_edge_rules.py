"""The edge's state machines, without sockets or a log."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from liveclass.edge_node.batcher import merge_batches
from liveclass.edge_node.room import PRESENCE_HEARTBEAT_S
from liveclass.edge_node.rules import ClassState, Validator
from liveclass.edge_node.rules.chat import RateLimiter
from liveclass.edge_node.rules.hands import HandQueue
from liveclass.edge_node.rules.presence import Presence, presence_entry
from liveclass.edge_node.rules.state import EDGE_TIMEOUT_S
from liveclass.edge_node.rules.validate import ended_entry, flushed_entry
from liveclass.origin.contract import Audience, LogEvent
from liveclass.origin.results.quizzes import points
from liveclass.sdk.protocol import CLIENT_MESSAGE, ErrorCode, Member, Role

TEACHER = Member(user_id="t", name="Tea", role=Role.TEACHER)
TA = Member(user_id="ta", name="Tom", role=Role.TA)
ANN = Member(user_id="ann", name="Ann", role=Role.STUDENT)
BOB = Member(user_id="bob", name="Bob", role=Role.STUDENT)


class Class:
    """A class state, a validator and a log numbered as a real one would."""

    def __init__(self) -> None:
        self.state = ClassState("c1")
        self.validator = Validator("edge-a")
        self.log: list[LogEvent] = []
        self.seq = itertools.count(1)
        self.now = 1000.0

    def send(self, member: Member, **msg: Any) -> list[Any]:
        """Validate a message and fold what it appends; return the deliveries
        (or the error codes)."""
        parsed = CLIENT_MESSAGE.validate_python(msg)
        outcome = self.validator.check(self.state, member, parsed, self.now)
        if outcome.reply:
            return [e.data.get("code", e.type) for e in outcome.reply]
        return self.fold(merge_batches(outcome.entries))

    def fold(self, entries: list[LogEvent]) -> list[Any]:
        """Number and fold ``entries``; a poll closing on this edge gets its
        marker right after, as the class room appends it (its deliveries
        take the place of the close's)."""
        out = []
        for entry in entries:
            entry = entry.model_copy(update={"seq": next(self.seq)})
            self.log.append(entry)
            folded = self.state.fold(entry)
            if folded.closing is not None:
                kind, item_id = folded.closing
                [folded.deliver] = self.fold([flushed_entry(kind, item_id, "edge-a")])
            out.append(folded.deliver)
        return out

    def join(self, member: Member, edge: str = "edge-a") -> None:
        data = {"user_id": member.user_id, "name": member.name, "role": member.role}
        self.fold([LogEvent(type="member.joined", edge_id=edge, data=data)])


@pytest.fixture
def cls() -> Class:
    return Class()


def test_chat_message_is_logged_with_name_and_role(cls: Class) -> None:
    [entry] = cls.send(ANN, type="chat.send", text=" hi ")
    assert entry.type == "chat.message"
    assert entry.data == {"text": "hi", "name": "Ann", "role": "student"}
    assert entry.actor == "ann" and entry.edge_id == "edge-a"


def test_chat_rate_limit_allows_a_burst_then_refuses(cls: Class) -> None:
    for _ in range(5):
        assert cls.send(ANN, type="chat.send", text="x")[0].type == "chat.message"
    assert cls.send(ANN, type="chat.send", text="x") == ["rate_limited"]
    cls.now += 2.0  # 5 per 10 s: one token back after 2 s
    assert cls.send(ANN, type="chat.send", text="x")[0].type == "chat.message"
    # Staff are not limited.
    for _ in range(10):
        assert cls.send(TEACHER, type="chat.send", text="x")[0] is not None


def test_leaving_and_coming_back_buys_no_fresh_burst(cls: Class) -> None:
    for _ in range(5):
        cls.send(ANN, type="chat.send", text="x")
    cls.validator.forget(ANN.user_id, cls.now)  # Ann's last connection closes
    assert cls.send(ANN, type="chat.send", text="x") == ["rate_limited"]

    cls.now += 10.0  # refilled: now the edge may drop what it kept about her
    cls.validator.forget(ANN.user_id, cls.now)
    assert ANN.user_id not in cls.validator.chat_limit._buckets
    for _ in range(5):
        assert cls.send(ANN, type="chat.send", text="x")[0].type == "chat.message"


def test_a_second_poll_in_the_same_tick_is_refused(cls: Class) -> None:
    question = {"type": "poll.open", "question": "Q?", "options": ["a", "b"]}
    first = cls.validator.check(
        cls.state, TEACHER, CLIENT_MESSAGE.validate_python(question), cls.now
    )
    assert [e.type for e in first.entries] == ["poll.opened"]
    # Not folded yet: the log has not answered within this tick.
    assert cls.send(TEACHER, **question) == ["conflict"]


def test_ending_the_class_closes_the_open_poll_with_its_votes(cls: Class) -> None:
    cls.join(ANN)
    [opened] = cls.send(TEACHER, type="poll.open", question="Q?", options=["a", "b"])
    poll_id = opened.data["poll_id"]
    cls.send(ANN, type="poll.vote", poll_id=poll_id, option=1)

    closed, ending = cls.send(TEACHER, type="class.end")
    assert (closed.type, closed.data["counts"]) == ("poll.closed", [0, 1])
    assert ending is None and cls.state.end_due  # members see the end next
    assert cls.send(TEACHER, type="poll.open", question="?", options=["a", "b"]) == [
        "conflict"
    ]
    [ended] = cls.fold([ended_entry("c1")])
    assert ended.type == "class.ended" and not cls.state.end_due


def test_the_class_ends_once_every_edge_has_flushed_its_votes(cls: Class) -> None:
    """A vote another edge holds when the teacher ends the class counts: the
    class ends only once that edge's votes and marker are in."""
    cls.join(ANN)
    cls.join(BOB, "edge-b")
    [opened] = cls.send(TEACHER, type="poll.open", question="Q?", options=["a", "b"])
    poll_id = opened.data["poll_id"]
    closed, ending = cls.send(TEACHER, type="class.end")
    assert closed is None and ending is None
    assert cls.state.ending and not cls.state.end_due
    held = {"poll_id": poll_id, "votes": [["bob", 0, cls.now - 0.1]]}
    votes = LogEvent(
        type="poll.votes", edge_id="edge-b", audience=Audience.EDGES, data=held
    )
    [_, final] = cls.fold([votes, flushed_entry("poll", poll_id, "edge-b")])
    assert final.type == "poll.closed" and final.data["counts"] == [1, 0]
    assert cls.state.end_due


def test_chat_too_long_and_blank(cls: Class) -> None:
    assert cls.send(ANN, type="chat.send", text="x" * 501) == ["too_long"]
    assert cls.send(ANN, type="chat.send", text="   ") == ["invalid"]


def test_slow_mode_mute_and_chat_off(cls: Class) -> None:
    assert cls.send(ANN, type="chat.slow_mode", seconds=5) == ["forbidden"]
    [settings] = cls.send(TEACHER, type="chat.slow_mode", seconds=5)
    assert settings.data == {"enabled": True, "slow_mode_s": 5.0}
    cls.send(ANN, type="chat.send", text="one")
    assert cls.send(ANN, type="chat.send", text="two") == ["slow_mode"]
    cls.now += 5
    assert cls.send(ANN, type="chat.send", text="two")[0].type == "chat.message"

    [muted] = cls.send(TA, type="chat.mute", user_id="bob")
    assert muted.audience is Audience.USER and muted.user == "bob"
    assert cls.send(BOB, type="chat.send", text="hey") == ["muted"]
    cls.send(TA, type="chat.mute", user_id="bob", muted=False)
    cls.now += 10
    assert cls.send(BOB, type="chat.send", text="hey")[0].type == "chat.message"

    [off] = cls.send(TEACHER, type="chat.enable", enabled=False)
    assert off.data == {"enabled": False, "slow_mode_s": 5.0}
    cls.now += 10
    assert cls.send(BOB, type="chat.send", text="hey") == ["chat_off"]
    assert cls.send(TA, type="chat.send", text="staff still talk")[0] is not None


def test_delete_removes_from_recent_chat(cls: Class) -> None:
    [msg] = cls.send(ANN, type="chat.send", text="oops")
    cls.send(TEACHER, type="chat.delete", seq=msg.seq)
    assert cls.state.snapshot(BOB)["chat"] == []
    assert cls.send(TEACHER, type="chat.delete", seq=999) == ["not_found"]


def test_recent_chat_keeps_the_last_50(cls: Class) -> None:
    for i in range(60):
        cls.send(TEACHER, type="chat.send", text=f"m{i}")
    recent = cls.state.snapshot(ANN)["chat"]
    assert len(recent) == 50 and recent[0]["data"]["text"] == "m10"


def test_removed_member_is_refused_and_leaves_the_queue(cls: Class) -> None:
    cls.join(TEACHER)
    cls.send(BOB, type="hand.raise")
    assert cls.send(ANN, type="member.remove", user_id="bob") == ["forbidden"]
    [removed] = cls.send(TA, type="member.remove", user_id="bob")
    assert removed.type == "member.removed"
    assert "bob" in cls.state.removed and "bob" not in cls.state.hands
    assert cls.send(BOB, type="chat.send", text="let me in") == ["forbidden"]
    assert cls.send(TA, type="member.remove", user_id="t") == ["forbidden"]


def test_hand_queue_order_lower_and_call_next(cls: Class) -> None:
    cls.send(ANN, type="hand.raise")
    cls.send(BOB, type="hand.raise")
    assert cls.send(ANN, type="hand.raise") == ["conflict"]
    assert [h["user_id"] for h in cls.state.hands.snapshot()] == ["ann", "bob"]
    assert cls.send(ANN, type="hand.lower", user_id="bob") == ["forbidden"]
    [called] = cls.send(TEACHER, type="hand.call_next")
    assert called.data == {"user_id": "ann", "name": "Ann"}
    cls.send(BOB, type="hand.lower")
    assert cls.send(TEACHER, type="hand.call_next") == ["not_found"]


def test_hand_queue_ignores_duplicates() -> None:
    queue = HandQueue()
    assert queue.raise_hand("a", "A") and not queue.raise_hand("a", "A")
    assert queue.first() == ("a", "A") and queue.lower("a") and not queue.lower("a")


def test_poll_votes_are_changeable_and_counted_at_close(cls: Class) -> None:
    [opened] = cls.send(TEACHER, type="poll.open", question="Q?", options=["a", "b"])
    poll_id = opened.data["poll_id"]
    # Votes never reach members: they are internal entries.
    assert cls.send(ANN, type="poll.vote", poll_id=poll_id, option=0) == [None]
    cls.send(BOB, type="poll.vote", poll_id=poll_id, option=0)
    cls.send(ANN, type="poll.vote", poll_id=poll_id, option=1)
    assert cls.send(ANN, type="poll.vote", poll_id=poll_id, option=7) == ["invalid"]
    assert cls.send(ANN, type="poll.vote", poll_id="nope", option=0) == ["not_found"]
    assert cls.state.tally() == {"poll_id": poll_id, "counts": [1, 1]}
    assert cls.state.snapshot(ANN)["poll"]["my_vote"] == 1
    assert "counts" not in cls.state.snapshot(ANN)["poll"]
    assert cls.state.snapshot(TA)["poll"]["counts"] == [1, 1]

    [closed] = cls.send(TA, type="poll.close", poll_id=poll_id)
    assert closed.data["counts"] == [1, 1] and closed.data["votes"] == 2
    assert cls.send(ANN, type="poll.vote", poll_id=poll_id, option=0) == ["not_found"]
    # A second close (another edge's timer) is folded away.
    assert cls.fold([LogEvent(type="poll.closed", data={"poll_id": poll_id})]) == [None]


def test_poll_votes_after_the_deadline_do_not_count(cls: Class) -> None:
    [opened] = cls.send(
        TEACHER, type="poll.open", question="Q?", options=["a", "b"], duration_s=10
    )
    poll_id = opened.data["poll_id"]
    late = {"poll_id": poll_id, "votes": [["ann", 0, cls.now + 11]]}
    cls.fold([LogEvent(type="poll.votes", audience=Audience.EDGES, data=late)])
    assert cls.state.tally()["counts"] == [0, 0]
    cls.now += 11
    assert cls.send(BOB, type="poll.vote", poll_id=poll_id, option=0) == ["conflict"]


def test_merge_batches_makes_one_entry_per_poll_per_tick() -> None:
    votes = [
        LogEvent(type="poll.votes", data={"poll_id": "p", "votes": [[u, 0, 1.0]]})
        for u in "abc"
    ]
    close = LogEvent(type="poll.closed", data={"poll_id": "p"})
    merged = merge_batches([*votes, close])
    assert [e.type for e in merged] == ["poll.votes", "poll.closed"]
    assert [v[0] for v in merged[0].data["votes"]] == ["a", "b", "c"]
    assert votes[0].data["votes"] == [["a", 0, 1.0]]  # inputs untouched


def test_quiz_scores_by_correctness_and_speed(cls: Class) -> None:
    assert points(True, 0, 20) == 1000
    assert points(True, 20, 20) == 500
    assert points(True, 10, 20) == 750
    assert points(False, 0, 20) == 0

    [asked] = cls.send(
        TEACHER, type="quiz.ask", question="2+2", options=["3", "4"], correct=1
    )
    quiz_id = asked.data["quiz_id"]
    assert asked.data["correct"] == 1  # stripped for students by the fan-out
    cls.now += 10
    cls.send(ANN, type="quiz.answer", quiz_id=quiz_id, option=1)
    assert cls.send(ANN, type="quiz.answer", quiz_id=quiz_id, option=0) == ["conflict"]
    cls.send(BOB, type="quiz.answer", quiz_id=quiz_id, option=0)
    assert cls.state.snapshot(ANN)["quiz"]["my_answer"] == 1
    assert "correct" not in cls.state.snapshot(ANN)["quiz"]

    [closed] = cls.send(TA, type="quiz.close", quiz_id=quiz_id)
    board = closed.data["leaderboard"]
    assert board[0] == {"user_id": "ann", "name": "Ann", "score": 750}
    assert board[1] == {"user_id": "bob", "name": "Bob", "score": 0}
    assert cls.state.quizzes.totals == {"ann": 750, "bob": 0}

    [asked] = cls.send(
        TEACHER, type="quiz.ask", question="1+1", options=["2", "3"], correct=0
    )
    cls.send(BOB, type="quiz.answer", quiz_id=asked.data["quiz_id"], option=0)
    cls.send(TA, type="quiz.close", quiz_id=asked.data["quiz_id"])
    assert cls.state.snapshot(BOB)["score_total"] == 1000
    assert cls.state.quizzes.leaderboard()[0]["user_id"] == "bob"


def test_quiz_answer_after_time_is_refused(cls: Class) -> None:
    [asked] = cls.send(
        TEACHER,
        type="quiz.ask",
        question="q",
        options=["a", "b"],
        correct=0,
        duration_s=5,
    )
    cls.now += 6
    quiz_id = asked.data["quiz_id"]
    assert cls.send(ANN, type="quiz.answer", quiz_id=quiz_id, option=0) == ["conflict"]
    cls.send(TEACHER, type="quiz.close", quiz_id=quiz_id)
    assert cls.send(
        TEACHER, type="quiz.ask", question="q", options=["a", "b"], correct=5
    ) == ["invalid"]


def test_presence_counts_a_user_on_two_devices_once() -> None:
    presence = Presence()
    presence.joined("e1", "ann", "Ann", "student")
    presence.joined("e2", "ann", "Ann", "student")
    presence.joined("e1", "bob", "Bob", "student")
    assert presence.count == 2 and presence.on_edge("e1") == 2
    presence.left("e1", "ann")
    assert presence.count == 2
    presence.left("e2", "ann")
    presence.left("e2", "ann")  # one too many: ignored
    assert presence.count == 1
    assert presence.members() == [{"user_id": "bob", "name": "Bob", "role": "student"}]


def test_presence_list_is_for_staff(cls: Class) -> None:
    cls.join(ANN)
    assert cls.send(ANN, type="presence.list") == ["forbidden"]
    outcome = cls.validator.check(
        cls.state, TA, CLIENT_MESSAGE.validate_python({"type": "presence.list"}), 0
    )
    assert outcome.reply[0].data["members"][0]["user_id"] == "ann"


def test_class_end_is_teacher_only_and_final(cls: Class) -> None:
    assert cls.send(TA, type="class.end") == ["forbidden"]
    [ended] = cls.send(TEACHER, type="class.end")
    assert ended.type == "class.ended" and cls.state.snapshot(ANN)["ended"]
    assert cls.send(ANN, type="chat.send", text="hello?") == ["conflict"]


def test_two_edges_folding_one_log_agree(cls: Class) -> None:
    cls.join(ANN, "edge-a")
    cls.join(BOB, "edge-b")
    [opened] = cls.send(TEACHER, type="poll.open", question="Q", options=["a", "b"])
    cls.send(ANN, type="poll.vote", poll_id=opened.data["poll_id"], option=1)
    cls.send(BOB, type="hand.raise")
    cls.send(TEACHER, type="poll.close", poll_id=opened.data["poll_id"])

    other = ClassState("c1")
    delivered = [other.fold(e).deliver for e in cls.log]
    again = ClassState("c1")
    assert [again.fold(e).deliver for e in cls.log] == delivered
    for member in (ANN, BOB, TA):
        assert other.snapshot(member) == cls.state.snapshot(member)


def test_rate_limiter_refills() -> None:
    limiter = RateLimiter(burst=2, per_s=2.0)
    assert limiter.allow("a", 0) and limiter.allow("a", 0)
    assert not limiter.allow("a", 0.5)
    assert limiter.allow("a", 1.0)


def test_error_codes_are_protocol_codes(cls: Class) -> None:
    codes = cls.send(ANN, type="poll.open", question="Q", options=["a", "b"])
    assert codes == [ErrorCode.FORBIDDEN.value]


def _entry(type_: str, edge: str, ts: float, **data: Any) -> LogEvent:
    audience = Audience.EDGES if type_ == "presence.edge" else Audience.STAFF
    return LogEvent(type=type_, edge_id=edge, ts=ts, audience=audience, data=data)


def test_an_edge_that_restarts_forgets_its_old_members() -> None:
    state = ClassState("c1")
    state.fold(_entry("member.joined", "a", 10, user_id="ann", name="A", role="x"))
    state.fold(_entry("member.joined", "b", 11, user_id="bob", name="B", role="x"))
    folded = state.fold(_entry("presence.edge", "a", 12, count=0, reset=True))
    assert folded.deliver is None and folded.presence_changed
    assert [m["user_id"] for m in state.presence.members()] == ["bob"]


def test_a_silent_edge_loses_its_members() -> None:
    state = ClassState("c1")
    state.fold(_entry("member.joined", "a", 100, user_id="ann", name="A", role="x"))
    state.fold(_entry("member.joined", "b", 100, user_id="bob", name="B", role="x"))
    # Edge b keeps writing heartbeats; edge a falls silent.
    ts, folded = 100.0, None
    while folded is None or not folded.dropped:
        ts += PRESENCE_HEARTBEAT_S
        folded = state.fold(_entry("presence.edge", "b", ts, count=1))
        if ts <= 100 + EDGE_TIMEOUT_S:
            assert not folded.dropped and state.presence.count == 2
    # Dropped at the first heartbeat past the timeout: within 15 s.
    assert ts - 100 <= min(15, EDGE_TIMEOUT_S + PRESENCE_HEARTBEAT_S)
    assert folded.presence_changed and folded.dropped == ("a",)
    assert [m["user_id"] for m in state.presence.members()] == ["bob"]


def test_a_dropped_edge_counts_again_from_its_roster() -> None:
    """An edge dropped while alive says who it holds; its reset voids what
    it wrote before (a join still queued), the roster counts each once."""
    state = ClassState("c1")
    state.fold(_entry("member.joined", "a", 100, user_id="ann", name="A", role="x"))
    state.fold(_entry("member.joined", "b", 100, user_id="bob", name="B", role="x"))
    folded = state.fold(_entry("presence.edge", "b", 100 + EDGE_TIMEOUT_S + 1))
    assert folded.dropped == ("a",) and state.presence.count == 1
    # Edge a's held entries arrive late: a join, then its roster (two pages).
    state.fold(_entry("member.joined", "a", 101, user_id="cy", name="C", role="x"))
    roster = [["ann", "A", "student"], ["cy", "C", "student"]]
    first = _entry("presence.edge", "a", 111, count=3, reset=True, roster=roster)
    assert state.fold(first).presence_changed
    page = [["dee", "D", "ta"], "junk", ["x"]]
    state.fold(_entry("presence.edge", "a", 111, count=3, roster=page))
    assert [m["user_id"] for m in state.presence.members()] == [
        "ann",
        "bob",
        "cy",
        "dee",
    ]
    # One leave per connection the roster counted: none is counted twice.
    state.fold(_entry("member.left", "a", 112, user_id="cy"))
    assert "cy" not in state.presence and state.presence.on_edge("a") == 2


def test_processes_of_one_edge_count_apart() -> None:
    """One process of a multi-process edge (re)opening the class, or going
    silent, touches only its own members."""
    state = ClassState("c1")
    state.fold(_entry("member.joined", "a", 100, user_id="ann", worker=0))
    state.fold(_entry("member.joined", "a", 100, user_id="bob", worker=1))
    assert state.presence.edges == ["a"] and state.presence.on_edge("a") == 2
    state.fold(_entry("presence.edge", "a", 101, count=0, reset=True, worker=1))
    assert [m["user_id"] for m in state.presence.members()] == ["ann"]
    state.fold(_entry("member.joined", "a", 102, user_id="bob", worker=1))
    # Worker 1 keeps beating, worker 0 falls silent and is dropped alone.
    late = 100 + EDGE_TIMEOUT_S + 1
    folded = state.fold(_entry("presence.edge", "a", late, worker=1))
    assert folded.dropped == ("a/0",)
    assert [m["user_id"] for m in state.presence.members()] == ["bob"]


def test_a_ticks_presence_changes_keep_their_process() -> None:
    """Merged per tick, a process's joins and leaves still count as its."""
    student = Member(user_id="s", name="S", role=Role.STUDENT)
    joined = presence_entry("member.joined", student, "a", worker=1)
    left = presence_entry("member.left", student, "a", worker=1)
    (merged,) = merge_batches([joined, left, joined])
    assert merged.data["worker"] == 1
    state = ClassState("c1")
    state.fold(merged.model_copy(update={"seq": 1}))
    reset = _entry("presence.edge", "a", merged.ts + 1, reset=True, worker=0)
    state.fold(reset)
    assert state.presence.members() == [
        {"user_id": "s", "name": "S", "role": "student"}
    ]
