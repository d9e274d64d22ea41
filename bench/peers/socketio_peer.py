"""python-socketio on aiohttp: ``await sio.emit()`` to the whole namespace.

Clients speak Socket.IO over the WebSocket transport directly (no polling
first); each ``msg`` event is emitted to every connected client.
"""

from __future__ import annotations

import argparse

import socketio
from aiohttp import web

sio = socketio.AsyncServer(async_mode="aiohttp", cors_allowed_origins=[])


@sio.on("msg")
async def relay(sid: str, data: str) -> None:
    """Send one client's message to everyone."""
    await sio.emit("msg", data)


def build() -> web.Application:
    """The app with Socket.IO attached at /socket.io/."""
    app = web.Application()
    sio.attach(app)
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(build(), host=args.host, port=args.port, backlog=4096, print=None)
