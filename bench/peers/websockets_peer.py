"""websockets: ``broadcast()`` of each received message to every connection.

The library's documented broadcast helper: it frames the message once and
writes it to each connection without waiting, skipping those not open.
"""

from __future__ import annotations

import argparse
import asyncio

from websockets.asyncio.server import ServerConnection, broadcast, serve

CLIENTS: set[ServerConnection] = set()
"""Every open connection."""


async def handler(ws: ServerConnection) -> None:
    """Relay each text message to everyone until the client leaves."""
    CLIENTS.add(ws)
    try:
        async for message in ws:
            broadcast(CLIENTS, message)
    finally:
        CLIENTS.discard(ws)


async def main(host: str, port: int) -> None:
    """Serve until killed."""
    # Defaults otherwise: per-message deflate off to compare like with like
    # (the edge and the other peers send uncompressed frames).
    async with serve(handler, host, port, compression=None, backlog=4096) as server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    asyncio.run(main(args.host, args.port))
