"""The SDK's HLS player against an in-memory edge (httpx.MockTransport)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from liveclass.edge_node.media.playlist import (
    MediaPlaylist,
    Rendition,
    Segment,
    master_playlist,
)
from liveclass.sdk.media.hls import (
    HlsPlayer,
    PlayerError,
    PlayerEvent,
    PlayerState,
    ThroughputEstimator,
)

LOW = Rendition("low", 640, 360, 200_000)
HIGH = Rendition("high", 1280, 720, 2_000_000)
SEGMENT_BYTES = 10_000
BASE = "http://edge.test/v1/classes/c1/recording"


def _recording(segments: int) -> httpx.MockTransport:
    """A recording of ``segments`` one-second segments in two renditions."""
    playlist = MediaPlaylist(target_duration=1)
    for n in range(segments):
        playlist.add(Segment(n, 1.0, f"{n:06d}.ts"))
    playlist.end()
    master = master_playlist([LOW, HIGH], lambda r: f"{r.name}/vod.m3u8")

    def handle(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("master.m3u8"):
            if request.url.params.get("token") != "t":
                return httpx.Response(401)
            return httpx.Response(200, text=master)
        if path.endswith("vod.m3u8"):
            return httpx.Response(200, text=playlist.vod())
        return httpx.Response(200, content=b"x" * SEGMENT_BYTES)

    return httpx.MockTransport(handle)


async def _play(segments: int, **options: Any) -> HlsPlayer:
    async with httpx.AsyncClient(transport=_recording(segments)) as client:
        player = HlsPlayer(
            f"{BASE}/master.m3u8",
            token="t",
            client=client,
            start_buffer_s=2,
            **options,
        )
        await player.run(30)
    return player


async def test_fast_link_switches_up_once() -> None:
    player = await _play(6)
    stats = player.stats
    assert player.state is PlayerState.ENDED
    assert stats.segments_downloaded == 6
    assert stats.bytes_downloaded == 6 * SEGMENT_BYTES
    assert stats.per_rendition == {"low": 1, "high": 5}
    assert stats.switches == 1
    assert stats.events[0].kind == "switch"
    assert stats.stalls == 0
    assert stats.startup_s is not None


async def test_capped_link_stays_on_the_lowest_rendition() -> None:
    player = await _play(4, bandwidth_bps=LOW.bandwidth * 4)
    assert player.stats.per_rendition == {"low": 4}
    assert player.stats.switches == 0
    # 10 kB at 800 kbit/s: about 0.1 s per segment.
    assert player.stats.throughput_bps == pytest.approx(800_000, rel=0.3)


async def test_switches_down_when_the_link_degrades() -> None:
    def on_event(event: PlayerEvent) -> None:
        if event.kind == "switch" and event.detail["rendition"] == "high":
            player.bandwidth_bps = 600_000  # the link drops after going up

    async with httpx.AsyncClient(transport=_recording(10)) as client:
        player = HlsPlayer(
            f"{BASE}/master.m3u8", token="t", client=client, on_event=on_event
        )
        await player.run(30)
    kinds = [(e.kind, e.detail.get("rendition")) for e in player.stats.events]
    assert kinds[:2] == [("switch", "high"), ("switch", "low")]
    assert player.stats.rendition == "low"


async def test_missing_token_is_an_http_error() -> None:
    async with httpx.AsyncClient(transport=_recording(2)) as client:
        player = HlsPlayer(f"{BASE}/master.m3u8", client=client)
        with pytest.raises(httpx.HTTPStatusError):
            await player.run(5)


async def test_not_a_playlist() -> None:
    transport = httpx.MockTransport(lambda _: httpx.Response(200, text="<html>"))
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(PlayerError, match="EXTM3U"):
            await HlsPlayer(f"{BASE}/master.m3u8", client=client).run(5)


def test_estimator_follows_drops_quickly_and_rises_slowly() -> None:
    estimator = ThroughputEstimator(alpha=0.5, ceiling=10e6)
    assert estimator.estimate is None
    assert estimator.add(1e9) == 10e6  # clipped
    for _ in range(4):
        estimator.add(1e6)
    assert estimator.estimate is not None and estimator.estimate < 2e6
    for _ in range(20):
        estimator.add(1e6)
    estimator.add(10e6)
    assert estimator.estimate < 3e6  # one fast segment is not a trend
