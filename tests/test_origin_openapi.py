"""The OpenAPI document describes exactly the routes the origin serves."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from liveclass.origin.app import build_app, run_origin
from liveclass.origin.classlog import MemoryClassLog
from liveclass.origin.config import OriginConfig
from liveclass.origin.tokens import KeyRing

METHODS = {"get", "post", "put", "patch", "delete"}


@pytest.fixture
def config(tmp_path: Path, port: int) -> OriginConfig:
    return OriginConfig(
        port=port,
        api_key="k",
        database_url=f"sqlite+aiosqlite:///{tmp_path}/origin.db",
        key_file=None,
    )


@pytest.fixture
async def document(
    config: OriginConfig, memory_log: MemoryClassLog, keyring: KeyRing
) -> dict[str, Any]:
    """The document as served over HTTP."""
    server = await run_origin(config, log=memory_log, keyring=keyring)
    try:
        async with httpx.AsyncClient(base_url=server.url) as http:
            answer = await http.get("/v1/openapi.json")
    finally:
        await server.stop()
    assert answer.status_code == 200
    return dict(answer.json())


def _served(app: web.Application) -> set[tuple[str, str]]:
    routes = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        if route.method.lower() in METHODS and path:
            routes.add((route.method.lower(), path))
    return routes


async def test_every_route_is_documented_and_back(
    config: OriginConfig,
    memory_log: MemoryClassLog,
    keyring: KeyRing,
    document: dict[str, Any],
) -> None:
    app = build_app(config, log=memory_log, keyring=keyring)
    documented = {
        (method, path)
        for path, operations in document["paths"].items()
        for method in operations
    }
    served = _served(app)
    assert served == documented
    assert ("post", "/v1/classes/{class_id}/tokens/bulk") in served
    assert ("get", "/v1/route") in served
    assert ("post", "/v1/edges/{edge_id}/drain") in served


def test_document_shape(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1")
    schemas = document["components"]["schemas"]
    text = repr(document)
    refs = set(re.findall(r"#/components/schemas/(\w+)", text))
    assert refs and refs <= set(schemas), "every $ref must resolve"
    ids = [
        op["operationId"]
        for operations in document["paths"].values()
        for op in operations.values()
    ]
    assert len(ids) == len(set(ids))
    create = document["paths"]["/v1/classes"]["post"]
    assert create["security"] == [{"apiKey": []}]
    assert "class_id" in schemas["ClassCreate"]["properties"]
    assert "409" in create["responses"]
    assert "class" in schemas["ClassReport"]["properties"]
