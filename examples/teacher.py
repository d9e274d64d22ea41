"""A teacher: open a poll, take hands, ask a quiz, then end the class.

python examples/teacher.py --origin http://127.0.0.1:8800 --token TOKEN
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from liveclass import sdk


async def watch(room: sdk.Classroom) -> None:
    """Print what the class does; call on each raised hand."""
    async for event in room.events():
        match event:
            case sdk.ChatMessage(name=name, text=text):
                print(f"{name}: {text}")
            case sdk.HandRaised(name=name):
                print(f"{name} raised a hand; calling on the next in line")
                await room.call_next_hand()
            case sdk.PollTally(counts=counts):
                print(f"votes so far: {counts}")
            case sdk.PollClosed(counts=counts, votes=votes):
                print(f"poll closed: {counts} ({votes} votes)")
            case sdk.QuizClosed(leaderboard=board):
                for entry in board[:3]:
                    print(f"  {entry.name}: {entry.score}")
            case sdk.PresenceCount(count=count):
                print(f"{count} here")
            case sdk.ErrorEvent(code=code, message=message):
                print(f"refused ({code}): {message}")


async def teach(origin: str, token: str, pause: float) -> None:
    """Run a short lesson, printing events as they come."""
    async with sdk.connect(origin, token) as room:
        if not room.member.role.is_staff:
            raise SystemExit("this example needs a teacher token")
        print(f"teaching on edge {room.edge_id}")
        watcher = asyncio.create_task(watch(room))
        try:
            await room.send_chat("Welcome! A quick poll first.")
            await room.open_poll("Ready?", ["yes", "not yet"], duration_s=pause)
            await asyncio.sleep(pause)

            await room.ask_quiz("2 + 2 = ?", ["3", "4", "5"], correct=1)
            await asyncio.sleep(pause)
            if room.state.quiz is not None:
                await room.close_quiz(room.state.quiz.quiz_id)

            await room.end_class()
            await asyncio.sleep(1)  # let the last events arrive
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher


def main() -> None:
    """Parse the command line and teach."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--origin", required=True, help="the origin's base URL")
    parser.add_argument("--token", required=True, help="a teacher join token")
    parser.add_argument("--pause", type=float, default=20.0, help="seconds per step")
    args = parser.parse_args()
    try:
        asyncio.run(teach(args.origin, args.token, args.pause))
    except sdk.JoinRefused as exc:
        raise SystemExit(str(exc)) from None


if __name__ == "__main__":
    main()
