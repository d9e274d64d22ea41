"""What a member sent that may have died with its edge, to send again.

An edge takes a member's message, checks it and queues it for the class log;
if the edge is killed before the next append, the message is gone although
the member's send succeeded. After every reconnect the SDK sends again what
it cannot know to be in the log:

- chat it has not seen come back numbered (its ``ref`` comes back in the
  entry); the copy carries the same ref, the edge names the entry after it,
  and every reader folds a second copy as a duplicate;
- its latest vote in each poll still open, and its answer to the open
  question: voting again for the same option changes nothing, a second
  answer is ignored;
- a raised hand it has not seen in the queue: raising a raised hand does
  nothing.

Refusals of a copy (the poll closed meanwhile, "you already answered") are
expected and not shown to the app. No I/O.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from typing import Any

from liveclass.sdk import protocol as p
from liveclass.sdk.events import (
    ChatMessage,
    ClassEvent,
    ErrorEvent,
    HandLowered,
    HandRaised,
    PollClosed,
    QuizClosed,
)

MAX_UNSEEN_CHAT = 100
"""Chat messages kept to send again; older ones are given up (the member
sent over a hundred messages that never came back)."""

MAX_COPY_REFS = 1000
"""Refs of copies remembered, to keep their refusals from the app."""


class Unconfirmed:
    """The messages of one member that a lost edge may have taken along."""

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        self._chat: OrderedDict[str, p.ChatSend] = OrderedDict()
        self._votes: dict[str, p.PollVote] = {}
        self._answers: dict[str, p.QuizAnswer] = {}
        self._hand: p.HandRaise | None = None
        self._copies: OrderedDict[str, None] = OrderedDict()

    def __len__(self) -> int:
        return (
            len(self._chat)
            + len(self._votes)
            + len(self._answers)
            + (self._hand is not None)
        )

    def sent(self, message: Any) -> None:
        """Note a message that went out on the connection."""
        if isinstance(message, p.ChatSend) and message.ref:
            self._chat[message.ref] = message
            while len(self._chat) > MAX_UNSEEN_CHAT:
                self._chat.popitem(last=False)
        elif isinstance(message, p.PollVote):
            self._votes[message.poll_id] = message
        elif isinstance(message, p.QuizAnswer):
            self._answers.setdefault(message.quiz_id, message)
        elif isinstance(message, p.HandRaise):
            self._hand = message
        elif isinstance(message, p.HandLower) and message.user_id in (
            None,
            self.user_id,
        ):
            self._hand = None

    def seen(self, event: ClassEvent) -> bool:
        """Note an event from the edge; False if the app must not get it
        (a refusal of a copy sent again)."""
        if isinstance(event, ErrorEvent) and event.ref:
            if event.ref in self._copies:
                del self._copies[event.ref]
                return False
            self._chat.pop(event.ref, None)
            for kept in (self._votes, self._answers):
                for key, message in list(kept.items()):
                    if message.ref == event.ref:
                        del kept[key]
            if self._hand is not None and self._hand.ref == event.ref:
                self._hand = None
        elif isinstance(event, ChatMessage):
            if event.actor == self.user_id and event.seq is not None and event.ref:
                self._chat.pop(event.ref, None)
        elif isinstance(event, PollClosed):
            self._votes.pop(event.poll_id, None)
        elif isinstance(event, QuizClosed):
            self._answers.pop(event.quiz_id, None)
        elif isinstance(event, HandRaised | HandLowered):
            if event.user_id == self.user_id:
                self._hand = None
        return True

    def again(self) -> list[Any]:
        """The messages to send again: chat in the order it was sent, with
        its own refs; then votes, answers and the hand, under new refs
        remembered as copies."""
        out: list[Any] = list(self._chat.values())
        for message in [*self._votes.values(), *self._answers.values()]:
            out.append(self._copy(message))
        if self._hand is not None:
            out.append(self._copy(self._hand))
        return out

    def _copy(self, message: Any) -> Any:
        ref = uuid.uuid4().hex[:12]
        self._copies[ref] = None
        while len(self._copies) > MAX_COPY_REFS:
            self._copies.popitem(last=False)
        return message.model_copy(update={"ref": ref})
