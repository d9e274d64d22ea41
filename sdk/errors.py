"""What can go wrong in a class, as exceptions an app can catch by kind.

Every exception derives from :class:`LiveclassError`, and every message
says what to do next.
"""

from __future__ import annotations

from liveclass.sdk.protocol import CloseCode, Role


class LiveclassError(Exception):
    """Base of every error the SDK raises."""


class OriginUnavailable(LiveclassError):
    """The origin's route endpoint could not be reached or failed."""


class JoinRefused(LiveclassError):
    """An edge or the origin refused the member.

    ``code`` is the WebSocket close code (:class:`CloseCode`), or for the
    origin the HTTP status; ``reason`` is the server's text. Subclasses name
    the common cases; ``retry_elsewhere`` says whether another candidate edge
    may accept the same token.
    """

    retry_elsewhere = False
    advice = "check the token and the class with the app's backend"

    def __init__(self, code: int, reason: str = "") -> None:
        self.code = code
        self.reason = reason
        detail = f": {reason}" if reason else ""
        super().__init__(f"join refused (code {code}{detail}); {self.advice}")


class BadToken(JoinRefused):
    """The token is malformed, forged or signed by an unknown key."""

    advice = "ask the app's backend for a new join token"


class TokenExpired(JoinRefused):
    """The token's expiry time has passed."""

    advice = "ask the app's backend for a new join token"


class WrongClass(JoinRefused):
    """The token is for another class than the one asked for."""

    advice = "use the token minted for this class"


class Removed(JoinRefused):
    """Staff removed this member; its token is refused for this class."""

    advice = "the member may not rejoin this class"


class ClassEnded(JoinRefused):
    """The class is over; nothing more to join."""

    advice = "the recording, if any, is announced by the app"


class VersionUnsupported(JoinRefused):
    """The edge does not speak this SDK's protocol version."""

    advice = "upgrade the liveclass package"


class ClassFull(JoinRefused):
    """The class takes no more members on this edge."""

    retry_elsewhere = True
    advice = "another edge may have room; connect() tries the next candidate"


class EdgeFull(JoinRefused):
    """The edge is at capacity."""

    retry_elsewhere = True
    advice = "connect() tries the next candidate edge"


class TryAgainLater(JoinRefused):
    """The edge is overloaded for a moment."""

    retry_elsewhere = True
    advice = "connect() tries the next candidate edge, then retries later"


class Draining(JoinRefused):
    """The edge is shutting down and sends its members elsewhere."""

    retry_elsewhere = True
    advice = "connect() re-routes to another edge"


_BY_CODE: dict[int, type[JoinRefused]] = {
    CloseCode.BAD_TOKEN: BadToken,
    CloseCode.TOKEN_EXPIRED: TokenExpired,
    CloseCode.WRONG_CLASS: WrongClass,
    CloseCode.REMOVED: Removed,
    CloseCode.CLASS_ENDED: ClassEnded,
    CloseCode.VERSION_UNSUPPORTED: VersionUnsupported,
    CloseCode.CLASS_FULL: ClassFull,
    CloseCode.EDGE_FULL: EdgeFull,
    CloseCode.TRY_AGAIN_LATER: TryAgainLater,
    CloseCode.DRAINING: Draining,
}


def join_refused(code: int, reason: str = "") -> JoinRefused:
    """The :class:`JoinRefused` subclass for a close code (base if unknown)."""
    return _BY_CODE.get(code, JoinRefused)(code, reason)


class NoEdgeAvailable(LiveclassError):
    """Every candidate edge refused or could not be reached.

    ``failures`` pairs each tried edge id with what went wrong.
    """

    def __init__(self, failures: list[tuple[str, str]]) -> None:
        self.failures = failures
        tried = "; ".join(f"{edge}: {why}" for edge, why in failures) or "none"
        super().__init__(
            f"no edge accepted the member (tried {tried}); "
            "retry in a few seconds or check the edges' health at the origin"
        )


class NotAllowed(LiveclassError):
    """The member's role may not send this message; nothing was sent."""

    def __init__(self, role: Role, message_type: str) -> None:
        self.role = role
        self.message_type = message_type
        super().__init__(
            f"a {role.value} may not send {message_type!r}; "
            "join with a teacher or TA token to moderate"
        )


class InvalidMessage(LiveclassError, ValueError):
    """A message failed the protocol's checks before sending; nothing was sent."""


class ConnectionLost(LiveclassError):
    """The connection to the edge ended and could not be resumed."""


class ClassroomClosed(LiveclassError):
    """The classroom was closed; connect again to rejoin."""


class ProtocolError(LiveclassError):
    """The edge sent something the protocol does not allow.

    The SDK answers a protocol error by reconnecting; it reaches the app
    only when reconnecting is off.
    """
