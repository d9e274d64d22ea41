"""Latency probing against real loopback HTTP servers."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from liveclass.routing.probe import probe


async def _serve(
    released: asyncio.Event, delay: float = 0.0, status: int = 200
) -> web.AppRunner:
    async def ping(request: web.Request) -> web.Response:
        # Slow handlers end at teardown, so that cleanup does not wait.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(released.wait(), delay)
        return web.Response(status=status, text="pong")

    app = web.Application()
    app.router.add_get("/v1/ping", ping)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


def _url(runner: web.AppRunner) -> str:
    host, port = runner.addresses[0][:2]
    return f"http://{host}:{port}/v1/ping"


@pytest.fixture
async def servers(port: int) -> AsyncIterator[dict[str, str]]:
    released = asyncio.Event()
    runners = {
        "fast": await _serve(released),
        "medium": await _serve(released, delay=0.05),
        "slow": await _serve(released, delay=5.0),
        "failing": await _serve(released, status=503),
    }
    urls = {name: _url(runner) for name, runner in runners.items()}
    urls["refusing"] = f"http://127.0.0.1:{port}/v1/ping"
    yield urls
    released.set()
    for runner in runners.values():
        await runner.cleanup()


async def test_fastest_first_unreachable_last(servers: dict[str, str]) -> None:
    order = ["slow", "refusing", "medium", "failing", "fast"]
    start = time.perf_counter()
    results = await probe([servers[n] for n in order], timeout=0.3, attempts=2)
    elapsed = time.perf_counter() - start

    by_url = {url: name for name, url in servers.items()}
    assert [by_url[url] for url, _ in results] == [
        "fast",
        "medium",
        "slow",
        "refusing",
        "failing",
    ]
    rtts = dict((by_url[url], rtt) for url, rtt in results)
    assert rtts["fast"] is not None and rtts["fast"] < 0.05
    assert rtts["medium"] is not None and rtts["medium"] >= 0.05
    assert rtts["slow"] is None and rtts["refusing"] is None
    assert rtts["failing"] is None
    # In parallel, and a timed-out URL is not tried again: one timeout.
    assert elapsed < 0.3 + 0.25


async def test_empty_and_malformed() -> None:
    assert await probe([]) == []
    assert await probe(["not a url", "ftp://127.0.0.1/x"], timeout=0.2) == [
        ("not a url", None),
        ("ftp://127.0.0.1/x", None),
    ]
