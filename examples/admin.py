"""An admin script: create a class, mint join tokens for a roster, and print
the report when the class is over.

python examples/admin.py --origin http://127.0.0.1:8800 --api-key KEY \\
    --title "Algebra 101" --students 30
"""

from __future__ import annotations

import argparse
import asyncio
import json

from liveclass.sdk import AdminClient, TokenSpec


async def run(origin: str, api_key: str, title: str, students: int) -> None:
    """Set up a class, hand out tokens, wait for the end, print the report."""
    async with AdminClient(origin, api_key) as admin:
        klass = await admin.create_class(title)
        await admin.start_class(klass.id)
        print(f"class {klass.id} is live")

        roster = [TokenSpec(user_id="teacher", name="Teacher", role="teacher")]
        roster += [
            TokenSpec(user_id=f"s{i}", name=f"Student {i}") for i in range(students)
        ]
        for member in await admin.mint_tokens(klass.id, roster):
            # An app would hand each token to its user's device.
            print(f"{member.user_id}\t{member.token}")

        print("waiting for the class to end (Ctrl-C to stop waiting)")
        while True:
            # Polling is what an admin script can do; an app backend would
            # rather react to its own "class over" event.
            info = await admin.get_class(klass.id)
            if info.status == "ended":
                break
            await asyncio.sleep(5)
        report = await admin.report(klass.id)
        print(json.dumps(report.model_dump(mode="json"), indent=2))


def main() -> None:
    """Parse the flags and run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--origin", required=True, help="the origin's base URL")
    parser.add_argument("--api-key", required=True, help="the admin API key")
    parser.add_argument("--title", default="A live class")
    parser.add_argument("--students", type=int, default=10)
    args = parser.parse_args()
    asyncio.run(run(args.origin, args.api_key, args.title, args.students))


if __name__ == "__main__":
    main()
