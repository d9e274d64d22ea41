"""Publishing media to an edge over WebRTC, WHIP style.

:class:`WhipPublisher` posts an SDP offer to the edge's WHIP URL and applies
the answer (draft-ietf-wish-whip, section 4.2); deleting the returned
resource URL stops the session. :func:`clip_tracks` makes a teacher out of a
video file: its H.264 video is sent as it is in the file, packet by packet,
without decoding or encoding it (aiortc packs an ``av.Packet`` a track
returns instead of encoding a frame), and its audio is decoded for aiortc to
encode as Opus. The clip loops with continuous timestamps, in real time.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import time
from collections.abc import Iterator, Sequence
from urllib.parse import urljoin

import av
import httpx
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from av.bitstream import BitStreamFilterContext

from liveclass.sdk.http import http_client
from liveclass.sdk.media.ice import LOOPBACK, advertise

logger = logging.getLogger(__name__)

AUDIO_RATE = 48_000
AUDIO_SAMPLES = 960
"""20 ms at 48 kHz: one Opus frame, what aiortc's encoder expects."""


class PublishError(Exception):
    """The edge refused the offer or could not be reached."""


class _Clock:
    """The start time both tracks of one clip pace against."""

    def __init__(self) -> None:
        self.start: float | None = None

    async def wait_until(self, seconds: float) -> None:
        if self.start is None:
            self.start = time.monotonic()
        delay = self.start + seconds - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


class H264ClipTrack(MediaStreamTrack):
    """A video track that sends a file's H.264 packets, looping, unencoded.

    ``recv`` returns Annex B ``av.Packet`` s (the form RTP packetization
    needs, RFC 6184), in real time. Raises :class:`ValueError` if the file's
    video is not H.264.
    """

    kind = "video"

    def __init__(self, path: str, clock: _Clock | None = None) -> None:
        super().__init__()
        self._path = path
        self._clock = clock or _Clock()
        self._packets = self._read()
        self.loops = 0

    def _read(self) -> Iterator[tuple[av.Packet, float]]:
        offset = 0
        while True:
            with av.open(self._path) as container:
                stream = container.streams.video[0]
                if stream.codec_context.name != "h264":
                    raise ValueError(f"{self._path}: video is not H.264")
                # MP4 stores NAL units length-prefixed with parameter sets
                # aside; the filter writes start codes and repeats SPS/PPS
                # before each keyframe, so a receiver can start at any loop.
                annexb = BitStreamFilterContext("h264_mp4toannexb", stream)
                time_base = stream.time_base or fractions.Fraction(1, 90_000)
                rate = stream.average_rate or 25
                step = int(1 / (rate * time_base))
                end = 0
                for packet in container.demux(stream):
                    for out in annexb.filter(packet if packet.size else None):
                        pts = (out.pts or 0) + offset
                        out.pts = out.dts = pts
                        out.time_base = time_base
                        end = max(end, pts + step)
                        yield out, float(pts * time_base)
            offset = end
            self.loops += 1

    async def recv(self) -> av.Packet:
        """The next packet, when it is due."""
        packet, at = next(self._packets)
        await self._clock.wait_until(at)
        return packet


class ClipAudioTrack(MediaStreamTrack):
    """An audio track that plays a file's audio, looping, in real time."""

    kind = "audio"

    def __init__(self, path: str, clock: _Clock | None = None) -> None:
        super().__init__()
        self._path = path
        self._clock = clock or _Clock()
        self._frames = self._read()
        self._samples = 0

    def _read(self) -> Iterator[av.AudioFrame]:
        while True:
            resampler = av.AudioResampler(
                format="s16", layout="stereo", rate=AUDIO_RATE, frame_size=AUDIO_SAMPLES
            )
            with av.open(self._path) as container:
                for frame in container.decode(container.streams.audio[0]):
                    yield from resampler.resample(frame)
            yield from resampler.resample(None)

    async def recv(self) -> av.AudioFrame:
        """The next 20 ms of audio, when it is due."""
        frame = next(self._frames)
        frame.pts = self._samples
        frame.time_base = fractions.Fraction(1, AUDIO_RATE)
        self._samples += frame.samples
        await self._clock.wait_until(frame.pts / AUDIO_RATE)
        return frame


def clip_tracks(path: str) -> tuple[H264ClipTrack, ClipAudioTrack | None]:
    """A looping video and audio track pair from the H.264 file at ``path``.

    The audio track is None when the file has no audio.
    """
    clock = _Clock()
    with av.open(path) as container:
        has_audio = bool(container.streams.audio)
    audio = ClipAudioTrack(path, clock) if has_audio else None
    return H264ClipTrack(path, clock), audio


class WhipPublisher:
    """A WebRTC session that sends ``tracks`` to an edge's WHIP endpoint.

    ``ice_addresses`` are the local addresses offered as ICE candidates
    (loopback by default); ``ice_servers`` STUN/TURN URLs (none by default).
    Video is sent as H.264 only.
    """

    def __init__(
        self,
        whip_url: str,
        token: str,
        tracks: Sequence[MediaStreamTrack],
        *,
        ice_addresses: Sequence[str] = LOOPBACK,
        ice_servers: Sequence[str] = (),
        timeout_s: float = 10.0,
    ) -> None:
        self.whip_url = whip_url
        self.resource_url: str | None = None
        self._token = token
        self._tracks = list(tracks)
        self._ice_addresses = tuple(ice_addresses)
        servers = [RTCIceServer(urls=url) for url in ice_servers]
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))
        self._timeout_s = timeout_s

    async def connected(self, timeout_s: float = 10.0) -> None:
        """Wait until ICE and DTLS are up.

        Raises :class:`PublishError` if the connection fails or is not up
        within ``timeout_s``.
        """
        up = asyncio.Event()

        def changed() -> None:
            if self.pc.connectionState in ("connected", "failed", "closed"):
                up.set()

        self.pc.on("connectionstatechange", changed)
        changed()
        try:
            await asyncio.wait_for(up.wait(), timeout_s)
        except TimeoutError:
            raise PublishError(f"not connected after {timeout_s} s") from None
        finally:
            self.pc.remove_listener("connectionstatechange", changed)
        if self.pc.connectionState != "connected":
            raise PublishError(f"connection {self.pc.connectionState}")

    @property
    def connection_state(self) -> str:
        """The peer connection's state: new, connecting, connected, failed..."""
        return str(self.pc.connectionState)

    async def start(self) -> None:
        """Offer, post, apply the answer. Raises :class:`PublishError`."""
        for track in self._tracks:
            transceiver = self.pc.addTransceiver(track, direction="sendonly")
            if track.kind == "video":
                # The clip's packets are H.264; never let VP8 be negotiated.
                codecs = RTCRtpSender.getCapabilities("video").codecs
                transceiver.setCodecPreferences(
                    [c for c in codecs if c.mimeType == "video/H264"]
                )
        offer = await self.pc.createOffer()
        with advertise(self._ice_addresses):
            # aiortc gathers every candidate here: the offer posted is
            # complete, as WHIP without trickle needs.
            await self.pc.setLocalDescription(offer)
        headers = {
            "Authorization": f"Bearer {self._token}",
            "Content-Type": "application/sdp",
        }
        try:
            async with http_client(timeout_s=self._timeout_s) as client:
                response = await client.post(
                    self.whip_url, content=self.pc.localDescription.sdp, headers=headers
                )
        except httpx.HTTPError as exc:
            raise PublishError(f"cannot reach {self.whip_url}: {exc}") from None
        if response.status_code != 201:
            raise PublishError(
                f"edge refused the offer: {response.status_code} {response.text}"
            )
        location = response.headers.get("Location")
        if location:
            self.resource_url = urljoin(self.whip_url, location)
        answer = RTCSessionDescription(sdp=response.text, type="answer")
        await self.pc.setRemoteDescription(answer)

    async def stop(self) -> None:
        """End the session: delete the WHIP resource, close the connection."""
        if self.resource_url is not None:
            headers = {"Authorization": f"Bearer {self._token}"}
            try:
                async with http_client(timeout_s=self._timeout_s) as client:
                    await client.delete(self.resource_url, headers=headers)
            except httpx.HTTPError as exc:
                logger.warning("could not delete %s: %s", self.resource_url, exc)
            self.resource_url = None
        await self.pc.close()
        for track in self._tracks:
            track.stop()


async def publish_clip(whip_url: str, token: str, path: str) -> WhipPublisher:
    """Start publishing the clip at ``path`` in a loop; returns the publisher.

    Call :meth:`WhipPublisher.stop` to end. Raises :class:`PublishError`.
    """
    video, audio = clip_tracks(path)
    tracks: list[MediaStreamTrack] = [video] if audio is None else [video, audio]
    publisher = WhipPublisher(whip_url, token, tracks)
    await publisher.start()
    return publisher
