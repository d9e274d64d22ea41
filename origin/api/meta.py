"""Operations about the API itself: health and the OpenAPI document."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from liveclass.origin.api.http import Auth, Operation, reply, state
from liveclass.origin.outages import Dependency, Reachability

OPENAPI = web.AppKey("liveclass_origin_openapi", dict[str, Any])
"""The application key of the built OpenAPI document."""


class OpenAPIDocument(BaseModel):
    """An OpenAPI 3.1 document."""

    model_config = ConfigDict(extra="allow")

    openapi: str


async def health(request: web.Request) -> web.Response:
    """GET /healthz: the process answers, and how persistence fares.

    Answers 200 while the database or the class log is unreachable (the
    status is then ``degraded``): the origin still runs, and another one
    would not reach them either.
    """
    reconcilers = state(request).reconcilers
    outages = reconcilers.outages
    store = outages.state(Dependency.STORE)
    class_log = outages.state(Dependency.CLASS_LOG)
    ok = store is Reachability.OK and class_log is Reachability.OK
    return reply(
        Health(
            status=HealthStatus.OK if ok else HealthStatus.DEGRADED,
            store=store,
            class_log=class_log,
            reconciling=len(reconcilers.running()),
            backlog=await reconcilers.backlog(),
        )
    )


async def openapi(request: web.Request) -> web.Response:
    """GET /v1/openapi.json: this document."""
    return reply(request.app[OPENAPI])


class HealthStatus(StrEnum):
    """How the origin is."""

    OK = "ok"
    DEGRADED = "degraded"
    """Up, but the database or the class log is unreachable."""


class Health(BaseModel):
    """The origin is up; whether it reaches what persistence needs."""

    status: HealthStatus
    store: Reachability = Field(description="Whether the database answers.")
    class_log: Reachability = Field(description="Whether the class log answers.")
    reconciling: int = Field(description="Classes whose logs are being stored.")
    backlog: int | None = Field(
        description="Class-log entries not stored yet, over every class being "
        "reconciled; null when the class log does not answer."
    )


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
