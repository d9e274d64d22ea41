"""The classroom: one member's live session with a class.

``connect()`` asks the origin for candidate edges, probes them in parallel,
joins the fastest and falls back in order. The :class:`Classroom` it returns
keeps the session alive: when the connection drops it resumes from the last
class-log number it saw, on the same edge or another, and checks that the
frames it then receives leave no gap and repeat nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any
from urllib.parse import urlencode

import websockets
from pydantic import ValidationError
from websockets.asyncio.client import ClientConnection

from liveclass.sdk import protocol as p
from liveclass.sdk.errors import (
    ClassroomClosed,
    ConnectionLost,
    InvalidMessage,
    JoinRefused,
    LiveclassError,
    NoEdgeAvailable,
    NotAllowed,
    ProtocolError,
    join_refused,
)
from liveclass.sdk.events import (
    ChatMessage,
    ClassEndedEvent,
    ClassEvent,
    Welcome,
    parse_event,
)
from liveclass.sdk.http import http_client
from liveclass.sdk.provisional import Provisional
from liveclass.sdk.resend import Unconfirmed
from liveclass.sdk.route import Candidate, Route, fetch_route, order_by_latency
from liveclass.sdk.state import ClassState

logger = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 10.0
"""How long an edge may take to send the welcome frame."""

RECONNECT_DELAYS_S = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
"""Waits before each reconnect attempt; after the last, the session is lost."""

SEND_WAIT_S = 10.0
"""How long a send waits for a reconnect in progress."""

_TERMINAL_CODES = frozenset(
    {
        p.CloseCode.BAD_TOKEN,
        p.CloseCode.TOKEN_EXPIRED,
        p.CloseCode.WRONG_CLASS,
        p.CloseCode.REMOVED,
        p.CloseCode.VERSION_UNSUPPORTED,
        p.CloseCode.CLASS_ENDED,
    }
)
"""Close codes after which rejoining with the same token cannot succeed."""

_END = object()
"""Put in the event queue when the session is over."""


def connect(
    origin_url: str,
    token: str,
    *,
    max_candidates: int = 3,
    probe_timeout: float = 1.0,
    reconnect: bool = True,
    local_address: str | None = None,
) -> Classroom:
    """Join a class: ``async with connect(origin_url, token) as room: ...``.

    Entering the block routes, probes and joins; it raises
    :class:`~liveclass.sdk.errors.JoinRefused` (or a subclass such as
    ``BadToken``) when the token is refused, ``NoEdgeAvailable`` when every
    candidate edge failed and ``OriginUnavailable`` when the origin did not
    answer. Leaving the block leaves the class. ``local_address`` binds
    every socket of the session (route, probes, WebSocket) to that address
    of this host, for hosts with several.
    """
    return Classroom(
        origin_url,
        token,
        max_candidates=max_candidates,
        probe_timeout=probe_timeout,
        reconnect=reconnect,
        local_address=local_address,
    )


class Classroom:
    """A member's session with a class; made by :func:`connect`.

    ``state`` is kept current from every frame received, whether or not the
    app reads ``events()``. Send methods check the member's role and the
    message's fields before sending, raise ``NotAllowed`` or
    ``InvalidMessage`` without sending, and return the message's ``ref``,
    which an :class:`~liveclass.sdk.events.ErrorEvent` refusing it echoes.
    """

    def __init__(
        self,
        origin_url: str,
        token: str,
        *,
        max_candidates: int = 3,
        probe_timeout: float = 1.0,
        reconnect: bool = True,
        local_address: str | None = None,
    ) -> None:
        self.origin_url = origin_url
        self.local_address = local_address
        self.max_candidates = max_candidates
        self.probe_timeout = probe_timeout
        self.reconnect = reconnect
        self.state = ClassState()
        self._provisional = Provisional()
        self._unconfirmed: Unconfirmed | None = None
        self.class_id = ""
        self.edge_id = ""
        self._token = token
        self._member: p.Member | None = None
        self._last_seq: int | None = None
        self._ws: ClientConnection | None = None
        self._candidate: Candidate | None = None
        self._http = http_client(local_address)
        self._queue: asyncio.Queue[ClassEvent | object] = asyncio.Queue()
        self._ready = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._failure: LiveclassError | None = None
        self._closed = False

    # --- lifecycle --------------------------------------------------------

    async def __aenter__(self) -> Classroom:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def open(self) -> None:
        """Route, probe and join; see :func:`connect` for what it raises."""
        try:
            await self._join_best(await self._route())
        except BaseException:
            await self.close()
            raise
        self._reader = asyncio.create_task(self._read(), name="liveclass-reader")

    async def close(self) -> None:
        """Leave the class; ``events()`` ends and later sends raise."""
        if self._closed:
            return
        self._closed = True
        self._ready.clear()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._ws is not None:
            await self._ws.close()
        await self._http.aclose()
        self._queue.put_nowait(_END)

    # --- what the app reads -----------------------------------------------

    @property
    def member(self) -> p.Member:
        """Who this member is, as the edge's welcome said."""
        if self._member is None:
            raise ClassroomClosed("not joined yet; use `async with connect(...)`")
        return self._member

    @property
    def edge_url(self) -> str:
        """The http(s) base URL of the edge this session is on (media and
        HLS are served there)."""
        if self._candidate is None:
            raise ClassroomClosed("not joined yet; use `async with connect(...)`")
        return self._candidate.url

    @property
    def last_seq(self) -> int | None:
        """The last class-log number received; resuming starts after it."""
        return self._last_seq

    async def events(self) -> AsyncIterator[ClassEvent]:
        """The class's events as typed objects, in log order, each once.

        While the class log does not answer, chat sent through this
        member's edge comes at once as a provisional ``ChatMessage`` (no
        ``seq``), then, once numbered, as a ``ChatConfirmed``; see
        :class:`~liveclass.sdk.events.ChatMessage`.

        Ends after ``ClassEndedEvent`` or when the classroom is closed.
        Raises the error that ended the session otherwise: ``Removed``,
        ``TokenExpired``, ``ConnectionLost``...
        """
        while True:
            item = await self._queue.get()
            if item is _END:
                self._queue.put_nowait(_END)  # for any other reader
                if self._failure is not None:
                    raise self._failure
                return
            assert isinstance(item, ClassEvent)
            yield item

    # --- joining ----------------------------------------------------------

    async def _route(self, avoid: frozenset[str] = frozenset()) -> list[Candidate]:
        """The origin's candidates, fastest first, without the ``avoid`` ids."""
        route: Route = await fetch_route(self._http, self.origin_url, self._token)
        self.class_id = route.class_id
        offered = [c for c in route.candidates if c.edge_id not in avoid]
        candidates = offered[: max(1, self.max_candidates)]
        if not candidates:
            raise NoEdgeAvailable([(edge_id, "draining") for edge_id in avoid])
        return await order_by_latency(candidates, self.probe_timeout, self._http)

    async def _join_best(self, candidates: list[Candidate]) -> None:
        """Join the first candidate that accepts, in order."""
        failures: list[tuple[str, str]] = []
        for candidate in candidates:
            try:
                await self._join(candidate)
                return
            except JoinRefused as exc:
                if not exc.retry_elsewhere:
                    raise
                failures.append((candidate.edge_id, str(exc)))
            except (OSError, TimeoutError, websockets.WebSocketException) as exc:
                failures.append((candidate.edge_id, repr(exc)))
            except ProtocolError as exc:
                failures.append((candidate.edge_id, str(exc)))
            logger.info("edge %s failed: %s", candidate.edge_id, failures[-1][1])
        raise NoEdgeAvailable(failures)

    async def _join(self, candidate: Candidate) -> None:
        """Open a WebSocket to one edge and take its welcome frame."""
        params: dict[str, Any] = {"token": self._token, "v": p.PROTOCOL_VERSION}
        if self._last_seq is not None:
            params["last_seq"] = self._last_seq
        sep = "&" if "?" in candidate.ws_url else "?"
        url = f"{candidate.ws_url}{sep}{urlencode(params)}"

        async with asyncio.timeout(JOIN_TIMEOUT_S):
            local = (self.local_address, 0) if self.local_address else None
            ws = await websockets.connect(
                url, open_timeout=JOIN_TIMEOUT_S, local_addr=local
            )
            try:
                frame = _parse_frame(await ws.recv())
            except websockets.ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd else 1006
                reason = exc.rcvd.reason if exc.rcvd else ""
                raise join_refused(code, reason) from None
            except BaseException:
                await ws.close()
                raise
        welcome = next((e for e in frame.events if e.type == "welcome"), None)
        try:
            if welcome is None:
                self._take_resume(ws, candidate, frame)
            else:
                self._take_welcome(ws, candidate, frame, welcome)
        except ProtocolError:
            await ws.close(p.CloseCode.PROTOCOL_ERROR, "unexpected first frame")
            raise
        self._ready.set()
        logger.info(
            "joined class %s on edge %s at seq %s",
            self.class_id,
            self.edge_id,
            self._last_seq,
        )

    def _take_welcome(
        self,
        ws: ClientConnection,
        candidate: Candidate,
        frame: p.Frame,
        welcome: p.Event,
    ) -> None:
        typed = parse_event(welcome)
        if not isinstance(typed, Welcome):
            raise ProtocolError(f"edge {candidate.edge_id} sent an invalid welcome")
        self._ws, self._candidate = ws, candidate
        self._member = typed.member
        if self._unconfirmed is None:
            self._unconfirmed = Unconfirmed(typed.member.user_id)
        self.edge_id = typed.edge_id or candidate.edge_id
        resumed = self._last_seq is not None and frame.seq_to in (
            None,
            self._last_seq,
        )
        if resumed:
            # Frames that follow replay what was missed; the snapshot would
            # only repeat state already held.
            self._emit_views(frame, skip=welcome)
        else:
            # A first join, or an edge that sent a fresh snapshot instead of
            # replaying: the snapshot is the state at seq_to.
            self._last_seq = frame.seq_to if frame.seq_to is not None else 0
            for event in frame.events:
                self._deliver(parse_event(event))

    def _take_resume(
        self, ws: ClientConnection, candidate: Candidate, frame: p.Frame
    ) -> None:
        """Accept an edge that answered a resume with the missed range.

        Edges answer ``last_seq`` without a welcome: the first frame covers
        ``(last_seq, head]`` (possibly empty) or is a ``state.reset``.
        """
        if self._last_seq is None or self._member is None:
            raise ProtocolError(f"edge {candidate.edge_id} sent no welcome")
        if not self._accept(frame):
            raise ProtocolError(
                f"edge {candidate.edge_id} resumed from {frame.seq_from}, "
                f"not from {self._last_seq}"
            )
        self._ws, self._candidate = ws, candidate
        self.edge_id = candidate.edge_id

    # --- receiving --------------------------------------------------------

    async def _read(self) -> None:
        """Receive frames until the class ends or the session is lost."""
        try:
            while True:
                ws = self._ws
                assert ws is not None
                try:
                    raw = await ws.recv()
                    frame = _parse_frame(raw)
                except websockets.ConnectionClosed as exc:
                    code = exc.rcvd.code if exc.rcvd else 1006
                    reason = exc.rcvd.reason if exc.rcvd else ""
                    if not await self._on_lost(code, reason):
                        return
                    continue
                except ProtocolError as exc:
                    logger.warning("edge %s: %s", self.edge_id, exc)
                    if not await self._on_lost(p.CloseCode.PROTOCOL_ERROR, str(exc)):
                        return
                    continue
                if not self._accept(frame):
                    # A gap: resume on the same edge from the last number seen.
                    logger.warning(
                        "gap after seq %s (frame from %s); resuming",
                        self._last_seq,
                        frame.seq_from,
                    )
                    if not await self._on_lost(p.CloseCode.GOING_AWAY, "gap"):
                        return
                if self.state.ended:
                    self._queue.put_nowait(_END)
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must end the stream, not hang it
            logger.exception("classroom reader failed")
            self._fail(ConnectionLost(f"the SDK's reader failed: {exc!r}"))

    def _accept(self, frame: p.Frame) -> bool:
        """Deliver a frame's new events; ``False`` if it leaves a gap."""
        reset = any(e.type == "state.reset" for e in frame.events)
        if frame.seq_to is None or reset:
            for event in frame.events:
                self._deliver(parse_event(event))
            if reset and frame.seq_to is not None:
                self._last_seq = frame.seq_to
            return True
        last = self._last_seq or 0
        seq_from = frame.seq_from if frame.seq_from is not None else last
        if seq_from > last:
            return False
        for event in frame.events:
            if event.seq is None:
                # A view computed at seq_to: older than what is held if the
                # frame only repeats seen entries.
                if frame.seq_to >= last:
                    self._deliver(parse_event(event))
            elif event.seq > last:
                # Frames may overlap what was seen after a resume.
                self._deliver(parse_event(event))
        self._last_seq = max(last, frame.seq_to)
        return True

    def _emit_views(self, frame: p.Frame, skip: p.Event) -> None:
        for event in frame.events:
            if event is not skip and event.seq is None:
                self._deliver(parse_event(event))

    def _deliver(self, event: ClassEvent) -> None:
        if self._unconfirmed is not None and not self._unconfirmed.seen(event):
            return  # a copy sent again was refused: expected, not news
        if isinstance(event, ChatMessage):
            # A message shown provisional before comes back numbered once:
            # the app gets a confirmation, not the message a second time.
            settled = self._provisional.settle(event)
            if settled is None:
                return
            event = settled
        self.state.apply(event)
        self._queue.put_nowait(event)

    # --- reconnecting -----------------------------------------------------

    async def _on_lost(self, code: int, reason: str) -> bool:
        """Handle a lost connection; ``True`` if the session goes on."""
        self._ready.clear()
        old, self._ws = self._ws, None
        if old is not None:
            await old.close()
        if code == p.CloseCode.CLASS_ENDED:
            # Not a failure: the stream ends as it does after class.ended.
            if not self.state.ended:
                self._deliver(ClassEndedEvent())
            self._queue.put_nowait(_END)
            return False
        if code in _TERMINAL_CODES:
            self._fail(join_refused(code, reason))
            return False
        if not self.reconnect:
            self._fail(ConnectionLost(f"connection closed ({code} {reason})"))
            return False
        avoid: frozenset[str] = frozenset()
        if code == p.CloseCode.DRAINING:
            # The edge is going away: straight to another, and not to this
            # one even if the origin has not heard of the drain yet.
            logger.info("edge %s is draining; moving to another edge", self.edge_id)
            ids = {self.edge_id}
            if self._candidate is not None:
                ids.add(self._candidate.edge_id)
            avoid = frozenset(ids)
        else:
            logger.info("connection to %s lost (%s %s)", self.edge_id, code, reason)
        try:
            await self._rejoin(avoid)
        except LiveclassError as exc:
            self._fail(exc)
            return False
        await self._send_again()
        return True

    async def _send_again(self) -> None:
        """Send again what the lost connection's edge may have taken along
        without writing it to the class log (see :mod:`.resend`)."""
        ws = self._ws
        if ws is None or self._unconfirmed is None:
            return
        messages = self._unconfirmed.again()
        if not messages:
            return
        logger.info(
            "sending %d messages again that edge %s may not have logged",
            len(messages),
            self.edge_id,
        )
        try:
            for message in messages:
                await ws.send(message.model_dump_json(exclude_none=True))
        except websockets.ConnectionClosed:
            pass  # lost again: the reader reconnects and sends them again

    async def _rejoin(self, avoid: frozenset[str]) -> None:
        """Join again with ``last_seq``, backing off between rounds.

        The same edge is tried first, unless it is to be avoided: the edges
        in ``avoid`` are skipped in every round.
        """
        failure = "no attempt"
        for delay in RECONNECT_DELAYS_S:
            await asyncio.sleep(delay)
            if not avoid and self._candidate is not None:
                try:
                    await self._join(self._candidate)
                    return
                except JoinRefused as exc:
                    if not exc.retry_elsewhere:
                        raise
                    failure = str(exc)
                except (OSError, TimeoutError, websockets.WebSocketException) as exc:
                    failure = repr(exc)
                except ProtocolError as exc:
                    failure = str(exc)
            try:
                # The edge may be gone or full: ask the origin again.
                await self._join_best(await self._route(avoid))
                return
            except JoinRefused as exc:
                if not exc.retry_elsewhere:
                    raise
                failure = str(exc)
            except LiveclassError as exc:  # no edge, or the origin is down
                failure = str(exc)
        raise ConnectionLost(
            f"could not resume after {len(RECONNECT_DELAYS_S)} attempts "
            f"({failure}); connect again later"
        )

    def _fail(self, error: LiveclassError) -> None:
        self._failure = error
        self._queue.put_nowait(_END)

    # --- sending ----------------------------------------------------------

    async def _send(self, message: p.ClientMessage) -> str:
        if self._closed:
            raise ClassroomClosed("the classroom is closed; connect again")
        if self._failure is not None:
            raise self._failure
        raw = message.model_dump_json(exclude_none=True)
        if len(raw.encode()) > p.MAX_FRAME_BYTES:
            raise InvalidMessage(
                f"{message.type} is {len(raw.encode())} bytes, over the "
                f"{p.MAX_FRAME_BYTES}-byte limit; shorten it"
            )
        try:
            async with asyncio.timeout(SEND_WAIT_S):
                await self._ready.wait()
        except TimeoutError:
            raise ConnectionLost(
                "still reconnecting; the message was not sent, try again"
            ) from None
        ws = self._ws
        if ws is None:
            raise ConnectionLost("not connected; the message was not sent")
        try:
            await ws.send(raw)
        except websockets.ConnectionClosed:
            raise ConnectionLost(
                "the connection dropped while sending; it may not have arrived"
            ) from None
        if self._unconfirmed is not None:
            self._unconfirmed.sent(message)
        return message.ref or ""

    def _build(self, cls: type[Any], **fields: Any) -> Any:
        """Check the role, then the fields, of a message; raise before sending."""
        message_type = cls.model_fields["type"].default
        if not p.allowed(self.member.role, message_type):
            raise NotAllowed(self.member.role, message_type)
        try:
            return cls(ref=uuid.uuid4().hex[:12], **fields)
        except ValidationError as exc:
            details = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'message'}: {e['msg']}"
                for e in exc.errors(include_url=False)
            )
            raise InvalidMessage(f"invalid {message_type}: {details}") from None

    async def send_chat(self, text: str) -> str:
        """Send a chat message to the class; returns its ``ref``."""
        if len(text) > p.MAX_CHAT_CHARS:
            raise InvalidMessage(
                f"chat message is {len(text)} characters; the limit is "
                f"{p.MAX_CHAT_CHARS}, split it"
            )
        return await self._send(self._build(p.ChatSend, text=text))

    async def delete_chat(self, seq: int) -> str:
        """Staff: delete the chat message with class-log number ``seq``."""
        return await self._send(self._build(p.ChatDelete, seq=seq))

    async def mute(self, user_id: str, muted: bool = True) -> str:
        """Staff: mute (or with ``muted=False`` unmute) a member's chat."""
        return await self._send(self._build(p.ChatMute, user_id=user_id, muted=muted))

    async def set_slow_mode(self, seconds: float) -> str:
        """Staff: one message per member every ``seconds`` (0 turns it off)."""
        return await self._send(self._build(p.ChatSlowMode, seconds=seconds))

    async def set_chat_enabled(self, enabled: bool) -> str:
        """Staff: turn chat on or off for students."""
        return await self._send(self._build(p.ChatEnable, enabled=enabled))

    async def remove_member(self, user_id: str) -> str:
        """Staff: remove a member from the class for good."""
        return await self._send(self._build(p.MemberRemove, user_id=user_id))

    async def raise_hand(self) -> str:
        """Raise this member's hand."""
        return await self._send(self._build(p.HandRaise))

    async def lower_hand(self, user_id: str | None = None) -> str:
        """Lower this member's hand, or (staff) the hand of ``user_id``."""
        if user_id not in (None, self.member.user_id) and not self.member.role.is_staff:
            raise NotAllowed(self.member.role, "hand.lower (another member's)")
        return await self._send(self._build(p.HandLower, user_id=user_id))

    async def call_next_hand(self) -> str:
        """Staff: call on the first member of the hand queue."""
        return await self._send(self._build(p.HandCallNext))

    async def open_poll(
        self, question: str, options: list[str], duration_s: float | None = None
    ) -> str:
        """Staff: open a poll, closing by itself after ``duration_s`` if given."""
        message = self._build(
            p.PollOpen, question=question, options=options, duration_s=duration_s
        )
        return await self._send(message)

    async def vote(self, poll_id: str, option: int) -> str:
        """Vote for ``option`` (0-based) in the open poll ``poll_id``."""
        message = self._build(p.PollVote, poll_id=poll_id, option=option)
        _check_option(self.state.poll, "poll_id", poll_id, option, "the poll")
        return await self._send(message)

    async def close_poll(self, poll_id: str) -> str:
        """Staff: close the poll and publish its results."""
        return await self._send(self._build(p.PollClose, poll_id=poll_id))

    async def ask_quiz(
        self,
        question: str,
        options: list[str],
        correct: int,
        duration_s: float = 20.0,
    ) -> str:
        """Staff: ask a timed question whose right answer is ``correct``."""
        message = self._build(
            p.QuizAsk,
            question=question,
            options=options,
            correct=correct,
            duration_s=duration_s,
        )
        if correct >= len(options):
            raise InvalidMessage(
                f"correct={correct} but there are {len(options)} options"
            )
        return await self._send(message)

    async def answer_quiz(self, quiz_id: str, option: int) -> str:
        """Answer the open question; only the first answer counts."""
        message = self._build(p.QuizAnswer, quiz_id=quiz_id, option=option)
        _check_option(self.state.quiz, "quiz_id", quiz_id, option, "the question")
        return await self._send(message)

    async def close_quiz(self, quiz_id: str) -> str:
        """Staff: close the question and publish the leaderboard."""
        return await self._send(self._build(p.QuizClose, quiz_id=quiz_id))

    async def request_presence_list(self) -> str:
        """Staff: ask who is here; a ``PresenceList`` event answers."""
        return await self._send(self._build(p.PresenceList))

    async def end_class(self) -> str:
        """Teacher: end the class for everyone.

        A poll or question still open is closed first, with every vote and
        answer the edges hold; ``class.ended`` follows once its results are
        final (within a tick, or a couple of seconds if an edge is gone).
        """
        return await self._send(self._build(p.ClassEnd))


def _check_option(
    item: Any, id_field: str, item_id: str, option: int, what: str
) -> None:
    """Refuse an option the open poll or question (``item``) does not have;
    an item this client has not seen yet is left to the edge to judge."""
    if item is None or getattr(item, id_field) != item_id:
        return
    if option >= len(item.options):
        raise InvalidMessage(
            f"option {option} does not exist; {what} has {len(item.options)}"
        )


def _parse_frame(raw: str | bytes) -> p.Frame:
    try:
        return p.Frame.model_validate_json(raw)
    except ValidationError as exc:
        raise ProtocolError(
            f"malformed frame from the edge ({exc.error_count()} errors)"
        ) from None
