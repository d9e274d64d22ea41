"""``liveclass demo``: flags of the whole-class demo."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from liveclass.cli.flags import flag


def add_parser(commands: Any) -> None:
    """Add the ``demo`` subcommand."""
    p: argparse.ArgumentParser = commands.add_parser(
        "demo",
        help="run a whole class on this machine: origin, two edges, a teacher "
        "publishing real video, students chatting, voting and watching",
    )
    env = "LIVECLASS_DEMO_"
    flag(p, "--students", env + "STUDENTS", 200, "simulated students", int)
    flag(p, "--duration", env + "DURATION", 60.0, "class length in seconds", float)
    flag(p, "--report", env + "REPORT", None, "write the JSON report here")
    flag(p, "--redis-url", env + "REDIS_URL", None, "class log in Redis")
    flag(p, "--database-url", env + "DATABASE_URL", None, "store, e.g. PostgreSQL")
    flag(p, "--data-dir", env + "DATA_DIR", "liveclass-data/demo", "media, keys, db")
    flag(p, "--seed", env + "SEED", 7, "seed of the students' behaviour", int)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo; exit 0 only if its report says ok."""
    from liveclass.cli.demo.plan import DemoOptions
    from liveclass.cli.demo.runner import run_demo

    if args.students < 1:
        raise ValueError("--students must be at least 1")
    if args.duration < 20:
        raise ValueError("--duration must be at least 20 seconds")
    options = DemoOptions(
        students=args.students,
        duration_s=args.duration,
        report=Path(args.report) if args.report else None,
        redis_url=args.redis_url,
        database_url=args.database_url,
        data_dir=Path(args.data_dir),
        seed=args.seed,
    )
    return asyncio.run(run_demo(options))
