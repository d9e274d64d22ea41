"""The HLS playlist builder, the signed URLs and the segment cache, no I/O."""

from __future__ import annotations

import asyncio

import pytest

from liveclass.edge_node.media.access import AccessDenied, Grant, MediaAccess
from liveclass.edge_node.media.cache import SingleFlightCache
from liveclass.edge_node.media.playlist import (
    MediaPlaylist,
    Rendition,
    Segment,
    master_playlist,
    rewrite_uris,
    segment_count,
)
from liveclass.edge_node.media.transcoder import DEFAULT_LADDER
from liveclass.origin.tokens import TokenVerifier
from liveclass.sdk.media.hls import parse_master, parse_media

LADDER = [Rendition("360p", 640, 360, 800_000), Rendition("720p", 1280, 720, 3_000_000)]


def _playlist(count: int, window: int = 6) -> MediaPlaylist:
    playlist = MediaPlaylist(target_duration=2, window=window)
    for n in range(count):
        playlist.add(Segment(n, 2.0, f"{n:06d}.ts"))
    return playlist


def test_master_lists_renditions_best_first_with_required_attributes() -> None:
    text = master_playlist(LADDER, lambda r: f"{r.name}/live.m3u8")
    lines = text.splitlines()
    assert lines[0] == "#EXTM3U"
    assert "#EXT-X-INDEPENDENT-SEGMENTS" in lines
    infs = [line for line in lines if line.startswith("#EXT-X-STREAM-INF:")]
    assert infs == [
        "#EXT-X-STREAM-INF:BANDWIDTH=3000000,RESOLUTION=1280x720,"
        'CODECS="avc1.42c01f,mp4a.40.2"',
        "#EXT-X-STREAM-INF:BANDWIDTH=800000,RESOLUTION=640x360,"
        'CODECS="avc1.42c01f,mp4a.40.2"',
    ]
    # Each EXT-X-STREAM-INF is followed by its URI (RFC 8216 section 4.3.4.2).
    assert lines[lines.index(infs[0]) + 1] == "720p/live.m3u8"
    assert text.endswith("\n")


def test_live_playlist_slides_and_counts_media_sequence() -> None:
    text = _playlist(10).live()
    assert "#EXT-X-MEDIA-SEQUENCE:4" in text
    assert "#EXT-X-TARGETDURATION:2" in text
    assert segment_count(text) == 6
    assert "#EXT-X-ENDLIST" not in text
    assert "#EXT-X-PLAYLIST-TYPE" not in text
    assert text.splitlines()[-1] == "000009.ts"


def test_empty_live_playlist_is_valid() -> None:
    text = MediaPlaylist(target_duration=2).live()
    assert "#EXT-X-MEDIA-SEQUENCE:0" in text
    assert segment_count(text) == 0


def test_vod_lists_everything_and_ends() -> None:
    playlist = _playlist(10)
    playlist.add(Segment(10, 1.28, "000010.ts"))
    playlist.end()
    text = playlist.vod()
    assert "#EXT-X-PLAYLIST-TYPE:VOD" in text
    assert "#EXT-X-MEDIA-SEQUENCE:0" in text
    assert text.rstrip().endswith("#EXT-X-ENDLIST")
    assert segment_count(text) == 11
    assert "#EXTINF:1.280," in text
    assert playlist.duration == pytest.approx(21.28)
    # An ended live playlist carries EXT-X-ENDLIST too.
    assert playlist.live().rstrip().endswith("#EXT-X-ENDLIST")


def test_target_duration_covers_the_longest_segment() -> None:
    playlist = MediaPlaylist(target_duration=2)
    playlist.add(Segment(0, 3.4, "0.ts"))
    assert "#EXT-X-TARGETDURATION:3" in playlist.vod()


def test_discontinuity_is_tagged_before_its_segment() -> None:
    playlist = _playlist(2)
    playlist.add(Segment(2, 2.0, "000002.ts", discontinuity=True))
    lines = playlist.vod().splitlines()
    assert lines[lines.index("#EXT-X-DISCONTINUITY") + 2] == "000002.ts"


def test_sequence_numbers_must_follow() -> None:
    playlist = _playlist(2)
    with pytest.raises(ValueError, match="does not follow 1"):
        playlist.add(Segment(5, 2.0, "x.ts"))


def test_rewrite_uris_replaces_queries_of_uri_lines_only() -> None:
    text = "#EXTM3U\n#EXTINF:2.000,\na.ts?old=1\n#EXT-X-ENDLIST\n"
    assert rewrite_uris(text, "sig=x") == (
        "#EXTM3U\n#EXTINF:2.000,\na.ts?sig=x\n#EXT-X-ENDLIST\n"
    )
    assert "a.ts\n" in rewrite_uris(text, "")


def test_player_parses_what_the_builder_writes() -> None:
    master = master_playlist(LADDER, lambda r: f"{r.name}/live.m3u8?s=1")
    variants = parse_master(master, "http://e/v1/classes/c/hls/master.m3u8?token=t")
    assert [(v.name, v.bandwidth) for v in variants] == [
        ("360p", 800_000),
        ("720p", 3_000_000),
    ]
    assert variants[0].uri == "http://e/v1/classes/c/hls/360p/live.m3u8?s=1"
    media = parse_media(_playlist(10).live(), variants[0].uri)
    assert [s.sequence for s in media.segments] == [4, 5, 6, 7, 8, 9]
    assert media.segments[0].uri == "http://e/v1/classes/c/hls/360p/000004.ts"
    assert not media.ended


def test_ladder_bandwidths_are_ordered_and_distinct() -> None:
    renditions = [step.rendition() for step in DEFAULT_LADDER]
    assert renditions[0].bandwidth > renditions[1].bandwidth
    assert {r.resolution for r in renditions} == {"1280x720", "640x360"}


# Signed URLs.


def _access(ttl_s: float = 60, now: float | list[float] = 1000.0) -> MediaAccess:
    clock = now if isinstance(now, list) else [now]
    return MediaAccess(
        TokenVerifier(), secret=b"k", ttl_s=ttl_s, clock=lambda: clock[0]
    )


def test_signed_query_round_trips_and_expires() -> None:
    now = [1000.0]
    access = _access(now=now)
    grant = Grant("c1", "u1", token_exp=2000)
    query = dict(part.split("=") for part in access.signed_query(grant).split("&"))
    assert access.check("c1", query).user == "u1"
    with pytest.raises(AccessDenied, match="bad signature"):
        access.check("c2", query)  # another class
    with pytest.raises(AccessDenied, match="bad signature"):
        access.check("c1", {**query, "u": "u2"})
    now[0] = 1061
    with pytest.raises(AccessDenied, match="expired"):
        access.check("c1", query)


def test_signature_never_outlives_the_token() -> None:
    access = _access(ttl_s=600)
    query = access.signed_query(Grant("c1", "u1", token_exp=1010))
    assert "exp=1010" in query


def test_no_credentials_is_401() -> None:
    access = _access()
    with pytest.raises(AccessDenied) as info:
        access.check("c1", {})
    assert info.value.status == 401


# The cache.


async def test_cache_fetches_once_for_concurrent_misses() -> None:
    cache = SingleFlightCache()
    calls = 0

    async def fetch() -> bytes:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return b"body"

    bodies = await asyncio.gather(*(cache.get("k", fetch) for _ in range(50)))
    assert bodies == [b"body"] * 50
    assert calls == 1 == cache.upstream_fetches
    assert await cache.get("k", fetch) == b"body"
    assert calls == 1
    await cache.close()


async def test_cache_refetches_stale_entries_and_evicts_by_bytes() -> None:
    cache = SingleFlightCache(max_bytes=10)

    async def fetch() -> bytes:
        return b"12345"

    await cache.get("a", fetch, max_age=0.0)
    await cache.get("a", fetch, max_age=0.0)
    assert cache.upstream_fetches == 2
    await cache.get("b", fetch)
    await cache.get("c", fetch)
    assert cache.size_bytes == 10
    assert cache.upstream_fetches == 4  # "a" was the least recent: out
    await cache.get("c", fetch)
    assert cache.upstream_fetches == 4
    await cache.get("a", fetch)  # "b" out
    await cache.get("b", fetch)
    assert cache.upstream_fetches == 6


async def test_cache_does_not_keep_failures() -> None:
    cache = SingleFlightCache()

    async def fail() -> bytes:
        raise OSError("down")

    with pytest.raises(OSError):
        await cache.get("k", fail)

    async def fetch() -> bytes:
        return b"ok"

    assert await cache.get("k", fetch) == b"ok"
