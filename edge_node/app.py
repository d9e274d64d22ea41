"""The edge node's HTTP server: member WebSockets, health, ping, metrics.

:func:`build_app` assembles one edge; :func:`run_edge` serves it and returns
an :class:`EdgeRunner` to stop it with, or to serve until a signal.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from liveclass.edge_node.batcher import Batcher
from liveclass.edge_node.config import EdgeConfig
from liveclass.edge_node.context import EdgeContext
from liveclass.edge_node.drain import Drain
from liveclass.edge_node.metrics import Metrics
from liveclass.edge_node.node import EdgeNode
from liveclass.edge_node.origin_link import OriginLink
from liveclass.edge_node.tokencheck import LeanTokenVerifier
from liveclass.edge_node.wsserver import MemberServer, MemberSite
from liveclass.origin.classlog import ClassLog, open_log
from liveclass.origin.contract import EdgeHeartbeat

logger = logging.getLogger(__name__)

CONTEXT_KEY: web.AppKey[EdgeContext] = web.AppKey("edge_context", EdgeContext)
"""Where the app keeps the :class:`EdgeContext` its parts share."""

NODE_KEY: web.AppKey[EdgeNode] = web.AppKey("edge_node", EdgeNode)
"""Where the app keeps its :class:`~liveclass.edge_node.node.EdgeNode`."""

MEMBERS_KEY: web.AppKey[MemberServer] = web.AppKey("edge_members", MemberServer)
"""Where the app keeps the :class:`MemberServer` of its WebSocket members."""

DRAIN_KEY: web.AppKey[Drain] = web.AppKey("edge_drain", Drain)
"""Where the app keeps its :class:`~liveclass.edge_node.drain.Drain`."""


def build_app(config: EdgeConfig, log: ClassLog | None = None) -> web.Application:
    """Assemble an edge: member server, media service and origin link.

    ``log`` is the class log to use; without one, it is opened from
    ``config.log_url`` and closed with the app. Call this from a running
    event loop: the edge's HTTP client session is created here.
    """
    owns_log = log is None
    class_log = (
        log if log is not None else open_log(config.log_url, config.log_retention)
    )
    metrics = Metrics()
    verifier = LeanTokenVerifier()
    batcher = Batcher(class_log, on_appended=metrics.appended)
    node = EdgeNode(config, class_log, verifier, batcher, metrics)
    http = aiohttp.ClientSession()
    ctx = EdgeContext(
        config=config, log=class_log, verifier=verifier, append=batcher.add, http=http
    )
    link = OriginLink(config, verifier, http, lambda: _heartbeat(node))
    node.refresh_keys = link.refresh_keys_soon
    drain = Drain(node, batcher, link.farewell, config.drain_timeout_s)
    link.on_drain_request = drain.request

    members = MemberServer(node)
    app = web.Application()
    app[NODE_KEY] = node
    app[MEMBERS_KEY] = members
    app[CONTEXT_KEY] = ctx
    app[DRAIN_KEY] = drain
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/v1/ping", _ping)
    app.router.add_get("/metrics", _metrics)
    # The MemberSite serves GET /v1/ws on new connections; this route sees
    # only upgrades sent on a connection aiohttp already served.
    app.router.add_get("/v1/ws", _ws_on_reused_connection)

    # Imported here: the media service pulls in WebRTC and codec libraries
    # that the rest of this module does not need.
    from liveclass.edge_node.media import setup_media

    media = setup_media(app, ctx)
    node.on_log_event = media.on_log_event

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        batcher.start()
        link.start()
        logger.info("edge started", extra={"edge_id": config.edge_id})
        yield
        await link.stop()
        await link.farewell()
        await node.close()
        await batcher.stop()
        await media.close()
        await http.close()
        if owns_log:
            await class_log.close()
        logger.info("edge stopped", extra={"edge_id": config.edge_id})

    async def on_shutdown(app: web.Application) -> None:
        # Close members before the server cancels their handlers, so they
        # get GOING_AWAY and their member.left entries are flushed. A drain
        # still running is cut short: stopping means now.
        await drain.cancel()
        await node.close()
        await members.close()

    app.on_shutdown.append(on_shutdown)
    app.cleanup_ctx.append(lifecycle)
    return app


def _fresh(response: web.Response) -> web.Response:
    # Closing after probes and checks keeps their connections from being
    # reused for a WebSocket upgrade, which must reach the member server's
    # sniffer on a connection of its own.
    response.force_close()
    return response


async def _ws_on_reused_connection(request: web.Request) -> web.Response:
    return _fresh(
        web.Response(
            status=400,
            text="open a new connection for the WebSocket upgrade",
        )
    )


def _heartbeat(node: EdgeNode) -> EdgeHeartbeat:
    return EdgeHeartbeat(
        members=node.connections,
        classes=node.members_per_class(),
        draining=node.draining,
    )


async def _healthz(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    return _fresh(
        web.json_response(
            {"ok": True, "edge_id": node.config.edge_id, "members": node.connections}
        )
    )


async def _ping(request: web.Request) -> web.Response:
    # Probed by browsers on other origins to measure round-trip time.
    return _fresh(
        web.Response(
            text="pong",
            headers={"Access-Control-Allow-Origin": "*", "Cache-Control": "no-store"},
        )
    )


async def _metrics(request: web.Request) -> web.Response:
    text = request.app[NODE_KEY].metrics.render()
    return _fresh(web.Response(text=text, content_type="text/plain", charset="utf-8"))


@dataclass
class EdgeRunner:
    """A running edge; ``await runner.stop()`` shuts it down gracefully."""

    app: web.Application
    runner: web.AppRunner
    url: str

    @property
    def node(self) -> EdgeNode:
        """The member side of the running edge."""
        return self.app[NODE_KEY]

    @property
    def drain(self) -> Drain:
        """The running edge's drain: ``runner.drain.start(why)`` begins it."""
        return self.app[DRAIN_KEY]

    async def stop(self) -> None:
        """Close every member (GOING_AWAY), flush the batcher, stop serving."""
        await self.runner.cleanup()

    async def serve(self) -> None:
        """Serve until told to stop, then stop; how ``liveclass edge`` runs.

        SIGTERM, or the origin's request, drains the edge (its members move
        to other edges), then stops it. SIGINT, or a second SIGTERM, stops
        it at once: members still here get ``GOING_AWAY``.
        """
        loop = asyncio.get_running_loop()
        drain = self.drain
        now = asyncio.Event()
        terms = 0

        def on_sigterm() -> None:
            nonlocal terms
            terms += 1
            if terms == 1:
                drain.start("SIGTERM")  # nothing new if the origin asked first
            else:
                logger.info("second SIGTERM: stopping now", extra=self._extra)
                now.set()

        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
        loop.add_signal_handler(signal.SIGINT, now.set)
        ends = [
            asyncio.ensure_future(drain.finished.wait()),
            asyncio.ensure_future(now.wait()),
        ]
        try:
            await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
            logger.info("stopping", extra=self._extra)
            await self.stop()
        finally:
            for waiter in ends:
                waiter.cancel()
            # Only now: a signal during the stop must not interrupt it.
            loop.remove_signal_handler(signal.SIGTERM)
            loop.remove_signal_handler(signal.SIGINT)

    @property
    def _extra(self) -> dict[str, str]:
        return {"edge_id": self.node.config.edge_id}


async def run_edge(
    config: EdgeConfig, log: ClassLog | None = None, reuse_port: bool = False
) -> EdgeRunner:
    """Serve an edge on ``config.host:config.port`` (TLS with cert and key).

    ``reuse_port`` lets worker processes share the port. Returns once
    listening; the caller stops it with :meth:`EdgeRunner.stop`.
    """
    app = build_app(config, log)
    # Members that do not answer a close handshake must not hold up a stop.
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=5.0)
    await runner.setup()
    context = None
    if config.tls_cert and config.tls_key:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(config.tls_cert, config.tls_key)
    site = MemberSite(
        runner,
        app[MEMBERS_KEY],
        config.host,
        config.port,
        ssl_context=context,
        backlog=4096,
        reuse_port=reuse_port,
    )
    await site.start()
    scheme = "https" if context else "http"
    url = f"{scheme}://{config.host}:{config.port}"
    logger.info("edge listening on %s", url, extra={"edge_id": config.edge_id})
    return EdgeRunner(app, runner, url)
