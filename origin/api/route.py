"""Where a member should connect: the best few healthy edges for it."""

from __future__ import annotations

from aiohttp import web

from liveclass.origin.api.http import Auth, Operation, bearer, reply, state
from liveclass.origin.api.models import ClassStatus
from liveclass.origin.clientaddr import client_address
from liveclass.origin.contract import EdgeLocation, RouteAnswer, RouteCandidate
from liveclass.origin.errors import conflict, not_found, unauthorized
from liveclass.origin.tokens import TokenError
from liveclass.routing.ranking import EdgeInfo, rank

CANDIDATES = 3
"""How many edges an answer offers; the SDK probes them all."""


def _ws_url(url: str) -> str:
    base = url.rstrip("/")
    if base.startswith("https://"):
        base = "wss://" + base.removeprefix("https://")
    elif base.startswith("http://"):
        base = "ws://" + base.removeprefix("http://")
    return base + "/v1/ws"


async def route(request: web.Request) -> web.Response:
    """GET /v1/route: the best edges for the caller, best first.

    The caller authenticates with its join token, which also names the
    class. Raises 401 for a bad or expired token, 404 for an unknown class
    and 409 for an ended one.
    """
    origin = state(request)
    try:
        claims = origin.verifier().verify(bearer(request))
    except TokenError as exc:
        raise unauthorized(str(exc)) from None
    info = await origin.store.get_class(claims.cls)
    if info is None:
        raise not_found(f"class {claims.cls!r}")
    if info.status is ClassStatus.ENDED:
        raise conflict(f"class {info.id!r} has ended")

    forwarded = request.headers.get("X-Forwarded-For")
    ip = client_address(request.remote, forwarded, origin.proxies)
    where = origin.geoip.locate(ip) if origin.geoip is not None else None
    edges = [
        EdgeInfo(
            edge_id=record.registration.edge_id,
            url=record.registration.public_url.rstrip("/"),
            latitude=record.registration.location.latitude,
            longitude=record.registration.location.longitude,
            load=record.load,
            serves_class=record.heartbeat.classes.get(info.id, 0) > 0,
        )
        for record in origin.registry.routable()
    ]
    client = None if where is None else (where.latitude, where.longitude)
    candidates = [
        RouteCandidate(
            edge_id=r.edge.edge_id,
            url=r.edge.url,
            ws_url=_ws_url(r.edge.url),
            ping_url=r.edge.url + "/v1/ping",
            distance_km=r.distance_km,
            load=r.edge.load,
            serves_class=r.edge.serves_class,
            score=r.score,
        )
        for r in rank(client, edges, CANDIDATES)
    ]
    location = None
    if where is not None:
        location = EdgeLocation(
            latitude=where.latitude, longitude=where.longitude, region=where.region
        )
    return reply(
        RouteAnswer(
            class_id=info.id,
            client_ip=ip,
            client_location=location,
            candidates=candidates,
        )
    )


OPERATIONS = [
    Operation(
        "GET",
        "/v1/route",
        route,
        "Find edges to join",
        Auth.JOIN_TOKEN,
        RouteAnswer,
        errors=(401, 404, 409),
    ),
]
"""The routing operation of the API."""
