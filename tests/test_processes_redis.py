"""An origin and two edges as separate ``liveclass`` processes, one class,
connected only through Redis."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from fleet import free_port, spawn, wait_healthy

from liveclass.sdk.admin import AdminClient
from liveclass.sdk.protocol import PROTOCOL_VERSION

pytestmark = [pytest.mark.slow, pytest.mark.redis]


@pytest.fixture
def fleet(tmp_path: Path, log_url: str) -> Iterator[dict[str, Any]]:
    """An origin and two edges, each its own process, sharing Redis."""
    api_key, edge_key = "admin-secret", "edge-secret"
    origin_port = free_port()
    origin_url = f"http://127.0.0.1:{origin_port}"
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []
    try:
        logs.append(tmp_path / "origin.log")
        procs.append(
            spawn(
                [
                    "origin",
                    "--port",
                    str(origin_port),
                    "--api-key",
                    api_key,
                    "--edge-key",
                    edge_key,
                    "--redis-url",
                    log_url,
                    "--database-url",
                    f"sqlite+aiosqlite:///{tmp_path / 'origin.db'}",
                    "--key-file",
                    str(tmp_path / "key.pem"),
                ],
                logs[-1],
            )
        )
        wait_healthy(origin_url, procs[-1], logs[-1])
        edges = {}
        for n in (1, 2):
            port = free_port()
            logs.append(tmp_path / f"edge{n}.log")
            procs.append(
                spawn(
                    [
                        "edge",
                        "--edge-id",
                        f"edge-{n}",
                        "--port",
                        str(port),
                        "--origin-url",
                        origin_url,
                        "--edge-key",
                        edge_key,
                        "--redis-url",
                        log_url,
                        "--data-dir",
                        str(tmp_path / f"e{n}"),
                    ],
                    logs[-1],
                )
            )
            edges[f"edge-{n}"] = f"http://127.0.0.1:{port}"
            wait_healthy(edges[f"edge-{n}"], procs[-1], logs[-1])
        yield {"origin": origin_url, "api_key": api_key, "edges": edges}
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc, log in zip(procs, logs, strict=True):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                pytest.fail(f"{log.name}: did not stop on SIGTERM")


class Member:
    """A raw protocol client, to pin which edge each member is on."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []
        self.seq_to = 0

    async def send(self, **message: Any) -> None:
        await self.ws.send(json.dumps(message))

    async def until(self, predicate: Any, wait_s: float = 10.0) -> dict[str, Any]:
        async with asyncio.timeout(wait_s):
            while True:
                for event in self.events:
                    if predicate(event):
                        return event
                frame = json.loads(await self.ws.recv())
                if frame.get("seq_from") is not None:
                    assert frame["seq_from"] <= self.seq_to or self.seq_to == 0
                    self.seq_to = frame["seq_to"]
                self.events.extend(frame["events"])


@pytest.fixture
async def members(fleet: dict[str, Any]) -> AsyncIterator[dict[str, Member]]:
    async with AdminClient(fleet["origin"], fleet["api_key"]) as admin:
        klass = await admin.create_class(title="two edges")
        class_id = klass.id
        await admin.start_class(class_id)
        roster = [
            ("teacher", "teacher", "edge-1"),
            ("ann", "student", "edge-1"),
            ("bob", "student", "edge-2"),
        ]
        out: dict[str, Member] = {}
        for user, role, edge in roster:
            minted = await admin.mint_token(class_id, user, user.title(), role)
            url = fleet["edges"][edge].replace("http", "ws", 1)
            ws = await websockets.connect(
                f"{url}/v1/ws?token={minted.token}&v={PROTOCOL_VERSION}"
            )
            out[user] = Member(ws)
            await out[user].until(lambda e: e["type"] == "welcome")
    yield out
    for member in out.values():
        await member.ws.close()


async def test_two_edge_processes_share_one_class(members: dict[str, Member]) -> None:
    teacher, ann, bob = members["teacher"], members["ann"], members["bob"]

    await ann.send(type="chat.send", text="hello from edge 1")
    await bob.send(type="chat.send", text="hello from edge 2")
    for member in (teacher, ann, bob):
        texts = set()
        for text in ("hello from edge 1", "hello from edge 2"):
            event = await member.until(
                lambda e, t=text: e["type"] == "chat.message" and e["data"]["text"] == t
            )
            texts.add(event["seq"])
        assert len(texts) == 2

    # Both members' chat has one order: the class log's.
    order = [
        [e["seq"] for e in m.events if e["type"] == "chat.message"]
        for m in (teacher, ann, bob)
    ]
    assert order[0] == order[1] == order[2]

    await bob.send(type="hand.raise")
    raised = await teacher.until(lambda e: e["type"] == "hand.raised")
    assert raised["data"]["user_id"] == "bob"

    await teacher.send(type="poll.open", question="Which edge?", options=["one", "two"])
    opened = await bob.until(lambda e: e["type"] == "poll.opened")
    poll_id = opened["data"]["poll_id"]
    # Each edge takes votes once it has folded the opening: wait for both.
    await ann.until(lambda e: e["type"] == "poll.opened")
    await ann.send(type="poll.vote", poll_id=poll_id, option=0)
    await bob.send(type="poll.vote", poll_id=poll_id, option=1)
    await bob.send(type="poll.vote", poll_id=poll_id, option=0)
    await teacher.until(
        lambda e: e["type"] == "poll.tally" and e["data"]["counts"] == [2, 0]
    )
    await teacher.send(type="poll.close", poll_id=poll_id)
    for member in (ann, bob):
        closed = await member.until(lambda e: e["type"] == "poll.closed")
        assert closed["data"]["counts"] == [2, 0]

    count = await ann.until(
        lambda e: e["type"] == "presence.count" and e["data"]["count"] == 3
    )
    assert count["data"]["count"] == 3
