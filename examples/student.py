"""A student: join a class, say hello, print what happens, vote and answer.

python examples/student.py --origin http://127.0.0.1:8800 --token TOKEN
"""

from __future__ import annotations

import argparse
import asyncio

from liveclass import sdk


async def attend(origin: str, token: str, hello: str) -> None:
    """Stay in the class until it ends, reacting to a few event types."""
    async with sdk.connect(origin, token) as room:
        print(f"joined as {room.member.name} on edge {room.edge_id}")
        print(f"{room.state.presence_count} here, {len(room.state.chat)} messages")
        if hello:
            await room.send_chat(hello)

        async for event in room.events():
            match event:
                case sdk.ChatMessage(name=name, text=text):
                    print(f"{name}: {text}")
                case sdk.PollOpened(poll_id=poll_id, question=q, options=options):
                    print(f"poll: {q} {options}; voting for {options[0]!r}")
                    await room.vote(poll_id, 0)
                case sdk.QuizAsked(quiz_id=quiz_id, question=q):
                    print(f"quiz: {q}; answering the first option")
                    await room.answer_quiz(quiz_id, 0)
                case sdk.QuizScore(correct=correct, total=total):
                    print(f"{'right' if correct else 'wrong'}; total {total}")
                case sdk.HandCalled(user_id=user_id) if user_id == room.member.user_id:
                    print("the teacher calls on you")
                case sdk.MediaLive(master_url=url):
                    print(f"video: {url}")
                case sdk.ErrorEvent(code=code, message=message):
                    print(f"refused ({code}): {message}")
                case sdk.ClassEndedEvent():
                    print("class over")


def main() -> None:
    """Parse the command line and attend."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--origin", required=True, help="the origin's base URL")
    parser.add_argument("--token", required=True, help="a student join token")
    parser.add_argument("--hello", default="hello!", help="first chat message")
    args = parser.parse_args()
    try:
        asyncio.run(attend(args.origin, args.token, args.hello))
    except sdk.JoinRefused as exc:
        raise SystemExit(str(exc)) from None
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
