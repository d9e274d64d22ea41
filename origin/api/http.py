"""How an operation of the API is declared, authenticated and answered.

Each handler module lists its :class:`Operation` values; the application
registers them and the OpenAPI document is built from the same list, so the
two cannot disagree.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from liveclass.origin.api.state import STATE, OriginState
from liveclass.origin.errors import (
    APIError,
    APIErrorCode,
    from_validation,
    unauthorized,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
M = TypeVar("M", bound=BaseModel)


class Auth(StrEnum):
    """Who may call an operation."""

    NONE = "none"
    ADMIN = "admin"
    """``Authorization: Bearer <api_key>``."""
    EDGE = "edge"
    """``Authorization: Bearer <edge_key>``."""
    JOIN_TOKEN = "join_token"
    """``Authorization: Bearer <join token>``; the handler verifies it."""


@dataclass(frozen=True)
class Operation:
    """One method on one path, with what it takes and gives."""

    method: str
    path: str
    handler: Handler
    summary: str
    auth: Auth
    response: type[BaseModel]
    body: type[BaseModel] | None = None
    status: int = 200
    errors: tuple[int, ...] = ()


def state(request: web.Request) -> OriginState:
    """The origin the request reached."""
    return request.app[STATE]


def bearer(request: web.Request) -> str:
    """The bearer credential of the request. Raises 401 when there is none."""
    header = request.headers.get("Authorization", "")
    scheme, _, credential = header.partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        raise unauthorized("send 'Authorization: Bearer <credential>'")
    return credential.strip()


def _check_key(request: web.Request, key: str, what: str) -> None:
    credential = bearer(request)
    if not key:
        raise unauthorized(f"the {what} is not configured on this origin")
    # Constant time: a key must not leak through response timing.
    if not hmac.compare_digest(credential.encode(), key.encode()):
        raise unauthorized(f"wrong {what}")


def authenticated(operation: Operation) -> Handler:
    """The operation's handler behind its authentication check."""
    handler = operation.handler
    if operation.auth not in (Auth.ADMIN, Auth.EDGE):
        return handler

    async def checked(request: web.Request) -> web.StreamResponse:
        config = state(request).config
        if operation.auth is Auth.ADMIN:
            _check_key(request, config.api_key, "API key")
        else:
            _check_key(request, config.edge_key, "edge key")
        return await handler(request)

    return checked


async def body(request: web.Request, model: type[M]) -> M:
    """The request's JSON body as ``model``.

    Raises :class:`APIError` naming the problem: not JSON, not an object, a
    missing or unknown field, a value of the wrong type.
    """
    raw = await request.read()
    try:
        data = json.loads(raw) if raw else None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise APIError(APIErrorCode.BAD_JSON, f"the body is not JSON: {exc}") from None
    except RecursionError:
        raise APIError(
            APIErrorCode.BAD_JSON, "the body nests too deeply to be a request"
        ) from None
    if not isinstance(data, dict):
        raise APIError(APIErrorCode.BAD_JSON, "the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise from_validation(exc) from None


def reply(model: BaseModel | dict[str, Any], status: int = 200) -> web.Response:
    """A JSON response of a model (by its aliases) or a plain document."""
    if isinstance(model, BaseModel):
        text = model.model_dump_json(by_alias=True)
    else:
        text = json.dumps(model)
    return web.Response(text=text, status=status, content_type="application/json")
