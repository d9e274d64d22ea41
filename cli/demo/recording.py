"""Check the class recording as a viewer would: through the origin's report,
then FFmpeg (through PyAV) over HTTP."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from liveclass.origin.contract import LogEvent


async def fetch_recording(
    admin: Any,
    class_id: str,
    token: str,
    entries: list[LogEvent],
    within_s: float = 60.0,
) -> dict[str, Any]:
    """Wait for the recording in the origin's report, then decode it.

    The recording is served by the edge that ingested the class (the
    ``media.live`` entry names it); ``token``, a staff token minted for the
    check before the class ended, authorises the download.
    """
    deadline = time.monotonic() + within_s
    recording = None
    while time.monotonic() < deadline:
        report = await admin.report(class_id)
        recording = report.recording
        if recording:
            break
        await asyncio.sleep(0.5)
    if not recording:
        error = f"no recording in the origin's report after {within_s:.0f} s"
        return {"playlist": None, "duration_s": 0.0, "decodes": {"error": error}}
    playlist = recording.playlist_url
    if playlist.startswith("/"):
        ingest = [e.data.get("ingest_url") for e in entries if e.type == "media.live"]
        playlist = f"{ingest[-1]}{playlist}" if ingest else playlist
    check = await asyncio.to_thread(decode, f"{playlist}?token={token}")
    return {
        "playlist": playlist,
        "duration_s": float(recording.duration_s or 0.0),
        "decodes": check,
    }


def decode(url: str) -> dict[str, Any]:
    """Open ``url`` in FFmpeg and decode every video frame.

    Returns ``ok``, the frames decoded, the resolution and the duration
    FFmpeg reads.
    """
    import av

    try:
        with av.open(url, timeout=10) as container:
            video = container.streams.video[0]
            frames, size = 0, ""
            for frame in container.decode(video):
                frames += 1
                size = f"{frame.width}x{frame.height}"
            duration = (container.duration or 0) / 1_000_000
    except Exception as exc:  # the report says why the recording failed
        return {"ok": False, "error": repr(exc)}
    return {
        "ok": frames > 0,
        "frames": frames,
        "resolution": size,
        "duration_s": round(duration, 2),
    }
