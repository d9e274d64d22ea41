"""An edge whose class log stops answering, in process: provisional chat,
the bound on what it holds, and a log that comes back empty (in memory, and
on a Redis of the test's own)."""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import aiohttp
import pytest
from local_redis import LocalRedis, RedisUnavailable
from test_edge_server import Client, Origin
from test_faults import edge_config

from liveclass.edge_node.app import EdgeRunner, run_edge
from liveclass.origin.classlog import ClassLogError, MemoryClassLog
from liveclass.origin.classlog.redis import RedisClassLog
from liveclass.origin.contract import LogEvent
from liveclass.origin.tokens import KeyRing
from liveclass.sdk.protocol import CloseCode, Event, Role

Start = Callable[[str], Awaitable[EdgeRunner]]
Join = Callable[..., Awaitable[Client]]


class FlakyLog(MemoryClassLog):
    """An in-process log that can be down (every call fails at once, as
    when Redis refuses connections) and can lose everything it holds."""

    down = False

    def _check(self) -> None:
        if self.down:
            raise ClassLogError("connection refused")

    async def append(self, class_id: str, events: Sequence[LogEvent]) -> list[LogEvent]:
        self._check()
        return await super().append(class_id, events)

    async def read(
        self, class_id: str, after: int, limit: int = 1000
    ) -> list[LogEvent]:
        self._check()
        return await super().read(class_id, after, limit)

    async def wait(
        self, class_id: str, after: int, timeout: float, limit: int = 1000
    ) -> list[LogEvent]:
        self._check()
        return await super().wait(class_id, after, timeout, limit)

    async def head(self, class_id: str) -> int:
        self._check()
        return await super().head(class_id)

    def lose_everything(self) -> None:
        """Forget every class, as a Redis restarted without persistence."""
        self._streams.clear()


@pytest.fixture
def log() -> FlakyLog:
    return FlakyLog()


@pytest.fixture
async def start(
    log: FlakyLog, keyring: KeyRing, tmp_path: Path
) -> AsyncIterator[Start]:
    """Starts in-process edges on ``log``; stops them and their origin."""
    origin = Origin(keyring)
    await origin.start()
    edges: list[EdgeRunner] = []

    async def start_(edge_id: str) -> EdgeRunner:
        edge = await run_edge(edge_config(edge_id, origin.url, tmp_path), log)
        edges.append(edge)
        for _ in range(250):  # the first key fetch runs in the background
            if edge.node.verifier.kids:
                break
            await asyncio.sleep(0.02)
        return edge

    yield start_
    log.down = False
    for edge in edges:
        await edge.stop()
    await origin.stop()


@pytest.fixture
async def join(keyring: KeyRing, class_id: str) -> AsyncIterator[Join]:
    """Joins a member to an edge as a raw protocol client."""
    async with aiohttp.ClientSession() as http:

        async def join_(
            edge: EdgeRunner, user: str, role: Role = Role.STUDENT, welcome: bool = True
        ) -> Client:
            token = keyring.mint(class_id, user, user.title(), role)
            ws = await http.ws_connect(
                f"{edge.url}/v1/ws", params={"token": token, "v": "1"}
            )
            client = Client(ws)
            if welcome:
                assert (await client.frame()).events[0].type == "welcome"
            return client

        yield join_


async def metric(edge: EdgeRunner, name: str) -> float:
    """One metric of ``edge``, from its Prometheus text."""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{edge.url}/metrics") as answer:
            text = await answer.text()
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


async def reset_of(client: Client) -> Event:
    """The ``state.reset`` ``client`` gets next; the numbers start over
    there, so frames up to it are not checked for gaps."""
    while True:
        client.last_seq = None
        frame = await client.frame()
        for event in frame.events:
            if event.type == "state.reset":
                return event


async def test_held_chat_is_shown_at_once_then_confirmed(
    start: Start, join: Join, log: FlakyLog
) -> None:
    a, b = await start("edge-a"), await start("edge-b")
    tea = await join(a, "tea", Role.TEACHER)
    ann = await join(a, "ann")
    bob = await join(b, "bob")
    await tea.event("member.joined", user_id="bob")

    log.down = True
    await ann.send(type="chat.send", text="held", ref="r1")
    ids = set()
    for member in (tea, ann):
        shown = await member.event("chat.message", text="held")
        assert shown.seq is None and shown.data["provisional"] is True
        assert shown.actor == "ann" and shown.data["name"] == "Ann"
        ids.add(shown.data["provisional_id"])
    assert len(ids) == 1
    assert await metric(a, "liveclass_edge_log_backlog") >= 1
    assert await metric(a, "liveclass_edge_log_held_classes") == 1

    log.down = False
    for member in (tea, ann):
        numbered = await member.event("chat.message", text="held")
        assert numbered.seq is not None and "provisional" not in numbered.data
        assert numbered.data["provisional_id"] in ids
    on_b = await bob.event("chat.message", text="held")
    assert on_b.seq is not None and "provisional_id" not in on_b.data
    assert all(
        e.seq is not None
        for f in bob.frames
        for e in f.events
        if e.type == "chat.message"
    )
    assert await metric(a, "liveclass_edge_log_backlog") == 0
    assert await metric(a, "liveclass_edge_provisional_chat_total") == 1
    assert await metric(b, "liveclass_edge_provisional_chat_total") == 0


async def test_a_full_backlog_refuses_messages_and_joins(
    start: Start, join: Join, log: FlakyLog
) -> None:
    a = await start("edge-a")
    tea = await join(a, "tea", Role.TEACHER)
    ann = await join(a, "ann")
    await tea.event("member.joined", user_id="ann")

    a.node.batcher.max_pending = 2
    log.down = True
    for n in range(3):
        await ann.send(type="chat.send", text=f"m{n}", ref=f"r{n}")
    refused = await ann.event("error", ref="r2")
    assert refused.data["code"] == "unavailable"
    assert "try again later" in refused.data["message"]
    assert await metric(a, "liveclass_edge_log_backlog") == 2
    late = await join(a, "cat", welcome=False)
    assert (await late.closed())[0] == CloseCode.TRY_AGAIN_LATER

    log.down = False
    texts = [(await tea.event("chat.message")).data["text"] for _ in range(4)]
    assert texts == ["m0", "m1", "m0", "m1"]  # provisional, then numbered
    await tea.send(type="chat.send", text="after")
    assert (await tea.event("chat.message", text="after")).seq is not None
    assert await metric(a, 'liveclass_edge_errors_total{code="unavailable"}') == 1


async def test_a_log_back_empty_resets_members_and_says_so(
    start: Start, join: Join, log: FlakyLog, caplog: pytest.LogCaptureFixture
) -> None:
    a = await start("edge-a")
    tea = await join(a, "tea", Role.TEACHER)
    ann = await join(a, "ann")
    await tea.send(type="chat.send", text="before")
    await ann.event("chat.message", text="before")

    log.down = True
    log.lose_everything()
    await asyncio.sleep(1.2)  # the room's reads fail meanwhile
    with caplog.at_level(logging.ERROR, logger="liveclass.edge_node.room"):
        log.down = False
        reset = await reset_of(ann)
        await reset_of(tea)
    assert reset.data["snapshot"]["chat"] == []
    assert any("class log lost" in r.message for r in caplog.records)

    # The numbers go on from the reset without a gap, and the edge's members
    # are counted in the new log.
    await tea.send(type="chat.send", text="after")
    assert (await ann.event("chat.message", text="after")).seq is not None
    await tea.send(type="presence.list")
    listed = await tea.event("presence.list")
    assert sorted(m["user_id"] for m in listed.data["members"]) == ["ann", "tea"]


@pytest.mark.slow
@pytest.mark.redis
async def test_redis_restarted_without_its_data_is_reported(
    keyring: KeyRing,
    class_id: str,
    tmp_path: Path,
    join: Join,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The same on a real Redis of the test's own, restarted with its
    append-only file gone: the edge sees its reads fail, then the log lost."""
    try:
        server = LocalRedis(tmp_path / "redis")
    except RedisUnavailable as exc:
        pytest.skip(str(exc))
    server.start()
    log = RedisClassLog.from_url(server.url)
    origin = Origin(keyring)
    await origin.start()
    edge = await run_edge(edge_config("edge-a", origin.url, tmp_path), log)
    try:
        for _ in range(250):
            if edge.node.verifier.kids:
                break
            await asyncio.sleep(0.02)
        tea = await join(edge, "tea", Role.TEACHER)
        for n in range(3):
            await tea.send(type="chat.send", text=f"before-{n}")
        await tea.event("chat.message", text="before-2")

        with caplog.at_level(logging.ERROR, logger="liveclass.edge_node.room"):
            await asyncio.to_thread(server.shutdown)
            shutil.rmtree(server.folder)
            await asyncio.to_thread(server.start)
            reset = await reset_of(tea)
        assert any("class log lost" in r.message for r in caplog.records)
        assert reset.data["snapshot"]["chat"] == []
        await tea.send(type="chat.send", text="after")
        assert (await tea.event("chat.message", text="after")).seq is not None
    finally:
        await edge.stop()
        await origin.stop()
        await log.close()
        server.destroy()
