"""The edge registry and the route endpoint, over real loopback HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from liveclass.origin.app import OriginServer, run_origin
from liveclass.origin.classlog import MemoryClassLog
from liveclass.origin.clientaddr import client_address, parse_networks
from liveclass.origin.config import OriginConfig
from liveclass.origin.tokens import KeyRing
from liveclass.sdk.admin import AdminAPIError, AdminClient
from liveclass.sdk.protocol import Role

API_KEY = "admin-secret"
EDGE_KEY = "edge-secret"
EDGE = {"Authorization": f"Bearer {EDGE_KEY}"}

LONDON = (51.51, -0.13)
TOKYO = (35.68, 139.69)
LONDON_CLIENT = "81.2.69.160"

Start = Callable[..., Awaitable[OriginServer]]


@pytest.fixture
async def start(
    tmp_path: Path, port: int, memory_log: MemoryClassLog, keyring: KeyRing
) -> AsyncIterator[Start]:
    """Start an origin with the given config overrides; stopped after."""
    servers: list[OriginServer] = []

    async def starter(**overrides: Any) -> OriginServer:
        config = OriginConfig(
            port=port,
            api_key=API_KEY,
            edge_key=EDGE_KEY,
            database_url=f"sqlite+aiosqlite:///{tmp_path}/origin.db",
            key_file=None,
            **overrides,
        )
        server = await run_origin(config, log=memory_log, keyring=keyring)
        servers.append(server)
        return server

    yield starter
    for server in servers:
        await server.stop()


def registration(edge_id: str, where: tuple[float, float], port: int) -> dict:
    return {
        "edge_id": edge_id,
        "public_url": f"http://127.0.0.1:{port}",
        "location": {"latitude": where[0], "longitude": where[1]},
        "capacity": 100,
    }


async def _join_token(origin: OriginServer, class_id: str) -> str:
    async with AdminClient(origin.url, API_KEY) as admin:
        await admin.create_class("Physics", class_id=class_id)
        await admin.start_class(class_id)
        issued = await admin.mint_token(class_id, "u1", "Ada")
    return issued.token


async def _route(
    http: httpx.AsyncClient, token: str, forwarded: str | None = None
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"}
    if forwarded is not None:
        headers["X-Forwarded-For"] = forwarded
    return await http.get("/v1/route", headers=headers)


async def test_registry_and_heartbeats(start: Start) -> None:
    origin = await start()
    async with httpx.AsyncClient(base_url=origin.url) as http:
        answer = await http.post(
            "/v1/edges", json=registration("e1", LONDON, 9001), headers=EDGE
        )
        assert answer.status_code == 200 and answer.json()["healthy"]

        beat = {"members": 50, "classes": {"c1": 50}, "cpu": 0.3}
        answer = await http.post("/v1/edges/e1/heartbeat", json=beat, headers=EDGE)
        assert answer.json()["load"] == 0.5

        answer = await http.post("/v1/edges/e9/heartbeat", json=beat, headers=EDGE)
        assert (answer.status_code, answer.json()["error"]["code"]) == (
            404,
            "not_found",
        )
        admin_headers = {"Authorization": f"Bearer {API_KEY}"}
        answer = await http.post(
            "/v1/edges", json=registration("e2", TOKYO, 9002), headers=admin_headers
        )
        assert answer.status_code == 401, "the admin key is not an edge key"
        answer = await http.post(
            "/v1/edges",
            json={"edge_id": "e2", "public_url": "http://127.0.0.1:9"},
            headers=EDGE,
        )
        assert answer.json()["error"]["code"] == "missing_field"
        not_a_url = {**registration("e2", TOKYO, 9002), "public_url": "javascript:1"}
        answer = await http.post("/v1/edges", json=not_a_url, headers=EDGE)
        assert answer.status_code == 422
        assert "public_url" in answer.json()["error"]["message"]

    async with AdminClient(origin.url, API_KEY) as admin:
        [edge] = await admin.edges()
    assert (edge.edge_id, edge.members, edge.classes) == ("e1", 50, {"c1": 50})


async def test_route_offers_healthy_edges(start: Start, class_id: str) -> None:
    origin = await start(edge_timeout_s=10.0)
    token = await _join_token(origin, class_id)
    registry = origin.state.registry
    now = [1000.0]
    registry.clock = lambda: now[0]

    async with httpx.AsyncClient(base_url=origin.url) as http:
        for edge_id, where, port in (
            ("london", LONDON, 9001),
            ("tokyo", TOKYO, 9002),
            ("gone", LONDON, 9003),
        ):
            await http.post(
                "/v1/edges", json=registration(edge_id, where, port), headers=EDGE
            )
        beat = {"members": 10, "classes": {class_id: 10}}
        await http.post("/v1/edges/tokyo/heartbeat", json=beat, headers=EDGE)
        draining = {"members": 0, "draining": True}
        await http.post("/v1/edges/gone/heartbeat", json=draining, headers=EDGE)

        answer = (await _route(http, token)).json()
        assert answer["class_id"] == class_id
        assert answer["client_ip"] == "127.0.0.1"
        assert answer["client_location"] is None
        ids = [c["edge_id"] for c in answer["candidates"]]
        # No location: affinity wins; the draining edge is never offered.
        assert ids == ["tokyo", "london"]
        tokyo = answer["candidates"][0]
        assert tokyo["ws_url"] == "ws://127.0.0.1:9002/v1/ws"
        assert tokyo["ping_url"] == "http://127.0.0.1:9002/v1/ping"
        assert tokyo["serves_class"] and tokyo["load"] == 0.1

        # London's heartbeat is too old; Tokyo's just in time.
        now[0] += 10.5
        await http.post("/v1/edges/tokyo/heartbeat", json=beat, headers=EDGE)
        now[0] += 0.5
        answer = (await _route(http, token)).json()
        assert [c["edge_id"] for c in answer["candidates"]] == ["tokyo"]


async def test_drain_request(start: Start, class_id: str) -> None:
    """An admin drains an edge: routing drops it at once, its heartbeat
    answer asks it to drain, and a new registration (a new process under
    the same id) clears the request."""
    origin = await start()
    token = await _join_token(origin, class_id)
    async with (
        httpx.AsyncClient(base_url=origin.url) as http,
        AdminClient(origin.url, API_KEY) as admin,
    ):
        for edge_id, port in (("e1", 9001), ("e2", 9002)):
            await http.post(
                "/v1/edges", json=registration(edge_id, LONDON, port), headers=EDGE
            )

        status = await admin.drain_edge("e1")
        assert (status.edge_id, status.drain_requested) == ("e1", True)
        assert not status.healthy and not status.draining
        answer = (await _route(http, token)).json()
        assert [c["edge_id"] for c in answer["candidates"]] == ["e2"]
        assert (await admin.drain_edge("e1")).drain_requested, "asking twice"

        beat = {"members": 3, "classes": {class_id: 3}}
        answer = await http.post("/v1/edges/e1/heartbeat", json=beat, headers=EDGE)
        assert answer.json()["drain_requested"] is True
        answer = await http.post("/v1/edges/e2/heartbeat", json=beat, headers=EDGE)
        assert answer.json()["drain_requested"] is False
        # The edge says it drains; the request stands until it registers again.
        draining = {**beat, "draining": True}
        await http.post("/v1/edges/e1/heartbeat", json=draining, headers=EDGE)
        e1 = {e.edge_id: e for e in await admin.edges()}["e1"]
        assert (e1.draining, e1.drain_requested, e1.healthy) == (True, True, False)

        with pytest.raises(AdminAPIError) as refused:
            await admin.drain_edge("e9")
        assert (refused.value.status, refused.value.code) == (404, "not_found")
        answer = await http.post("/v1/edges/e2/drain", headers=EDGE)
        assert answer.status_code == 401, "edges may not drain each other"

        await http.post(
            "/v1/edges", json=registration("e1", LONDON, 9001), headers=EDGE
        )
        answer = (await _route(http, token)).json()
        assert sorted(c["edge_id"] for c in answer["candidates"]) == ["e1", "e2"]


async def test_route_refuses_bad_tokens(
    start: Start, class_id: str, keyring: KeyRing
) -> None:
    origin = await start()
    async with httpx.AsyncClient(base_url=origin.url) as http:
        for token in ("not-a-jwt", KeyRing().mint(class_id, "u1", "Ada", Role.STUDENT)):
            answer = await _route(http, token)
            assert answer.status_code == 401
        stray = keyring.mint("no-such-class", "u1", "Ada", Role.STUDENT)
        assert (await _route(http, stray)).status_code == 404
        expired = keyring.mint(class_id, "u1", "Ada", Role.STUDENT, ttl_s=-60)
        answer = await _route(http, expired)
        assert answer.status_code == 401
        assert "expired" in answer.json()["error"]["message"]


async def test_forwarded_for_only_from_trusted_proxies(
    start: Start, class_id: str
) -> None:
    trusting = await start(trusted_proxies=["127.0.0.0/8", "10.0.0.0/8"])
    token = await _join_token(trusting, class_id)
    async with httpx.AsyncClient(base_url=trusting.url) as http:
        # The client forged the left-most entry; proxy 10.1.1.1 added the
        # address it saw, and loopback (a trusted proxy too) forwarded.
        forwarded = f"6.6.6.6, {LONDON_CLIENT}, 10.1.1.1"
        answer = (await _route(http, token, forwarded)).json()
        assert answer["client_ip"] == LONDON_CLIENT

    await trusting.stop()
    wary = await start()
    async with httpx.AsyncClient(base_url=wary.url) as http:
        answer = (await _route(http, token, LONDON_CLIENT)).json()
        assert answer["client_ip"] == "127.0.0.1"


def test_client_address_walk() -> None:
    proxies = parse_networks(["10.0.0.0/8"])
    assert client_address("10.0.0.1", "1.1.1.1, 2.2.2.2", proxies) == "2.2.2.2"
    assert client_address("10.0.0.1", "2.2.2.2, 10.0.0.7", proxies) == "2.2.2.2"
    assert client_address("10.0.0.1", "10.0.0.9", proxies) == "10.0.0.9"
    assert client_address("10.0.0.1", "junk, 2.2.2.2", proxies) == "2.2.2.2"
    assert client_address("10.0.0.1", "junk", proxies) == "10.0.0.1"
    assert client_address("3.3.3.3", "2.2.2.2", proxies) == "3.3.3.3"


async def test_route_ranks_by_distance(
    start: Start, class_id: str, tmp_path: Path
) -> None:
    from liveclass.routing.geoip import Location
    from liveclass.routing.geoip_build import write_city_database

    database = tmp_path / "city.mmdb"
    write_city_database(
        database, {"81.2.69.0/24": Location(LONDON[0], LONDON[1], "GB-ENG")}
    )
    origin = await start(trusted_proxies=["127.0.0.1/32"], geoip_db=database)
    token = await _join_token(origin, class_id)
    async with httpx.AsyncClient(base_url=origin.url) as http:
        for edge_id, where, port in (("tokyo", TOKYO, 9002), ("london", LONDON, 9001)):
            await http.post(
                "/v1/edges", json=registration(edge_id, where, port), headers=EDGE
            )
        answer = (await _route(http, token, LONDON_CLIENT)).json()

    assert answer["client_location"]["region"] == "GB-ENG"
    london, tokyo = answer["candidates"]
    assert (london["edge_id"], tokyo["edge_id"]) == ("london", "tokyo")
    assert london["distance_km"] < 50 < 9000 < tokyo["distance_km"]
