"""HLS playlists as text: a builder with no I/O (RFC 8216).

The transcoder tells :class:`MediaPlaylist` about each finished segment; the
HTTP layer asks it for text. Nothing here touches files or sockets, so every
tag can be checked by a unit test.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

HLS_VERSION = 3
"""EXT-X-VERSION we declare: floating-point EXTINF durations need version 3
(RFC 8216 section 7), nothing we write needs more."""


@dataclass(frozen=True)
class Rendition:
    """One quality level of the ladder, as the master playlist announces it."""

    name: str
    width: int
    height: int
    bandwidth: int
    """Peak bits per second of any segment (RFC 8216 section 4.3.4.2)."""
    codecs: str = "avc1.42c01f,mp4a.40.2"
    """RFC 6381 codec strings: H.264 Constrained Baseline, AAC-LC."""

    @property
    def resolution(self) -> str:
        """``WIDTHxHEIGHT``, the RESOLUTION attribute's form."""
        return f"{self.width}x{self.height}"


@dataclass(frozen=True)
class Segment:
    """One finished media segment."""

    sequence: int
    duration: float
    uri: str
    discontinuity: bool = False
    """True when the encoder restarted before it (RFC 8216 section 4.3.2.3)."""


def master_playlist(
    renditions: Sequence[Rendition], uri: Callable[[Rendition], str]
) -> str:
    """The master playlist: one EXT-X-STREAM-INF per rendition, best first.

    ``uri`` gives the media playlist URI of a rendition.
    """
    lines = ["#EXTM3U", f"#EXT-X-VERSION:{HLS_VERSION}"]
    # Independent segments: every segment starts with a keyframe, so a player
    # may switch renditions at any segment boundary (RFC 8216 section 4.3.5.1).
    lines.append("#EXT-X-INDEPENDENT-SEGMENTS")
    for rendition in sorted(renditions, key=lambda r: r.bandwidth, reverse=True):
        # BANDWIDTH is required, RESOLUTION and CODECS should be present
        # (RFC 8216 section 4.3.4.2).
        lines.append(
            f"#EXT-X-STREAM-INF:BANDWIDTH={rendition.bandwidth},"
            f"RESOLUTION={rendition.resolution},"
            f'CODECS="{rendition.codecs}"'
        )
        lines.append(uri(rendition))
    return "\n".join(lines) + "\n"


@dataclass
class MediaPlaylist:
    """The segments of one rendition, rendered live (sliding) or as VOD.

    ``window`` is how many segments a live playlist lists; the recording
    (:meth:`vod`) lists them all.
    """

    target_duration: float
    window: int = 6
    segments: list[Segment] = field(default_factory=list)
    ended: bool = False

    def add(self, segment: Segment) -> None:
        """Append a finished segment.

        Raises :class:`ValueError` if its sequence number does not follow the
        last one: a media sequence number may never go back or repeat
        (RFC 8216 section 6.2.1).
        """
        if self.segments and segment.sequence != self.segments[-1].sequence + 1:
            raise ValueError(
                f"segment {segment.sequence} does not follow "
                f"{self.segments[-1].sequence}; number segments consecutively"
            )
        self.segments.append(segment)

    def end(self) -> None:
        """Mark the stream finished: live playlists then carry EXT-X-ENDLIST."""
        self.ended = True

    @property
    def duration(self) -> float:
        """Seconds of media in all segments."""
        return sum(s.duration for s in self.segments)

    def live(self) -> str:
        """The sliding live playlist: the last ``window`` segments."""
        return self._render(self.segments[-self.window :], vod=False)

    def vod(self) -> str:
        """The whole stream as a VOD playlist: the recording."""
        return self._render(self.segments, vod=True)

    def _render(self, segments: Sequence[Segment], vod: bool) -> str:
        # EXT-X-TARGETDURATION: the longest EXTINF rounded to the nearest
        # integer must not exceed it (RFC 8216 section 4.3.3.1).
        longest = max((s.duration for s in segments), default=self.target_duration)
        target = max(math.ceil(self.target_duration), round(longest))
        first = segments[0].sequence if segments else 0
        lines = [
            "#EXTM3U",
            f"#EXT-X-VERSION:{HLS_VERSION}",
            f"#EXT-X-TARGETDURATION:{target}",
            # The number of the first listed segment; a live player uses it
            # to find its place after a reload (RFC 8216 section 4.3.3.2).
            f"#EXT-X-MEDIA-SEQUENCE:{first}",
        ]
        if vod:
            # VOD: the playlist will never change (RFC 8216 section 4.3.3.5).
            lines.append("#EXT-X-PLAYLIST-TYPE:VOD")
        lines.extend(_segment_lines(segments))
        if vod or self.ended:
            # No more segments will be added (RFC 8216 section 4.3.3.4).
            lines.append("#EXT-X-ENDLIST")
        return "\n".join(lines) + "\n"


def _segment_lines(segments: Iterable[Segment]) -> Iterable[str]:
    for segment in segments:
        if segment.discontinuity:
            yield "#EXT-X-DISCONTINUITY"
        # Decimal-floating-point durations, version 3 (RFC 8216 section 4.3.2.1).
        yield f"#EXTINF:{segment.duration:.3f},"
        yield segment.uri


def rewrite_uris(text: str, query: str) -> str:
    """Return ``text`` with every URI line's query replaced by ``query``.

    URI lines are the lines that are neither blank nor tags or comments
    (RFC 8216 section 4.1). An empty ``query`` strips queries.
    """
    out = []
    for line in text.splitlines():
        if line and not line.startswith("#"):
            line = line.split("?", 1)[0] + (f"?{query}" if query else "")
        out.append(line)
    return "\n".join(out) + "\n"


def segment_count(text: str) -> int:
    """How many media segments a media playlist lists."""
    return sum(1 for line in text.splitlines() if line.startswith("#EXTINF:"))
