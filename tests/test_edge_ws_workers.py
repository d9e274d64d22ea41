"""``liveclass edge --workers 2``: two processes on one port, one edge."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from conftest import free_port

from liveclass.edge_node.config import EdgeConfig
from liveclass.edge_node.workers import worker_config
from liveclass.origin.tokens import KeyRing
from liveclass.sdk.protocol import CloseCode, Frame, Role

LIVECLASS = str(Path(sys.executable).with_name("liveclass"))
TIMEOUT = 15.0


class Origin:
    """Keys, registrations and heartbeats, as an origin sees them."""

    def __init__(self, keyring: KeyRing) -> None:
        self.keyring = keyring
        self.registered: list[dict[str, Any]] = []
        self.heartbeats: list[dict[str, Any]] = []
        self.drain_requested = False

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/keys", self._keys)
        app.router.add_post("/v1/edges", self._register)
        app.router.add_post("/v1/edges/{edge_id}/heartbeat", self._heartbeat)
        return app

    async def _keys(self, request: web.Request) -> web.Response:
        return web.json_response(self.keyring.public_keys())

    async def _register(self, request: web.Request) -> web.Response:
        self.registered.append(await request.json())
        return web.json_response({"ok": True})

    async def _heartbeat(self, request: web.Request) -> web.Response:
        body = await request.json()
        body["edge_id"] = request.match_info["edge_id"]
        self.heartbeats.append(body)
        return web.json_response({"drain_requested": self.drain_requested})


@pytest.fixture
async def origin(keyring: KeyRing) -> AsyncIterator[tuple[Origin, str]]:
    origin = Origin(keyring)
    runner = web.AppRunner(origin.app())
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield origin, f"http://127.0.0.1:{port}"
    await runner.cleanup()


def test_more_workers_need_redis(tmp_path: Path) -> None:
    done = subprocess.run(
        [LIVECLASS, "edge", "--workers", "2", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--redis-url" in done.stderr


@pytest.mark.parametrize(("capacity", "share"), [(10, 5), (11, 6), (1, 1)])
def test_each_worker_takes_its_share_of_the_capacity(capacity: int, share: int) -> None:
    config = EdgeConfig(capacity=capacity, log_url="redis://127.0.0.1:6379/0")
    each = worker_config(config, 2)
    assert (each.capacity, each.workers, each.register) == (share, 2, False)


async def test_two_workers_serve_one_edge(
    origin: tuple[Origin, str],
    redis_url: str,
    keyring: KeyRing,
    tmp_path: Path,
) -> None:
    fake, origin_url = origin
    port = free_port()
    edge_id = f"w-{uuid.uuid4().hex[:6]}"
    class_id = f"workers-{uuid.uuid4().hex}"
    log_path = tmp_path / "edge.log"
    proc = _start_workers(edge_id, port, origin_url, redis_url, tmp_path)
    try:
        await _members_talk(port, keyring, class_id, fake, edge_id)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, log_path.read_text()


def _start_workers(
    edge_id: str, port: int, origin_url: str, redis_url: str, tmp_path: Path
) -> subprocess.Popen[bytes]:
    """``liveclass edge --workers 2``, logging to ``tmp_path / "edge.log"``."""
    with (tmp_path / "edge.log").open("wb") as out:
        return subprocess.Popen(
            [
                LIVECLASS,
                "edge",
                "--workers",
                "2",
                "--edge-id",
                edge_id,
                "--port",
                str(port),
                "--origin-url",
                origin_url,
                "--redis-url",
                redis_url,
                "--data-dir",
                str(tmp_path),
                "--no-transcode",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def test_the_origin_drains_every_worker(
    origin: tuple[Origin, str],
    redis_url: str,
    keyring: KeyRing,
    tmp_path: Path,
) -> None:
    """The drain request reaches the parent; every worker's members are
    closed with DRAINING and the edge exits 0."""
    fake, origin_url = origin
    port = free_port()
    class_id = f"workers-{uuid.uuid4().hex}"
    proc = _start_workers("w-drain", port, origin_url, redis_url, tmp_path)
    try:
        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            await _healthy(http, url)
            sockets = []
            for i in range(6):
                token = keyring.mint(class_id, f"u{i}", f"U{i}", Role.STUDENT)
                ws = await http.ws_connect(
                    f"{url}/v1/ws", params={"token": token, "v": "1"}
                )
                await ws.receive(timeout=TIMEOUT)  # the welcome
                sockets.append(ws)
            fake.drain_requested = True
            for ws in sockets:
                while (msg := await ws.receive(timeout=TIMEOUT)).type is WSMsgType.TEXT:
                    pass
                assert msg.type is WSMsgType.CLOSE, msg
                assert msg.data == CloseCode.DRAINING
        assert await asyncio.to_thread(proc.wait, 20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert fake.heartbeats[-1]["draining"] is True
    log = (tmp_path / "edge.log").read_text()
    assert "draining (asked by the origin)" in log


async def _healthy(http: aiohttp.ClientSession, url: str) -> None:
    for _ in range(200):
        try:
            async with http.get(f"{url}/healthz") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"{url} not healthy in 20 s")


async def _members_talk(
    port: int, keyring: KeyRing, class_id: str, origin: Origin, edge_id: str
) -> None:
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        await _healthy(http, url)
        # Enough connections that both workers get some (kernel hashing).
        sockets = []
        for i in range(8):
            role = Role.TEACHER if i == 0 else Role.STUDENT
            token = keyring.mint(class_id, f"u{i}", f"U{i}", role)
            ws = await http.ws_connect(
                f"{url}/v1/ws", params={"token": token, "v": "1"}
            )
            first = Frame.model_validate_json((await ws.receive(timeout=TIMEOUT)).data)
            assert first.events[0].type == "welcome"
            sockets.append(ws)
            if i == 0:
                # The teacher's join is in the log before the other worker
                # (almost surely one of the next seven) opens the class.
                await asyncio.sleep(1.5)
        await sockets[0].send_json({"type": "chat.send", "text": "to every worker"})
        for ws in sockets:
            while True:
                frame = Frame.model_validate_json(
                    (await ws.receive(timeout=TIMEOUT)).data
                )
                texts = [e.data.get("text") for e in frame.events]
                if "to every worker" in texts:
                    break
        # The class counts every worker's members: one worker opening the
        # class (its reset) must not void those another worker counted.
        teacher, listed = sockets[0], 0
        for _ in range(50):
            await teacher.send_json({"type": "presence.list"})
            frame = Frame.model_validate_json(
                (await teacher.receive(timeout=TIMEOUT)).data
            )
            lists = [e for e in frame.events if e.type == "presence.list"]
            if lists:
                listed = len(lists[-1].data["members"])
                if listed == 8:
                    break
            await asyncio.sleep(0.1)
        assert listed == 8
        # One registration, and heartbeats that count every worker's members.
        for _ in range(100):
            if origin.heartbeats and origin.heartbeats[-1]["members"] == 8:
                break
            await asyncio.sleep(0.1)
        assert [r["edge_id"] for r in origin.registered] == [edge_id]
        assert origin.heartbeats[-1]["members"] == 8
        assert origin.heartbeats[-1]["classes"] == {class_id: 8}
        for ws in sockets:
            await ws.close()
