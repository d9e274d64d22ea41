"""The ``liveclass`` command: one dispatcher for the servers and the demo.

``liveclass origin`` runs the admin API, ``liveclass edge`` an edge node,
``liveclass demo`` a whole class on this machine. Every flag also reads an
environment variable (shown in ``--help``), so the servers can be configured
the way container platforms expect.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from liveclass.cli import demo_args, edge_args, origin_args

log = logging.getLogger("liveclass")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``liveclass`` command."""
    parser = argparse.ArgumentParser(
        prog="liveclass",
        description="Live classes for very large audiences.",
    )
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        default=os.environ.get("LIVECLASS_LOG_LEVEL"),
        help="DEBUG, INFO, WARNING or ERROR (env LIVECLASS_LOG_LEVEL; default "
        "INFO for the servers, WARNING for the demo, whose progress lines say "
        "what happens)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    origin_args.add_parser(commands)
    edge_args.add_parser(commands)
    demo_args.add_parser(commands)
    return parser


def configure_logging(level: str) -> None:
    """Log lines with time, level, logger and the message, to standard error."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # aiortc and aioice log every packet-level step at INFO.
    for noisy in ("aiortc", "aioice", "aiohttp.access", "httpx", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.root.level))


async def serve_until_signalled(runner: object) -> None:
    """Wait for SIGINT or SIGTERM, then stop ``runner`` gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("stopping")
    await runner.stop()  # type: ignore[attr-defined]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``liveclass`` command; return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(
        args.log_level or ("WARNING" if args.command == "demo" else "INFO")
    )
    try:
        result: int = args.run(args)
    except KeyboardInterrupt:
        return 130
    except (ValueError, OSError) as exc:
        # Bad settings and unusable ports or files: one line, no traceback.
        parser.exit(2, f"liveclass {args.command}: {exc}\n")
    return result


def path_or_none(value: str | None) -> Path | None:
    """A path from a flag value, or None for an empty one."""
    return Path(value) if value else None


if __name__ == "__main__":
    sys.exit(main())
