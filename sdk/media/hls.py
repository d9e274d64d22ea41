"""An HLS player for live classes and recordings, with adaptive bitrate.

:class:`HlsPlayer` fetches the master playlist, starts on the lowest
rendition, and then, segment by segment, picks the best rendition the
measured throughput allows: an exponentially weighted moving average of
segment download throughput, times a safety factor. It keeps a model of
its playback buffer, played at real time from the first segment on, and
counts a stall whenever the buffer runs dry. It does not decode media.

``bandwidth_bps`` caps how fast response bodies are read, to act as a
student behind a slow link on a fast test machine.

Needs httpx only, like the rest of the SDK's base install.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from liveclass.sdk.http import http_client

logger = logging.getLogger(__name__)


class PlayerError(Exception):
    """The stream cannot be played: a playlist is missing or malformed."""


@dataclass(frozen=True)
class Variant:
    """One rendition listed by a master playlist (RFC 8216 section 4.3.4.2)."""

    name: str
    uri: str
    bandwidth: int
    resolution: str | None = None


@dataclass(frozen=True)
class MediaSegment:
    """One segment listed by a media playlist."""

    sequence: int
    duration: float
    uri: str


@dataclass(frozen=True)
class MediaPlaylistView:
    """What a player needs from a media playlist."""

    target_duration: float
    segments: list[MediaSegment]
    ended: bool


def _attributes(text: str) -> dict[str, str]:
    """Parse an attribute list (RFC 8216 section 4.2), quotes removed."""
    attributes: dict[str, str] = {}
    key, value, quoted, reading_key = "", "", False, True
    for char in text + ",":
        if reading_key:
            if char == "=":
                reading_key = False
            else:
                key += char
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            attributes[key.strip()] = value
            key, value, reading_key = "", "", True
        else:
            value += char
    return attributes


def parse_master(text: str, base_url: str) -> list[Variant]:
    """The variants of a master playlist, lowest bandwidth first.

    Raises :class:`PlayerError` if it lists none.
    """
    _check_header(text)
    variants = []
    pending: dict[str, str] | None = None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("#EXT-X-STREAM-INF:"):
            pending = _attributes(line.split(":", 1)[1])
        elif line and not line.startswith("#") and pending is not None:
            path = urlsplit(line).path.rsplit("/", 2)
            name = path[-2] if len(path) > 1 else line
            variants.append(
                Variant(
                    name=name,
                    uri=urljoin(base_url, line),
                    bandwidth=int(pending.get("BANDWIDTH", "0")),
                    resolution=pending.get("RESOLUTION"),
                )
            )
            pending = None
    if not variants:
        raise PlayerError("the master playlist lists no variant stream")
    return sorted(variants, key=lambda v: v.bandwidth)


def parse_media(text: str, base_url: str) -> MediaPlaylistView:
    """The segments of a media playlist, with their sequence numbers."""
    _check_header(text)
    target = 0.0
    sequence = 0
    duration: float | None = None
    segments = []
    ended = False
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("#EXT-X-TARGETDURATION:"):
            target = float(line.split(":", 1)[1])
        elif line.startswith("#EXT-X-MEDIA-SEQUENCE:"):
            sequence = int(line.split(":", 1)[1])
        elif line.startswith("#EXTINF:"):
            duration = float(line.split(":", 1)[1].split(",", 1)[0])
        elif line == "#EXT-X-ENDLIST":
            ended = True
        elif line and not line.startswith("#") and duration is not None:
            segments.append(MediaSegment(sequence, duration, urljoin(base_url, line)))
            sequence += 1
            duration = None
    return MediaPlaylistView(target, segments, ended)


def _check_header(text: str) -> None:
    # The first line of every playlist is EXTM3U (RFC 8216 section 4.3.1.1).
    if not text.startswith("#EXTM3U"):
        raise PlayerError("not an HLS playlist: it does not start with #EXTM3U")


class ThroughputEstimator:
    """Two moving averages of throughput samples; the estimate is the lower.

    The fast average (weight ``alpha``) follows a drop within a few
    segments; the slow one (weight ``alpha / 4``) keeps one lucky download
    from lifting the estimate. Samples are clipped at ``ceiling``: on a fast
    link one sample of gigabits would otherwise take many segments to forget.
    """

    def __init__(self, alpha: float = 0.5, ceiling: float | None = None) -> None:
        self.alpha = alpha
        self.ceiling = ceiling
        self._fast: float | None = None
        self._slow: float | None = None

    @property
    def estimate(self) -> float | None:
        """Bits per second, or None before the first sample."""
        if self._fast is None or self._slow is None:
            return None
        return min(self._fast, self._slow)

    def add(self, bits_per_s: float) -> float:
        """Take one sample; return the new estimate."""
        if self.ceiling is not None:
            bits_per_s = min(bits_per_s, self.ceiling)
        self._fast = _mix(self._fast, bits_per_s, self.alpha)
        self._slow = _mix(self._slow, bits_per_s, self.alpha / 4)
        return min(self._fast, self._slow)


def _mix(average: float | None, sample: float, weight: float) -> float:
    return sample if average is None else weight * sample + (1 - weight) * average


class PlayerState(StrEnum):
    """Where the modelled playback is."""

    STARTING = "starting"
    PLAYING = "playing"
    STALLED = "stalled"
    ENDED = "ended"


@dataclass(frozen=True)
class PlayerEvent:
    """Something the player did: ``switch``, ``stall``, ``resume``, ``end``."""

    kind: str
    at: float
    """Seconds since :meth:`HlsPlayer.run` started."""
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class PlayerStats:
    """What a player has done so far."""

    rendition: str | None = None
    segments_downloaded: int = 0
    segments_played: int = 0
    bytes_downloaded: int = 0
    switches: int = 0
    stalls: int = 0
    stall_s: float = 0.0
    startup_s: float | None = None
    """Seconds from start until playback began."""
    buffer_s: float = 0.0
    throughput_bps: float | None = None
    """The estimated throughput (:class:`ThroughputEstimator`)."""
    per_rendition: dict[str, int] = field(default_factory=dict)
    """Segments downloaded per rendition."""
    events: list[PlayerEvent] = field(default_factory=list)


class HlsPlayer:
    """Plays the live stream or recording at ``master_url``.

    ``token`` is added to the first request only; the edge signs the URIs
    of the playlists it returns. ``safety`` is the share of the measured
    throughput a rendition may use; ``alpha`` the weight of the newest
    sample in the fast moving average. ``bandwidth_bps`` caps the link and
    may be changed while playing, to act out a link that degrades.

    Playback starts once ``start_buffer_s`` of media is buffered (or the
    stream has ended), as players do to ride out the jitter of live segment
    arrivals; downloading pauses while more than ``max_buffer_s`` is
    buffered (recordings). ``on_event`` hears every :class:`PlayerEvent`.
    """

    def __init__(
        self,
        master_url: str,
        *,
        token: str | None = None,
        bandwidth_bps: float | None = None,
        safety: float = 0.7,
        alpha: float = 0.5,
        live_edge_segments: int = 3,
        start_buffer_s: float = 4.0,
        max_buffer_s: float = 30.0,
        client: httpx.AsyncClient | None = None,
        on_event: Callable[[PlayerEvent], None] | None = None,
    ) -> None:
        self.master_url = master_url
        self.stats = PlayerStats()
        self.state = PlayerState.STARTING
        self.variants: list[Variant] = []
        self._token = token
        self.bandwidth_bps = bandwidth_bps
        self._safety = safety
        self._throughput = ThroughputEstimator(alpha)
        self._live_edge = live_edge_segments
        self._start_buffer_s = start_buffer_s
        self._max_buffer_s = max(max_buffer_s, start_buffer_s)
        self._client = client
        self._on_event = on_event
        self._stop = asyncio.Event()
        self._started = 0.0
        self._buffer: deque[float] = deque()
        self._clock = 0.0
        self._stalled_at = 0.0
        self._queries: dict[str, str] = {}

    def stop(self) -> None:
        """Make :meth:`run` return after the current download."""
        self._stop.set()

    async def run(self, duration_s: float | None = None) -> PlayerStats:
        """Play until the stream ends, ``duration_s`` passes or :meth:`stop`.

        Raises :class:`PlayerError` or :class:`httpx.HTTPError` when a
        playlist cannot be fetched.
        """
        own = self._client is None
        client = self._client or http_client()
        self._started = self._clock = time.monotonic()
        try:
            await self._play(client, duration_s)
        finally:
            if own:
                await client.aclose()
        self._advance()
        return self.stats

    async def _play(self, client: httpx.AsyncClient, duration_s: float | None) -> None:
        await self._load_master(client)
        variant = self.variants[0]
        self._switch(variant, reason="start")
        next_sequence: int | None = None
        while not self._stop.is_set():
            if duration_s is not None and self._elapsed() >= duration_s:
                return
            playlist = await self._load_media(client, variant)
            segments = playlist.segments
            if next_sequence is None and segments:
                # Start a few segments from the live end (RFC 8216 section
                # 6.3.3): the buffer then rides out one slow download.
                start = 0 if playlist.ended else max(0, len(segments) - self._live_edge)
                next_sequence = segments[start].sequence
            if segments and next_sequence is not None:
                # Fell out of the sliding window: skip to its start.
                next_sequence = max(next_sequence, segments[0].sequence)
            pending = [s for s in segments if s.sequence == next_sequence]
            if not pending:
                if playlist.ended:
                    self._start_playing()
                    self._emit("end")
                    self.state = PlayerState.ENDED
                    return
                # No new segment yet: reload after half a target duration
                # (RFC 8216 section 6.3.4).
                await self._wait(max(playlist.target_duration / 2, 0.2))
                continue
            segment = pending[0]
            self._advance()
            if self.stats.buffer_s > self._max_buffer_s:
                await self._wait(self.stats.buffer_s - self._max_buffer_s)
                continue
            await self._download(client, segment, variant)
            next_sequence = segment.sequence + 1
            variant = self._choose(variant)

    async def _wait(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except TimeoutError:
            pass

    async def _load_master(self, client: httpx.AsyncClient) -> None:
        params = {"token": self._token} if self._token else None
        response = await client.get(self.master_url, params=params)
        response.raise_for_status()
        self.variants = parse_master(response.text, str(response.url))
        # Beyond twice what the best rendition needs, more throughput
        # changes no decision.
        self._throughput.ceiling = 2 * self.variants[-1].bandwidth / self._safety

    async def _load_media(
        self, client: httpx.AsyncClient, variant: Variant
    ) -> MediaPlaylistView:
        url = variant.uri
        query = self._queries.get(variant.name)
        if query:
            # Signatures cover the whole class: reuse the freshest one the
            # edge gave, so the playlist URL does not outlive its signature.
            url = url.split("?", 1)[0] + "?" + query
        response = await client.get(url)
        if response.status_code == 401 and self._token:
            # The signature expired while we were away: show the token again.
            await self._load_master(client)
            variant = next(v for v in self.variants if v.name == variant.name)
            response = await client.get(variant.uri)
        response.raise_for_status()
        playlist = parse_media(response.text, str(response.url))
        if playlist.segments:
            self._queries[variant.name] = urlsplit(playlist.segments[-1].uri).query
        return playlist

    async def _download(
        self, client: httpx.AsyncClient, segment: MediaSegment, variant: Variant
    ) -> None:
        began = time.monotonic()
        size = 0
        async with client.stream("GET", segment.uri) as response:
            response.raise_for_status()
            async for chunk in response.aiter_bytes(64 * 1024):
                size += len(chunk)
                if self.bandwidth_bps:
                    # Read no faster than the capped link would deliver.
                    due = began + size * 8 / self.bandwidth_bps - time.monotonic()
                    if due > 0:
                        await asyncio.sleep(due)
        seconds = max(time.monotonic() - began, 1e-6)
        self.stats.throughput_bps = self._throughput.add(size * 8 / seconds)
        self.stats.segments_downloaded += 1
        self.stats.bytes_downloaded += size
        per = self.stats.per_rendition
        per[variant.name] = per.get(variant.name, 0) + 1
        self._buffered(segment.duration)

    def _choose(self, current: Variant) -> Variant:
        """The best variant the throughput allows; the lowest if none fits."""
        budget = (self.stats.throughput_bps or 0) * self._safety
        fitting = [v for v in self.variants if v.bandwidth <= budget]
        best = fitting[-1] if fitting else self.variants[0]
        if best.name != current.name:
            self._switch(best, reason="throughput", previous=current.name)
        return best

    def _switch(
        self, variant: Variant, reason: str, previous: str | None = None
    ) -> None:
        if previous is not None:
            self.stats.switches += 1
            self._emit(
                "switch",
                previous=previous,
                rendition=variant.name,
                throughput_bps=self.stats.throughput_bps,
            )
        self.stats.rendition = variant.name
        logger.debug("playing %s (%s)", variant.name, reason)

    # The playback model.

    def _elapsed(self) -> float:
        return time.monotonic() - self._started

    def _buffered(self, duration: float) -> None:
        self._advance()
        self._buffer.append(duration)
        if self.state is PlayerState.STARTING:
            if sum(self._buffer) >= self._start_buffer_s:
                self._start_playing()
        elif self.state is PlayerState.STALLED:
            self.stats.stall_s += time.monotonic() - self._stalled_at
            self.state = PlayerState.PLAYING
            self._emit("resume")
        self.stats.buffer_s = sum(self._buffer)

    def _start_playing(self) -> None:
        if self.state is PlayerState.STARTING and self._buffer:
            self.state = PlayerState.PLAYING
            self.stats.startup_s = self._elapsed()
            self._clock = time.monotonic()

    def _advance(self) -> None:
        """Play the buffer from the last update to now."""
        now = time.monotonic()
        if self.state is PlayerState.PLAYING:
            left = now - self._clock
            while self._buffer and left >= self._buffer[0]:
                left -= self._buffer.popleft()
                self.stats.segments_played += 1
            if self._buffer:
                self._buffer[0] -= left
            else:
                self.state = PlayerState.STALLED
                self._stalled_at = now - left
                self.stats.stalls += 1
                self._emit("stall")
        self._clock = now
        self.stats.buffer_s = sum(self._buffer)

    def _emit(self, kind: str, **detail: Any) -> None:
        event = PlayerEvent(kind, round(self._elapsed(), 3), detail)
        self.stats.events.append(event)
        if self._on_event is not None:
            self._on_event(event)
