"""The HLS ladder encoder of one ingest: decoded frames in, TS segments out.

It runs on its own thread, because x264 and AAC encoding would stall the
event loop; PyAV releases the GIL inside codecs, so the thread costs the loop
little. Frames are queued with the wall-clock time they arrived and the
thread does the rest.

Output is constant frame rate: each output tick ``n`` (at ``n / fps``
seconds since the first frame) shows the newest input frame. That keeps the
recording as long as the ingest really lasted, whatever the sender's
timestamps say, and makes every group of pictures exactly ``segment_s``
long: keyframes are forced at each segment boundary, at the same tick in
every rendition, so a player can switch between renditions at any segment.
"""

from __future__ import annotations

import io
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
from av.video.frame import PictureType

from liveclass.edge_node.media.playlist import Rendition, Segment

logger = logging.getLogger(__name__)

AUDIO_RATE = 48_000
AUDIO_BITRATE = 128_000
_TS_OVERHEAD = 1.1
"""MPEG-TS packet headers and PES framing add roughly a tenth."""


@dataclass(frozen=True)
class LadderStep:
    """One rendition to encode: name, size and video bit rate."""

    name: str
    width: int
    height: int
    video_bitrate: int

    def rendition(self) -> Rendition:
        """How the master playlist announces this step."""
        # x264 holds the rate under vbv-maxrate (set below); BANDWIDTH must
        # be the peak, so add audio and the transport overhead.
        peak = (self.video_bitrate * 1.5 + AUDIO_BITRATE) * _TS_OVERHEAD
        return Rendition(self.name, self.width, self.height, int(peak))


DEFAULT_LADDER = (
    LadderStep("720p", 1280, 720, 2_000_000),
    LadderStep("360p", 640, 360, 500_000),
)


SegmentCallback = Callable[[str, Segment], None]
"""Called on the transcoder thread with a rendition name and a new segment."""


@dataclass
class _Output:
    """One rendition being encoded: its encoder and its open segments."""

    step: LadderStep
    directory: Path
    encoder: _Encoder
    packets: dict[int, list[tuple[bool, av.Packet]]] = field(default_factory=dict)
    frames: dict[int, int] = field(default_factory=dict)


class Transcoder:
    """Encodes one ingest into an HLS ladder under ``directory``.

    Segments are written to ``directory/<rendition>/<sequence>.ts``, numbered
    from ``first_sequence``; ``on_segment`` hears of each once it is on disk.
    Call :meth:`start`, push frames, then :meth:`stop`.
    """

    def __init__(
        self,
        directory: Path,
        on_segment: SegmentCallback,
        ladder: Sequence[LadderStep] = DEFAULT_LADDER,
        fps: int = 25,
        segment_s: int = 2,
        first_sequence: int = 0,
        preset: str = "ultrafast",
    ) -> None:
        self.directory = directory
        self.ladder = tuple(ladder)
        self.fps = fps
        self.segment_s = segment_s
        self.first_sequence = first_sequence
        self._on_segment = on_segment
        self._preset = preset
        self._gop = fps * segment_s
        self._queue: queue.Queue[tuple[str, Any, float] | None] = queue.Queue(64)
        # A daemon: an edge that exits without stopping ingest must not hang
        # on the queue; segments are renamed into place whole, never torn.
        self._thread = threading.Thread(
            target=self._run, name=f"transcoder-{directory.name}", daemon=True
        )
        self._outputs: list[_Output] = []
        self._audio: _Encoder | None = None
        self._resampler: av.AudioResampler | None = None
        self._t0: float | None = None
        self._ticks = 0
        self._media_offset: float | None = None
        self._audio_samples = 0
        self._closed_index = -1
        self.dropped = 0
        self.cpu_s = 0.0
        """CPU seconds the encoder thread used, known once it stopped."""
        self.error: BaseException | None = None

    @property
    def duration(self) -> float:
        """Seconds of video encoded so far."""
        return self._ticks / self.fps

    def start(self) -> None:
        """Open the encoders and start the thread."""
        for step in self.ladder:
            directory = self.directory / step.name
            directory.mkdir(parents=True, exist_ok=True)
            self._outputs.append(_Output(step, directory, self._video_encoder(step)))
        self._audio = self._audio_encoder()
        self._resampler = av.AudioResampler(
            format="fltp", layout="stereo", rate=AUDIO_RATE, frame_size=1024
        )
        self._thread.start()

    def push_video(self, frame: av.VideoFrame, arrived: float) -> None:
        """Queue a decoded video frame that arrived at monotonic ``arrived``.

        Drops the frame when the thread is behind: the next one replaces it.
        """
        self._put(("v", frame, arrived))

    def push_audio(self, frame: av.AudioFrame, arrived: float) -> None:
        """Queue a decoded audio frame that arrived at monotonic ``arrived``."""
        self._put(("a", frame, arrived))

    def _put(self, item: tuple[str, Any, float]) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1

    def stop(self) -> float:
        """Flush the encoders, write the last segment, join the thread.

        Blocks: call it from a worker thread. Returns the encoded duration.
        """
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        return self.duration

    # The encoder thread.

    def _run(self) -> None:
        began = time.thread_time()
        try:
            while (item := self._queue.get()) is not None:
                kind, frame, arrived = item
                if kind == "v":
                    self._video(frame, arrived)
                elif self._t0 is not None:
                    self._audio_frame(frame, arrived)
            self._flush()
        except Exception as exc:  # keep the process; the session reports it
            logger.exception("transcoder failed in %s", self.directory)
            self.error = exc
        self.cpu_s = time.thread_time() - began

    def _video(self, frame: av.VideoFrame, arrived: float) -> None:
        media = _seconds(frame.pts, frame.time_base)
        if self._t0 is None:
            self._t0 = arrived
        wall = arrived - self._t0
        # Pace by the sender's timestamps, which are smoother than arrival
        # times, but follow the wall clock if they drift apart by more than
        # half a second (a sender that restarted, or one not in real time).
        if media is None:
            at = wall
        else:
            if (
                self._media_offset is None
                or abs(media + self._media_offset - wall) > 0.5
            ):
                self._media_offset = wall - media
            at = media + self._media_offset
        scaled: dict[str, av.VideoFrame] = {}
        while self._ticks / self.fps <= at:
            self._tick(frame, scaled)

    def _tick(self, frame: av.VideoFrame, scaled: dict[str, av.VideoFrame]) -> None:
        n = self._ticks
        index = n // self._gop
        if n % self._gop == 0 and index > 0:
            self._close_segments(index - 1)
        for out in self._outputs:
            step = out.step
            image = scaled.get(step.name)
            if image is None:
                image = frame.reformat(step.width, step.height, format="yuv420p")
                scaled[step.name] = image
            image.pts = n
            image.time_base = Fraction(1, self.fps)
            # Force an IDR at each segment boundary (x264's own keyint agrees).
            image.pict_type = PictureType.I if n % self._gop == 0 else PictureType.NONE
            for packet in out.encoder.encode(image):
                self._add(out, True, packet, (packet.pts or 0) // self._gop)
            out.frames[index] = out.frames.get(index, 0) + 1
        self._ticks += 1

    def _audio_frame(self, frame: av.AudioFrame, arrived: float) -> None:
        assert self._t0 is not None and self._resampler is not None
        wall = arrived - self._t0 - frame.samples / frame.sample_rate
        # Audio follows the sample count; a gap of more than 0.3 s (lost or
        # late packets) moves it back to the wall clock.
        if abs(self._audio_samples / AUDIO_RATE - wall) > 0.3:
            self._audio_samples = max(0, int(wall * AUDIO_RATE))
        frame.pts = None
        for resampled in self._resampler.resample(frame):
            resampled.pts = self._audio_samples
            resampled.time_base = Fraction(1, AUDIO_RATE)
            self._audio_samples += resampled.samples
            self._encode_audio(resampled)

    def _encode_audio(self, frame: av.AudioFrame | None) -> None:
        assert self._audio is not None
        for packet in self._audio.encode(frame):
            if packet.pts is None or packet.pts < 0:
                continue  # the encoder's priming packet
            seconds = packet.pts / AUDIO_RATE
            index = int(seconds // self.segment_s)
            data = _adts(bytes(packet))
            for out in self._outputs:
                self._add(out, False, _copy(packet, data), index)

    def _add(self, out: _Output, video: bool, packet: av.Packet, index: int) -> None:
        # A late packet of a segment already written joins the open one.
        index = max(index, self._closed_index + 1)
        out.packets.setdefault(index, []).append((video, packet))

    def _close_segments(self, index: int) -> None:
        for out in self._outputs:
            packets = out.packets.pop(index, [])
            frames = out.frames.pop(index, 0)
            if frames:
                self._write(out, index, packets, frames)
        self._closed_index = index

    def _flush(self) -> None:
        if self._t0 is None:
            return
        for out in self._outputs:
            for packet in out.encoder.encode(None):
                self._add(out, True, packet, (packet.pts or 0) // self._gop)
        self._encode_audio(None)
        last = (self._ticks - 1) // self._gop
        for out in self._outputs:
            # Audio that ran ahead of the last video frame joins the last segment.
            for index in [i for i in out.packets if i > last]:
                out.packets.setdefault(last, []).extend(out.packets.pop(index))
        for index in range(self._closed_index + 1, last + 1):
            self._close_segments(index)

    def _write(
        self,
        out: _Output,
        index: int,
        packets: list[tuple[bool, av.Packet]],
        frames: int,
    ) -> None:
        sequence = self.first_sequence + index
        buffer = io.BytesIO()
        with av.open(buffer, "w", format="mpegts") as container:
            video = container.add_stream_from_template(out.encoder.stream)
            assert self._audio is not None
            audio = container.add_stream_from_template(self._audio.stream)
            packets.sort(key=lambda p: _seconds(p[1].dts, p[1].time_base) or 0.0)
            for is_video, packet in packets:
                packet.stream = video if is_video else audio
                container.mux(packet)
        path = out.directory / f"{sequence:06d}.ts"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(buffer.getvalue())
        os.replace(tmp, path)  # readers see whole segments or none
        segment = Segment(
            sequence=sequence,
            duration=frames / self.fps,
            uri=path.name,
            discontinuity=index == 0 and self.first_sequence > 0,
        )
        self._on_segment(out.step.name, segment)

    # Encoders.

    def _video_encoder(self, step: LadderStep) -> _Encoder:
        holder = av.open(io.BytesIO(), "w", format="mpegts")
        gop = self._gop
        stream = holder.add_stream(
            "libx264",
            rate=self.fps,
            options={
                "preset": self._preset,
                "tune": "zerolatency",
                "profile": "baseline",
                "forced-idr": "1",
                # Fixed GOP: a keyframe every segment and nowhere else, so
                # segments are aligned across renditions.
                "x264-params": (
                    f"keyint={gop}:min-keyint={gop}:scenecut=0:threads=1:"
                    f"vbv-maxrate={int(step.video_bitrate * 1.5) // 1000}:"
                    f"vbv-bufsize={step.video_bitrate // 1000}"
                ),
            },
        )
        stream.width = step.width
        stream.height = step.height
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = step.video_bitrate
        stream.time_base = Fraction(1, self.fps)
        stream.codec_context.open()
        return _Encoder(stream, holder)

    def _audio_encoder(self) -> _Encoder:
        holder = av.open(io.BytesIO(), "w", format="mpegts")
        stream = holder.add_stream("aac", rate=AUDIO_RATE)
        stream.layout = "stereo"
        stream.bit_rate = AUDIO_BITRATE
        stream.codec_context.open()
        return _Encoder(stream, holder)


class _Encoder:
    """A stream of a never-written container, used as encoder and template."""

    def __init__(self, stream: Any, holder: Any) -> None:
        self.stream = stream
        self.holder = holder  # the stream lives as long as its container

    def encode(self, frame: Any) -> list[av.Packet]:
        return self.stream.encode(frame)


def _seconds(value: int | None, time_base: Fraction | None) -> float | None:
    if value is None or time_base is None:
        return None
    return float(value * time_base)


def _copy(packet: av.Packet, data: bytes) -> av.Packet:
    clone = av.Packet(data)
    clone.pts = packet.pts
    clone.dts = packet.dts
    clone.time_base = packet.time_base
    clone.is_keyframe = packet.is_keyframe
    return clone


def _adts(frame: bytes) -> bytes:
    """``frame`` (raw AAC-LC, 48 kHz stereo) behind an ADTS header.

    MPEG-TS carries AAC as ADTS (ISO/IEC 13818-7); FFmpeg's TS muxer adds the
    header only when the stream has its codec configuration attached, which
    a stream copied from an encoder template lacks.
    """
    length = len(frame) + 7
    profile, rate_index, channels = 1, 3, 2  # AAC LC, 48000 Hz, stereo
    header = bytes(
        (
            0xFF,
            0xF1,  # MPEG-4, layer 0, no CRC
            (profile << 6) | (rate_index << 2) | (channels >> 2),
            ((channels & 3) << 6) | (length >> 11),
            (length >> 3) & 0xFF,
            ((length & 7) << 5) | 0x1F,
            0xFC,  # buffer fullness 0x7FF: variable rate; one raw block
        )
    )
    return header + frame
