"""The demo's students, all in one child process.

Each student routes from its own loopback address, joins its nearest edge,
plays the class's HLS within its link's bandwidth, chats, raises its hand,
votes (a third change their vote) and answers the quiz, until the teacher
ends the class.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import asdict
from typing import Any

from liveclass.cli.demo.plan import StudentPlan, plan_students
from liveclass.cli.demo.report import StudentResult

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 5.0


def main(settings: dict[str, Any], results: Any, go: Any) -> None:
    """Process entry point: run every student, put the results on the queue."""
    logging.basicConfig(level=logging.WARNING)
    outcome = asyncio.run(run_students(settings, results, go))
    results.put(("students", outcome))


async def run_students(
    settings: dict[str, Any], results: Any, go: Any
) -> list[dict[str, Any]]:
    """Run all students concurrently; return each one's result as a dict."""
    tokens: dict[str, str] = settings["tokens"]
    plans = plan_students(len(tokens), settings["duration_s"], settings["seed"])
    crowd = Crowd(settings, plans)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, go.wait)
    crowd.started = time.monotonic()
    reporter = asyncio.create_task(crowd.report_progress(results))
    try:
        outcome = await asyncio.gather(
            *(crowd.student(p, tokens[p.user_id]) for p in plans)
        )
    finally:
        reporter.cancel()
    return [asdict(r) for r in outcome]


class Crowd:
    """Every student of the demo, and the counts progress lines show."""

    def __init__(self, settings: dict[str, Any], plans: list[StudentPlan]) -> None:
        self.settings = settings
        self.origin_url: str = settings["origin_url"]
        self.duration_s: float = settings["duration_s"]
        self.results = {p.user_id: StudentResult(p.user_id) for p in plans}
        self.players: dict[str, Any] = {}
        self.started = 0.0

    async def report_progress(self, results: Any) -> None:
        """Send one progress line to the parent every few seconds."""
        while True:
            await asyncio.sleep(PROGRESS_EVERY_S)
            joined = [r for r in self.results.values() if r.joined]
            per_edge: dict[str, int] = {}
            for r in joined:
                per_edge[r.edge_id] = per_edge.get(r.edge_id, 0) + 1
            stats = [p.stats for p in self.players.values()]
            segments = sum(s.segments_played for s in stats)
            stalls = sum(s.stalls for s in stats)
            chats = sum(len(r.chat_seqs) for r in joined)
            results.put(
                (
                    "progress",
                    f"[{time.monotonic() - self.started:5.1f} s] joined {len(joined)}"
                    f" {per_edge}  chat deliveries {chats}  votes "
                    f"{sum(r.votes_cast for r in joined)}  hls segments {segments}"
                    f" stalls {stalls}",
                )
            )

    async def student(self, plan: StudentPlan, token: str) -> StudentResult:
        """One student's whole class."""
        from liveclass.cli.demo.student_session import attend

        result = self.results[plan.user_id]
        rng = random.Random(plan.index)
        await asyncio.sleep(rng.uniform(0.5, max(1.0, self.duration_s * 0.1)))
        try:
            await attend(self, plan, token, result, rng)
        except Exception as exc:  # the report lists each failed student
            log.warning("%s failed: %r", plan.user_id, exc)
            result.error = repr(exc)
        return result
