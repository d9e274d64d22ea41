"""Operations about the API itself: health and the OpenAPI document."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict

from liveclass.origin.api.http import Auth, Operation, reply

OPENAPI = web.AppKey("liveclass_origin_openapi", dict[str, Any])
"""The application key of the built OpenAPI document."""


class OpenAPIDocument(BaseModel):
    """An OpenAPI 3.1 document."""

    model_config = ConfigDict(extra="allow")

    openapi: str


async def health(request: web.Request) -> web.Response:
    """GET /healthz: the process answers."""
    return reply({"status": "ok"})


async def openapi(request: web.Request) -> web.Response:
    """GET /v1/openapi.json: this document."""
    return reply(request.app[OPENAPI])


class Health(BaseModel):
    """The origin is up."""

    status: str


OPERATIONS = [
    Operation("GET", "/healthz", health, "Health check", Auth.NONE, Health),
    Operation(
        "GET",
        "/v1/openapi.json",
        openapi,
        "The API document",
        Auth.NONE,
        OpenAPIDocument,
    ),
]
"""The operations describing the API itself."""
