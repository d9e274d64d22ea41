"""A typed async client for the origin's admin API.

An app's backend uses it to create classes, mint join tokens and read
reports::

    async with AdminClient("https://origin.example", api_key) as admin:
        info = await admin.create_class("Physics 101")
        token = await admin.mint_token(info.id, "u1", "Ada", Role.TEACHER)
        await admin.start_class(info.id)

Every method raises :class:`AdminAPIError` when the origin refuses the call,
and ``httpx`` transport errors when it cannot be reached. This module needs
only ``httpx`` and ``pydantic``: it runs in any app backend, not just next to
the origin.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from types import TracebackType
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, Field

from liveclass.sdk.errors import LiveclassError
from liveclass.sdk.protocol import Role

__all__ = [
    "AdminAPIError",
    "AdminClient",
    "ClassInfo",
    "ClassReport",
    "ClassStatus",
    "EdgeStatus",
    "IssuedToken",
    "MemberToken",
    "TokenSpec",
]


class AdminAPIError(LiveclassError):
    """The origin refused an admin call.

    ``status`` is the HTTP status, ``code`` the origin's error code
    (``not_found``, ``conflict``, ``unauthorized``, ``missing_field``...) and
    ``message`` its explanation.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"origin answered {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class _Answer(BaseModel):
    """An answer of the origin, as typed attributes."""

    # Ignore fields a newer origin adds: the client keeps working.
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class ClassStatus(StrEnum):
    """Where a class is in its life."""

    CREATED = "created"
    LIVE = "live"
    ENDED = "ended"


class ClassInfo(_Answer):
    """A class; times are seconds since the Unix epoch."""

    id: str
    title: str
    status: ClassStatus
    max_members: int
    created_at: float
    started_at: float | None = None
    ended_at: float | None = None


class IssuedToken(_Answer):
    """A join token and when it expires."""

    token: str
    expires_at: float


class MemberToken(_Answer):
    """One member's token from a bulk request."""

    user_id: str
    token: str
    expires_at: float


class TokenSpec(BaseModel):
    """Who a bulk-minted token is for."""

    user_id: str
    name: str
    role: Role = Role.STUDENT
    ttl_s: float = 4 * 3600


class EdgeStatus(_Answer):
    """An edge in the origin's registry.

    ``draining`` is the edge's own word (it refuses new members and moves
    its own); ``drain_requested`` says an admin asked it to drain and it
    may not have heard yet; ``healthy`` whether routing offers it.
    """

    edge_id: str
    public_url: str
    capacity: int
    members: int
    classes: dict[str, int]
    draining: bool
    drain_requested: bool = False
    load: float
    seconds_since_heartbeat: float
    healthy: bool


class RecordingInfo(_Answer):
    """Where a class's recording is: a VOD playlist and its length."""

    playlist_url: str
    duration_s: float


class ClassReport(_Answer):
    """What the origin persisted about a class.

    ``attendance``, ``chat``, ``polls`` and ``quizzes`` are lists of plain
    records as the origin's OpenAPI document describes them.
    """

    class_: ClassInfo = Field(alias="class")
    attendance: list[dict[str, Any]]
    chat: list[dict[str, Any]]
    polls: list[dict[str, Any]]
    quizzes: list[dict[str, Any]]
    recording: RecordingInfo | None = None


_A = TypeVar("_A", bound=BaseModel)


class AdminClient:
    """The origin's admin API over HTTP(S); use it as an async context manager.

    ``base_url`` is the origin's URL (``http://127.0.0.1:8800``); ``api_key``
    its admin key. ``timeout_s`` bounds each call; bulk minting may need
    more than the default for thousands of tokens.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout_s: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout_s,
            transport=transport,
        )

    async def __aenter__(self) -> AdminClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    async def _call(
        self, method: str, path: str, json: dict[str, Any] | None = None
    ) -> Any:
        response = await self._http.request(method, path, json=json)
        if response.status_code >= 400:
            raise _error(response)
        return response.json()

    async def _model(
        self, model: type[_A], method: str, path: str, json: Any = None
    ) -> _A:
        return model.model_validate(await self._call(method, path, json))

    async def create_class(
        self, title: str, *, max_members: int = 50_000, class_id: str | None = None
    ) -> ClassInfo:
        """Create a class (status ``created``). 409 if ``class_id`` is taken."""
        body: dict[str, Any] = {"title": title, "max_members": max_members}
        if class_id is not None:
            body["class_id"] = class_id
        return await self._model(ClassInfo, "POST", "/v1/classes", body)

    async def get_class(self, class_id: str) -> ClassInfo:
        """One class. 404 if there is none."""
        return await self._model(ClassInfo, "GET", f"/v1/classes/{class_id}")

    async def list_classes(self) -> list[ClassInfo]:
        """Every class, newest first."""
        answer = await self._call("GET", "/v1/classes")
        return [ClassInfo.model_validate(c) for c in answer["classes"]]

    async def start_class(self, class_id: str) -> ClassInfo:
        """Make a class live. 409 if it has ended."""
        return await self._model(ClassInfo, "POST", f"/v1/classes/{class_id}/start")

    async def end_class(self, class_id: str) -> ClassInfo:
        """End a class for every member. 409 if it already ended."""
        return await self._model(ClassInfo, "POST", f"/v1/classes/{class_id}/end")

    async def mint_token(
        self,
        class_id: str,
        user_id: str,
        name: str,
        role: Role | str = Role.STUDENT,
        *,
        ttl_s: float = 4 * 3600,
    ) -> IssuedToken:
        """A join token for one member of a class. Raises ValueError for an
        unknown role."""
        body = {
            "user_id": user_id,
            "name": name,
            "role": Role(role).value,
            "ttl_s": ttl_s,
        }
        path = f"/v1/classes/{class_id}/tokens"
        return await self._model(IssuedToken, "POST", path, body)

    async def mint_tokens(
        self, class_id: str, members: Sequence[TokenSpec | Mapping[str, Any]]
    ) -> list[MemberToken]:
        """Join tokens for many members (up to 20,000), in the given order.

        Each member is a :class:`TokenSpec` or a mapping of its fields.
        Raises ``pydantic.ValidationError`` for a malformed member.
        """
        specs = [TokenSpec.model_validate(m) for m in members]
        body = {"members": [m.model_dump(mode="json") for m in specs]}
        answer = await self._call("POST", f"/v1/classes/{class_id}/tokens/bulk", body)
        return [MemberToken.model_validate(t) for t in answer["tokens"]]

    async def edges(self) -> list[EdgeStatus]:
        """Every edge the origin knows, healthy or not."""
        answer = await self._call("GET", "/v1/edges")
        return [EdgeStatus.model_validate(e) for e in answer["edges"]]

    async def drain_edge(self, edge_id: str) -> EdgeStatus:
        """Take an edge out of service without a gap for its members.

        Routing stops offering the edge at once (the answer's ``healthy``
        is false). At its next heartbeat, a few seconds later, the edge
        refuses new members, moves its members to other edges (the SDK
        resumes there from the last event it saw) and exits. Asking again
        changes nothing. Raises :class:`AdminAPIError` (404) for an edge
        the origin does not know.
        """
        return await self._model(EdgeStatus, "POST", f"/v1/edges/{edge_id}/drain")

    async def report(self, class_id: str) -> ClassReport:
        """Attendance, chat, polls, quizzes and recording of a class."""
        path = f"/v1/classes/{class_id}/report"
        return await self._model(ClassReport, "GET", path)

    async def rotate_keys(self, *, force: bool = False) -> list[str]:
        """Sign new tokens with a fresh key; returns the key ids now published.

        Tokens signed by the previous key stay valid until they expire. A
        second rotation while the key before may still have valid tokens out
        is refused (409) unless ``force``, which invalidates those tokens.
        """
        path = "/v1/keys/rotate" + ("?force=true" if force else "")
        answer = await self._call("POST", path)
        return [key["kid"] for key in answer["keys"]]


def _error(response: httpx.Response) -> AdminAPIError:
    try:
        problem = response.json()["error"]
        return AdminAPIError(
            response.status_code, str(problem["code"]), str(problem["message"])
        )
    except (ValueError, KeyError, TypeError):
        # Not the origin's error shape: a proxy in between, most likely.
        text = response.text[:200] or response.reason_phrase
        return AdminAPIError(response.status_code, "http_error", text)
