"""The edge registry's API: edges register and heartbeat, admins look and
drain."""

from __future__ import annotations

from aiohttp import web

from liveclass.origin.api.http import Auth, Operation, body, reply, state
from liveclass.origin.api.models import EdgeInfo, EdgeList
from liveclass.origin.contract import EdgeHeartbeat, EdgeRegistration
from liveclass.origin.errors import not_found
from liveclass.origin.registry import EdgeRecord, EdgeRegistry, UnknownEdge


def edge_info(registry: EdgeRegistry, record: EdgeRecord) -> EdgeInfo:
    """The API view of one registry record."""
    registration, heartbeat = record.registration, record.heartbeat
    return EdgeInfo(
        edge_id=registration.edge_id,
        public_url=registration.public_url,
        location=registration.location,
        capacity=registration.capacity,
        members=heartbeat.members,
        classes=heartbeat.classes,
        cpu=heartbeat.cpu,
        draining=heartbeat.draining,
        drain_requested=record.drain_requested,
        load=record.load,
        seconds_since_heartbeat=registry.age(record),
        healthy=registry.healthy(record),
    )


async def register_edge(request: web.Request) -> web.Response:
    """POST /v1/edges: an edge announces itself (again)."""
    registration = await body(request, EdgeRegistration)
    registry = state(request).registry
    return reply(edge_info(registry, registry.register(registration)))


async def heartbeat(request: web.Request) -> web.Response:
    """POST /v1/edges/{edge_id}/heartbeat: an edge reports its load.

    404 means the origin does not know the edge (it restarted): register
    again. ``drain_requested`` in the answer asks the edge to drain.
    """
    beat = await body(request, EdgeHeartbeat)
    edge_id = request.match_info["edge_id"]
    registry = state(request).registry
    try:
        record = registry.heartbeat(edge_id, beat)
    except UnknownEdge:
        raise not_found(f"edge {edge_id!r} (register it again)") from None
    return reply(edge_info(registry, record))


async def drain_edge(request: web.Request) -> web.Response:
    """POST /v1/edges/{edge_id}/drain: take an edge out of service gently.

    Routing stops offering the edge at once. The edge learns of it in the
    answer to its next heartbeat (every two seconds by default): it then
    refuses new members, moves its members to other edges (close code 4010;
    the SDK resumes elsewhere without a gap) and, run as ``liveclass edge``,
    exits with status 0. Draining an edge again changes nothing. 404 for an
    edge the origin does not know.
    """
    edge_id = request.match_info["edge_id"]
    registry = state(request).registry
    try:
        record = registry.request_drain(edge_id)
    except UnknownEdge:
        raise not_found(f"edge {edge_id!r}") from None
    return reply(edge_info(registry, record), status=202)


async def list_edges(request: web.Request) -> web.Response:
    """GET /v1/edges: every registered edge, healthy or not."""
    registry = state(request).registry
    return reply(EdgeList(edges=[edge_info(registry, r) for r in registry.all()]))


OPERATIONS = [
    Operation(
        "POST",
        "/v1/edges",
        register_edge,
        "Register an edge",
        Auth.EDGE,
        EdgeInfo,
        body=EdgeRegistration,
        errors=(400, 401, 422),
    ),
    Operation(
        "POST",
        "/v1/edges/{edge_id}/heartbeat",
        heartbeat,
        "Report an edge's load",
        Auth.EDGE,
        EdgeInfo,
        body=EdgeHeartbeat,
        errors=(400, 401, 404, 422),
    ),
    Operation(
        "GET",
        "/v1/edges",
        list_edges,
        "List edges",
        Auth.ADMIN,
        EdgeList,
        errors=(401,),
    ),
    Operation(
        "POST",
        "/v1/edges/{edge_id}/drain",
        drain_edge,
        "Drain an edge",
        Auth.ADMIN,
        EdgeInfo,
        status=202,
        errors=(401, 404),
    ),
]
"""The edge registry operations of the API."""
