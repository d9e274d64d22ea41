"""One demo student's class: join, watch, chat, vote, answer."""

from __future__ import annotations

import asyncio
import random
import time
from typing import TYPE_CHECKING, Any

from liveclass.cli.demo.plan import StudentPlan, link_bps

if TYPE_CHECKING:
    from liveclass.cli.demo.report import StudentResult
    from liveclass.cli.demo.students import Crowd


async def attend(
    crowd: Crowd,
    plan: StudentPlan,
    token: str,
    result: StudentResult,
    rng: random.Random,
) -> None:
    """Join the class and take part until the teacher ends it."""
    from liveclass.sdk import connect
    from liveclass.sdk import events as ev

    async with connect(crowd.origin_url, token, local_address=plan.address) as room:
        result.joined = True
        result.edge_id = room.edge_id
        result.first_seq = room.last_seq or 0
        tasks: set[asyncio.Task[Any]] = set()

        def later(coro: Any) -> None:
            task = asyncio.create_task(coro)
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        joined_at = time.monotonic() - crowd.started
        later(_chat(room, plan, result, joined_at, crowd.started))
        if plan.raises_hand:
            later(_after(rng.uniform(2, 8), room.raise_hand()))
        if room.state.media is not None:
            media = room.state.media.model_dump()
            later(_watch(crowd, room, plan, token, result, media))
        try:
            async for event in room.events():
                if isinstance(event, ev.ChatMessage) and event.seq is not None:
                    result.chat_seqs.append(event.seq)
                elif isinstance(event, ev.ChatConfirmed) and event.seq is not None:
                    # Shown provisional before, while the class log was away.
                    result.chat_seqs.append(event.seq)
                elif (
                    isinstance(event, ev.MediaLive)
                    and plan.user_id not in crowd.players
                ):
                    later(_watch(crowd, room, plan, token, result, event.model_dump()))
                elif isinstance(event, ev.PollOpened):
                    later(_vote(room, plan, result, event, rng))
                elif isinstance(event, ev.QuizAsked):
                    later(_answer(room, result, event, rng))
                elif isinstance(event, ev.ClassEndedEvent):
                    break
        finally:
            result.last_seq = room.last_seq or 0
            player = crowd.players.get(plan.user_id)
            if player is not None:
                player.stop()
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if player is not None:
                stats = player.stats
                result.hls = {
                    "segments_played": stats.segments_played,
                    "stalls": stats.stalls,
                    "switches": stats.switches,
                    "renditions": sorted(stats.per_rendition),
                    "link_bps": player.bandwidth_bps,
                    "stall_events": [
                        {"at": round(e.at, 1), **e.detail}
                        for e in stats.events
                        if e.kind in ("stall", "switch")
                    ][:6],
                }


async def _after(delay: float, coro: Any) -> Any:
    await asyncio.sleep(delay)
    return await coro


async def _chat(
    room: Any,
    plan: StudentPlan,
    result: StudentResult,
    joined_at: float,
    started: float,
) -> None:
    for n, at in enumerate(plan.chat_at):
        await asyncio.sleep(max(0.0, at - (time.monotonic() - started)))
        text = f"{plan.user_id} says hello #{n}"
        await room.send_chat(text)
        result.chat_sent.append(text)


async def _vote(
    room: Any, plan: StudentPlan, result: StudentResult, poll: Any, rng: random.Random
) -> None:
    await asyncio.sleep(rng.uniform(0.2, 3.0))
    choice = rng.randrange(len(poll.options))
    await room.vote(poll.poll_id, choice)
    result.vote, result.votes_cast = choice, result.votes_cast + 1
    if plan.changes_vote:
        await asyncio.sleep(rng.uniform(0.5, 3.0))
        choice = (choice + 1) % len(poll.options)
        await room.vote(poll.poll_id, choice)
        result.vote, result.votes_cast = choice, result.votes_cast + 1


async def _answer(
    room: Any, result: StudentResult, quiz: Any, rng: random.Random
) -> None:
    await asyncio.sleep(rng.uniform(0.3, 4.0))
    await room.answer_quiz(quiz.quiz_id, rng.randrange(len(quiz.options)))
    result.answered = True


async def _watch(
    crowd: Crowd,
    room: Any,
    plan: StudentPlan,
    token: str,
    result: StudentResult,
    media: dict[str, Any],
) -> None:
    from liveclass.sdk.http import http_client
    from liveclass.sdk.media.hls import HlsPlayer

    renditions = media.get("renditions") or []
    bandwidths = [int(r["bandwidth"]) for r in renditions if "bandwidth" in r]
    cap = link_bps(plan.link_share, min(bandwidths), max(bandwidths))
    master = room.edge_url + media["master_url"]
    async with http_client(plan.address) as client:
        # Start three segments behind the live edge with all three buffered,
        # as browser players do: six seconds of cushion against a busy
        # moment on this shared two-core machine.
        player = HlsPlayer(
            master,
            token=token,
            bandwidth_bps=cap,
            client=client,
            live_edge_segments=3,
            start_buffer_s=6.0,
        )
        crowd.players[plan.user_id] = player
        await player.run()
