"""The demo's teacher, in its own child process.

The teacher joins, publishes the real clip over WebRTC to its edge, lets the
students in, runs a poll, a quiz and the hand queue on a schedule, ends the
class and waits for the recording.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

log = logging.getLogger(__name__)

POLL_OPTIONS = ["Rabbit", "Squirrel", "Butterfly", "Chinchilla"]


def main(settings: dict[str, Any], results: Any, go: Any) -> None:
    """Process entry point: teach the class, put the outcome on the queue."""
    logging.basicConfig(level=logging.WARNING)
    try:
        outcome = asyncio.run(teach(settings, results, go))
    finally:
        go.set()  # never leave the students waiting for a teacher who failed
    results.put(("teacher", outcome))


async def teach(settings: dict[str, Any], results: Any, go: Any) -> dict[str, Any]:
    """Run the class from the teacher's side; return what it saw."""
    from liveclass.cli.demo.teacher_session import TeacherSession

    session = TeacherSession(settings, results)
    return await session.run(go)


def elapsed_since(start: float) -> float:
    """Seconds since ``start`` on the monotonic clock."""
    return time.monotonic() - start
