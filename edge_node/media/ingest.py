"""One teacher's WebRTC ingest: a peer connection feeding a transcoder.

The edge answers the teacher's offer (WHIP, draft-ietf-wish-whip section
4.2) with an aiortc peer connection that only receives. aiortc decodes the
tracks on its own threads; a task per track hands each decoded frame to the
:class:`~liveclass.edge_node.media.transcoder.Transcoder`, stamped with the
time it arrived.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence

import av
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError

from liveclass.edge_node.media.transcoder import Transcoder
from liveclass.sdk.media.ice import advertise, public_candidates

logger = logging.getLogger(__name__)


class IngestSession:
    """A receiving peer connection and the transcoder it feeds.

    Create it, :meth:`answer` the offer, :meth:`close` it when the teacher
    leaves or the class ends.
    """

    def __init__(
        self,
        class_id: str,
        transcoder: Transcoder,
        ice_servers: Sequence[str] = (),
    ) -> None:
        self.class_id = class_id
        self.id = uuid.uuid4().hex
        self.transcoder = transcoder
        servers = [RTCIceServer(urls=url) for url in ice_servers]
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))
        self.started = time.monotonic()
        self.closed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing: asyncio.Task[float] | None = None
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_state)

    async def answer(
        self, offer_sdp: str, addresses: Sequence[str], public_ip: str | None
    ) -> str:
        """Apply the offer and return the answer SDP, candidates included.

        Raises :class:`ValueError` for an offer aiortc cannot parse or use.
        """
        self.transcoder.start()
        await self.pc.setRemoteDescription(
            RTCSessionDescription(sdp=offer_sdp, type="offer")
        )
        if "video" not in {t.kind for t in self.pc.getTransceivers()}:
            raise ValueError("it offers no video")
        answer = await self.pc.createAnswer()
        with advertise(addresses):
            # aiortc gathers all candidates here, so the answer is complete
            # (WHIP without trickle ICE).
            await self.pc.setLocalDescription(answer)
        sdp = self.pc.localDescription.sdp
        return public_candidates(sdp, public_ip) if public_ip else sdp

    def _on_track(self, track: MediaStreamTrack) -> None:
        logger.info("class %s: receiving %s", self.class_id, track.kind)
        task = asyncio.create_task(self._consume(track))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _consume(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            # aiortc's receiver tracks yield decoded frames, never packets.
            if isinstance(frame, av.VideoFrame):
                self.transcoder.push_video(frame, time.monotonic())
            elif isinstance(frame, av.AudioFrame):
                self.transcoder.push_audio(frame, time.monotonic())

    async def _on_state(self) -> None:
        state = self.pc.connectionState
        logger.info("class %s: ingest %s", self.class_id, state)
        if state in ("failed", "closed"):
            self.close_soon()

    def close_soon(self) -> asyncio.Task[float]:
        """Start closing (once); the task's result is the encoded duration."""
        if self._closing is None:
            self._closing = asyncio.create_task(self._close())
        return self._closing

    async def close(self) -> float:
        """Close the connection and flush the transcoder; return its duration."""
        return await self.close_soon()

    async def _close(self) -> float:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.pc.close()
        # Flushing writes the last segment: off the event loop.
        duration = await asyncio.to_thread(self.transcoder.stop)
        self.closed.set()
        logger.info(
            "class %s: ingest ended after %.1f s, encoding took %.1f CPU s",
            self.class_id,
            duration,
            self.transcoder.cpu_s,
        )
        return duration
