"""The member side of one edge: admission, class rooms, client messages.

Independent of the WebSocket library: the server hands it query
parameters, text messages and :class:`~liveclass.edge_node.fanout.Sink`
objects.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from liveclass.edge_node.batcher import Batcher
from liveclass.edge_node.config import EdgeConfig
from liveclass.edge_node.fanout import Sink, single
from liveclass.edge_node.metrics import Metrics
from liveclass.edge_node.room import ClassRoom, LogHook
from liveclass.edge_node.rules import error_event
from liveclass.edge_node.rules.presence import presence_entry
from liveclass.edge_node.rules.validate import MESSAGE_TYPES
from liveclass.origin.classlog import ClassLog
from liveclass.origin.contract import LogEvent
from liveclass.origin.tokens import TokenError, TokenExpired, TokenVerifier, UnknownKey
from liveclass.sdk.protocol import (
    CLIENT_MESSAGE,
    MAX_FRAME_BYTES,
    MAX_REF_CHARS,
    PROTOCOL_VERSION,
    CloseCode,
    ErrorCode,
    Member,
)

logger = logging.getLogger(__name__)

READY_TIMEOUT_S = 10.0
"""How long a joining member waits for its class room to read the log."""

DRAINING_REASON = "this edge is draining; connect to another edge"
"""The reason sent with :data:`CloseCode.DRAINING`, to joiners and members."""

HELD_FULL_REASON = "class log unreachable and this edge holds all it can"
"""Why joins are refused (:data:`CloseCode.TRY_AGAIN_LATER`) while the
class's log does not answer and the edge holds as many entries as it may."""


@dataclass(frozen=True)
class Admission:
    """A member the edge accepted: who, in which class, resuming from where."""

    member: Member
    class_id: str
    last_seq: int | None
    class_limit: int
    """Members the class may hold: the class's own size limit (carried by
    the token) or this edge's, whichever is smaller."""


@dataclass(frozen=True)
class Refusal:
    """Why the edge refused a connection: a close code and a reason."""

    code: int
    reason: str


_EDGE_FULL = Refusal(CloseCode.EDGE_FULL, "edge is full; try the next candidate edge")


class EdgeNode:
    """Class rooms and members of one edge.

    ``refresh_keys`` is called when a token names a key the verifier does
    not know yet (the origin rotated its keys).
    """

    def __init__(
        self,
        config: EdgeConfig,
        log: ClassLog,
        verifier: TokenVerifier,
        batcher: Batcher,
        metrics: Metrics,
    ) -> None:
        self.config = config
        self.log = log
        self.verifier = verifier
        self.batcher = batcher
        self.metrics = metrics
        self.rooms: dict[str, ClassRoom] = {}
        self.on_log_event: LogHook | None = None
        self.refresh_keys: Callable[[], Awaitable[bool]] | None = None
        self.draining = False
        self.member_left = asyncio.Event()
        """Set whenever a member leaves; a waiter clears it first."""
        self._tasks: set[asyncio.Task[Any]] = set()
        # Admitted members whose join waits (a room opening, a resume): they
        # count against the capacity until they are in or refused.
        self._joining = 0
        metrics.classes = lambda: len(self.rooms)
        metrics.log_backlog = lambda: batcher.backlog
        metrics.log_held_classes = lambda: batcher.held_classes
        metrics.log_append_errors = lambda: batcher.append_errors
        batcher.on_held = self._show_held

    @property
    def connections(self) -> int:
        """Member connections open on this edge, from their join until their
        socket closes (a member a room let go as too slow still holds one).

        A count kept as members join and leave: every join reads it to
        enforce the capacity, and a sum over rooms would cost an edge of
        many small classes a pass over them per join."""
        return self.metrics.members

    def members_per_class(self) -> dict[str, int]:
        """Connections per class, for the heartbeat."""
        return {c: r.connections for c, r in self.rooms.items() if r.connections}

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` as a task the node keeps and cancels on :meth:`close`."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        """Stop every class room (closing its members) and pending tasks."""
        self.draining = True
        for room in list(self.rooms.values()):
            await room.stop()
        self.rooms.clear()
        # Let closing handshakes that were just queued go out.
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1.0)
        for task in list(self._tasks):
            task.cancel()

    # --- admission -------------------------------------------------------

    async def admit(self, query: Mapping[str, str]) -> Admission | Refusal:
        """Check a connection's query parameters (``token``, ``v``,
        ``last_seq``, optional ``class_id``) before it joins a class."""
        try:
            return self.admit_now(query)
        except UnknownKey:
            if self.refresh_keys is None or not await self.refresh_keys():
                return self._no_key()
            return self.admit_now(query, refreshed=True)

    def _no_key(self) -> Refusal:
        if not self.verifier.kids:
            # The origin has not been reached yet: the token may well be
            # good, so the client should retry rather than give up on it.
            return Refusal(
                CloseCode.TRY_AGAIN_LATER,
                "this edge has no signing keys yet (origin unreachable); "
                "try again later or another edge",
            )
        return Refusal(CloseCode.BAD_TOKEN, "token refused: unknown key")

    def admit_now(
        self, query: Mapping[str, str], refreshed: bool = False
    ) -> Admission | Refusal:
        """:meth:`admit` without waiting.

        Raises :class:`UnknownKey` when the token names a key this edge does
        not know yet and fetching keys could help (not ``refreshed`` yet).
        """
        if query.get("v") != str(PROTOCOL_VERSION):
            return Refusal(
                CloseCode.VERSION_UNSUPPORTED,
                f"protocol version {query.get('v')!r} is not supported; "
                f"this edge speaks version {PROTOCOL_VERSION}",
            )
        token = query.get("token")
        if not token:
            return Refusal(CloseCode.BAD_TOKEN, "no token: pass ?token=<join token>")
        try:
            claims = self.verifier.verify(token)
        except UnknownKey:
            if not refreshed and self.refresh_keys is not None:
                raise
            return self._no_key()
        except TokenExpired:
            return Refusal(CloseCode.TOKEN_EXPIRED, "token expired; ask for a new one")
        except TokenError as exc:
            return Refusal(CloseCode.BAD_TOKEN, f"token refused: {exc}"[:120])
        wanted = query.get("class_id")
        if wanted and wanted != claims.cls:
            return Refusal(
                CloseCode.WRONG_CLASS,
                "the token is for another class than class_id",
            )
        last_seq: int | None = None
        if query.get("last_seq") not in (None, ""):
            try:
                last_seq = int(query["last_seq"])
            except ValueError:
                last_seq = -1
            if last_seq < 0:
                return Refusal(
                    CloseCode.PROTOCOL_ERROR, "last_seq must be a whole number >= 0"
                )
        if self.draining:
            return Refusal(CloseCode.DRAINING, DRAINING_REASON)
        if self._full():
            return _EDGE_FULL
        member = Member(user_id=claims.sub, name=claims.name, role=claims.role)
        limit = min(self.config.class_limit, claims.max or self.config.class_limit)
        return Admission(member, claims.cls, last_seq, limit)

    def _full(self) -> bool:
        return self.connections + self._joining >= self.config.capacity

    def room(self, class_id: str) -> ClassRoom:
        """The class room of ``class_id``, opened (and its reader started) if new."""
        room = self.rooms.get(class_id)
        if room is None or room.stopped:
            room = ClassRoom(
                class_id,
                self.log,
                self.config.edge_id,
                self.batcher.add,
                on_log_event=self.on_log_event,
                metrics=self.metrics,
                on_idle=self._room_idle,
                worker=(self.config.worker, self.config.workers),
            )
            self.rooms[class_id] = room
            room.start()
        return room

    def _room_idle(self, room: ClassRoom) -> None:
        class_id = room.class_id
        if self.rooms.get(class_id) is room:
            del self.rooms[class_id]

    async def join(self, admission: Admission, sink: Sink) -> ClassRoom | Refusal:
        """Put an admitted member in its class room and send its first frames.

        A member admitted before the edge began draining is refused, or,
        once in its room, closed with ``DRAINING`` like the others.
        """
        if self.draining:
            return Refusal(CloseCode.DRAINING, DRAINING_REASON)
        if self.batcher.full(admission.class_id):
            return Refusal(CloseCode.TRY_AGAIN_LATER, HELD_FULL_REASON)
        # Checked again: others admitted meanwhile may have filled the edge.
        if self._full():
            return _EDGE_FULL
        room = self.room(admission.class_id)
        self._joining += 1
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                refusal = await room.join(
                    sink, admission.last_seq, admission.class_limit
                )
        except TimeoutError:
            return Refusal(
                CloseCode.TRY_AGAIN_LATER, "class log unreachable; try again later"
            )
        finally:
            self._joining -= 1
        if refusal is not None:
            return Refusal(*refusal)
        self.metrics.members += 1
        self.batcher.add_now(
            admission.class_id, [self._presence_entry("member.joined", sink.member)]
        )
        if self.draining:
            # The drain began while this member's first frames were read,
            # and closed the others without it: send it after them.
            sink.close(CloseCode.DRAINING, DRAINING_REASON)
        return room

    def join_now(self, admission: Admission, sink: Sink) -> ClassRoom | Refusal | None:
        """:meth:`join` without waiting, when it can: a new member (no
        ``last_seq``) of a class whose room is ready. None: use :meth:`join`."""
        if admission.last_seq is not None:
            return None
        room = self.rooms.get(admission.class_id)
        if room is None or room.stopped or not room.ready.is_set():
            return None
        if self.batcher.full(admission.class_id):
            return Refusal(CloseCode.TRY_AGAIN_LATER, HELD_FULL_REASON)
        refusal = room.join_now(sink, admission.class_limit)
        if refusal is not None:
            return Refusal(*refusal)
        self.metrics.members += 1
        self.batcher.add_now(
            admission.class_id, [self._presence_entry("member.joined", sink.member)]
        )
        return room

    def move_members(self) -> int:
        """Close every member with ``DRAINING``, so that it resumes on
        another edge; how many were asked. Call it once draining.

        Each room first sends what it holds: the fewer entries a member
        misses here, the fewer it fetches again there.
        """
        moved = 0
        for room in list(self.rooms.values()):
            room.flush()
            for sinks in list(room.sinks.values()):
                for sink in list(sinks):
                    sink.close(CloseCode.DRAINING, DRAINING_REASON)
                    moved += 1
        return moved

    async def leave(self, room: ClassRoom, sink: Sink) -> None:
        """Forget a member whose connection, once joined, closed."""
        self.leave_now(room, sink)

    def leave_now(self, room: ClassRoom, sink: Sink) -> None:
        """:meth:`leave` for callers that cannot await.

        Call it once per connection that joined: its ``member.left`` is
        written even when the room already let it go (closed as too slow),
        so that presence counts every connection out that it counted in.
        """
        room.detach(sink)
        self.metrics.members -= 1
        self.batcher.add_now(
            room.class_id, [self._presence_entry("member.left", sink.member)]
        )
        self.member_left.set()

    def _presence_entry(self, type_: str, member: Member) -> LogEvent:
        # The processes of one edge count their members apart (see
        # presence.source_of); a single process needs no worker field.
        worker = self.config.worker if self.config.workers > 1 else None
        return presence_entry(type_, member, self.config.edge_id, worker)

    def _show_held(self, class_id: str, entries: list[LogEvent]) -> None:
        """The batcher holds ``entries`` for a log that does not answer: the
        class's room shows its members what they may see of them now."""
        room = self.rooms.get(class_id)
        if room is not None:
            room.show_provisional(entries)

    # --- client messages -------------------------------------------------

    async def receive(self, room: ClassRoom, sink: Sink, raw: str) -> None:
        """Handle one text message from ``sink``'s member."""
        self.receive_now(room, sink, raw)

    def receive_now(self, room: ClassRoom, sink: Sink, raw: str) -> None:
        """Handle one text message from ``sink``'s member, without waiting.

        Refused messages are answered with an error view; the caller has
        already closed connections whose message was too big.
        """
        msg, error = parse(raw)
        if error is None and self.batcher.full(room.class_id):
            # Checked before the validator, whose limits and answered
            # questions would count a message that is not taken.
            error = error_event(
                ErrorCode.UNAVAILABLE,
                f"the class log is unreachable and this edge holds "
                f"{self.batcher.max_pending} entries of this class, all it "
                f"may; {msg.type} was not sent, try again later",
                msg.ref,
            )
        outcome_reply = []
        if error is not None:
            outcome_reply = [error]
        else:
            outcome = room.validator.check(room.state, sink.member, msg, time.time())
            if outcome.entries:
                self.batcher.add_now(room.class_id, outcome.entries)
            outcome_reply = outcome.reply
        for event in outcome_reply:
            if event.type == "error":
                self.metrics.errors[event.data["code"]] += 1
                logger.debug(
                    "refused a message: %s",
                    event.data["message"],
                    extra={"class_id": room.class_id, "user_id": sink.member.user_id},
                )
        if outcome_reply:
            sink.offer(single(outcome_reply))


def too_big(raw: str) -> bool:
    """Whether a client message exceeds :data:`MAX_FRAME_BYTES` in UTF-8."""
    # A character takes at most 4 bytes: skip encoding when it cannot matter.
    if len(raw) * 4 <= MAX_FRAME_BYTES:
        return False
    return len(raw.encode()) > MAX_FRAME_BYTES


def parse(raw: str) -> tuple[Any, Any]:
    """Parse one client message: ``(message, None)`` or ``(None, error view)``."""
    try:
        obj = json.loads(raw)
    except ValueError:
        return None, error_event(ErrorCode.MALFORMED, "not valid JSON")
    except RecursionError:
        return None, error_event(ErrorCode.MALFORMED, "JSON nested too deeply")
    if not isinstance(obj, dict):
        return None, error_event(ErrorCode.MALFORMED, "a message is a JSON object")
    ref = obj.get("ref") if isinstance(obj.get("ref"), str) else None
    if ref is not None and len(ref) > MAX_REF_CHARS:
        # Echoed so that the sender knows what was refused; a ref too long
        # to be valid comes back cut, not as a copy of the sender's bytes.
        ref = ref[:MAX_REF_CHARS]
    type_ = obj.get("type")
    if type_ not in MESSAGE_TYPES:
        return None, error_event(
            ErrorCode.UNKNOWN_TYPE, f"unknown message type {type_!r}"[:120], ref
        )
    try:
        return CLIENT_MESSAGE.validate_python(obj), None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"][1:]) or "message"
        return None, error_event(
            ErrorCode.INVALID, f"{type_}: {where}: {first['msg']}", ref
        )
