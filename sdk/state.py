"""The class as a member sees it, kept current from snapshots and events.

:class:`ClassState` has no I/O: the classroom feeds it every typed event,
and it applies the ones that change what an app would draw.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, TypeVar

from liveclass.sdk.events import (
    ChatConfirmed,
    ChatDeleted,
    ChatMessage,
    ChatMuted,
    ChatSettings,
    ClassEndedEvent,
    ClassEvent,
    HandCalled,
    HandEntry,
    HandLowered,
    HandRaised,
    MediaLive,
    MemberRemoved,
    PollClosed,
    PollOpened,
    PollTally,
    PresenceCount,
    PresenceList,
    QuizAsked,
    QuizClosed,
    RecordingReady,
    Snapshot,
    StateReset,
    Welcome,
    parse_event,
)
from liveclass.sdk.protocol import Event, Member

_E = TypeVar("_E", bound=ClassEvent)

CHAT_HISTORY = 200
"""How many recent chat messages the state keeps."""


@dataclass
class ClassState:
    """What the class looks like now, for the member who holds it.

    ``poll`` and ``quiz`` are the open ones (``None`` when none is open);
    ``poll_counts`` is the latest tally the member may see. ``chat`` holds
    the numbered messages in log order, and after them any provisional
    ones (shown by this member's edge while the class log did not answer)
    until they are numbered.
    """

    user_id: str = ""
    chat: deque[ChatMessage] = field(default_factory=lambda: deque(maxlen=CHAT_HISTORY))
    chat_enabled: bool = True
    slow_mode_s: float = 0.0
    muted: bool = False
    hands: list[HandEntry] = field(default_factory=list)
    poll: PollOpened | None = None
    poll_counts: list[int] = field(default_factory=list)
    last_poll: PollClosed | None = None
    quiz: QuizAsked | None = None
    last_quiz: QuizClosed | None = None
    presence_count: int = 0
    members: list[Member] = field(default_factory=list)
    """The last presence list received (staff only)."""
    media: MediaLive | None = None
    recording: RecordingReady | None = None
    ended: bool = False

    @property
    def hand_raised(self) -> bool:
        """Whether this member's hand is in the queue."""
        return any(hand.user_id == self.user_id for hand in self.hands)

    def reset(self, snapshot: Snapshot) -> None:
        """Replace everything with a snapshot's view."""
        self.chat.clear()
        for raw in snapshot.chat:
            message = parse_event(Event.model_validate(raw))
            if isinstance(message, ChatMessage):
                self.chat.append(message)
        self.chat_enabled = snapshot.chat_enabled
        self.slow_mode_s = snapshot.slow_mode_s
        self.muted = snapshot.muted
        self.hands = list(snapshot.hands)
        self.poll = _opened(PollOpened, snapshot.poll)
        self.poll_counts = []
        self.quiz = _opened(QuizAsked, snapshot.quiz)
        self.presence_count = snapshot.presence_count
        self.media = _opened(MediaLive, snapshot.media)
        self.ended = snapshot.ended

    def apply(self, event: ClassEvent) -> None:
        """Update the state with one event; unrelated events change nothing."""
        match event:
            case Welcome(snapshot=snapshot, member=member):
                self.user_id = member.user_id
                self.reset(snapshot)
            case StateReset(snapshot=snapshot):
                self.reset(snapshot)
            case ChatMessage():
                self.chat.append(event)
            case ChatConfirmed(provisional_id=provisional_id, message=message):
                # The numbered message leaves the provisional one's place for
                # its own, after those numbered before it: log order.
                kept = [
                    m
                    for m in self.chat
                    if not (m.provisional and m.provisional_id == provisional_id)
                ]
                self.chat = deque(kept, maxlen=CHAT_HISTORY)
                self.chat.append(message)
            case ChatDeleted(message_seq=seq):
                kept = [m for m in self.chat if m.seq != seq]
                self.chat = deque(kept, maxlen=CHAT_HISTORY)
            case ChatMuted(user_id=user_id, muted=muted) if user_id == self.user_id:
                self.muted = muted
            case ChatSettings(enabled=enabled, slow_mode_s=slow):
                self.chat_enabled, self.slow_mode_s = enabled, slow
            case MemberRemoved(user_id=user_id):
                self.hands = [h for h in self.hands if h.user_id != user_id]
            case HandRaised(user_id=user_id, name=name):
                if all(h.user_id != user_id for h in self.hands):
                    self.hands.append(HandEntry(user_id=user_id, name=name))
            case HandLowered(user_id=user_id) | HandCalled(user_id=user_id):
                self.hands = [h for h in self.hands if h.user_id != user_id]
            case PollOpened():
                self.poll, self.poll_counts = event, []
            case PollTally(poll_id=poll_id, counts=counts):
                if self.poll is not None and self.poll.poll_id == poll_id:
                    self.poll_counts = list(counts)
            case PollClosed(poll_id=poll_id):
                if self.poll is not None and self.poll.poll_id == poll_id:
                    self.poll = None
                self.poll_counts, self.last_poll = list(event.counts), event
            case QuizAsked():
                self.quiz = event
            case QuizClosed(quiz_id=quiz_id):
                if self.quiz is not None and self.quiz.quiz_id == quiz_id:
                    self.quiz = None
                self.last_quiz = event
            case PresenceCount(count=count):
                self.presence_count = count
            case PresenceList(members=members):
                self.members = list(members)
            case MediaLive():
                self.media = event
            case RecordingReady():
                self.recording = event
            case ClassEndedEvent():
                self.ended = True
                self.poll = self.quiz = None
            case _:
                pass


def _opened(cls: type[_E], data: dict[str, Any] | None) -> _E | None:
    """A snapshot part as its typed event, or ``None`` if absent or invalid."""
    if data is None:
        return None
    try:
        return cls.model_validate(data)
    except ValueError:
        return None
