"""aiohttp: ``await ws.send_str()`` to each connection in turn.

The loop the aiohttp documentation's chat examples use. A send waits when
a connection's buffer is full, so one slow reader delays the message for
everyone after it in the loop.
"""

from __future__ import annotations

import argparse

from aiohttp import WSMsgType, web

CLIENTS: web.AppKey[set[web.WebSocketResponse]] = web.AppKey("clients", set)
"""Where the app keeps its open connections."""


async def handle(request: web.Request) -> web.WebSocketResponse:
    """Relay each text message to everyone until the client leaves."""
    ws = web.WebSocketResponse(compress=False)
    await ws.prepare(request)
    clients = request.app[CLIENTS]
    clients.add(ws)
    try:
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                for other in list(clients):
                    try:
                        await other.send_str(msg.data)
                    except ConnectionError:
                        clients.discard(other)
    finally:
        clients.discard(ws)
    return ws


def build() -> web.Application:
    """The app: one WebSocket route."""
    app = web.Application()
    app[CLIENTS] = set()
    app.router.add_get("/", handle)
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(build(), host=args.host, port=args.port, backlog=4096, print=None)
