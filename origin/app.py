"""The origin's HTTP application: assembly, lifecycle and serving."""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from liveclass.origin.api import classes, edges, meta, reports, route, tokens
from liveclass.origin.api.http import Operation, authenticated, reply
from liveclass.origin.api.meta import OPENAPI
from liveclass.origin.api.models import ClassStatus
from liveclass.origin.api.state import STATE, OriginState
from liveclass.origin.classlog import ClassLog, ClassLogError, open_log
from liveclass.origin.clientaddr import parse_networks
from liveclass.origin.config import OriginConfig
from liveclass.origin.errors import APIError, APIErrorCode, not_found
from liveclass.origin.keys import load_keyring
from liveclass.origin.openapi import build_document
from liveclass.origin.reconcile import GROUP, Reconcilers
from liveclass.origin.registry import EdgeRegistry
from liveclass.origin.store import Store
from liveclass.origin.tokens import KeyRing

logger = logging.getLogger(__name__)

OPERATIONS: list[Operation] = [
    *meta.OPERATIONS,
    *classes.OPERATIONS,
    *tokens.OPERATIONS,
    *edges.OPERATIONS,
    *route.OPERATIONS,
    *reports.OPERATIONS,
]
"""Every operation of the API; the router and the OpenAPI document use it."""

MAX_BODY_BYTES = 8 * 1024 * 1024
"""Room for a bulk token request of the largest size, with long names."""

RESUME_ENDED_WITHIN_S = 24 * 3600.0
"""At start, classes that ended this recently are reconciled again if their
log still holds entries not stored: the previous origin stopped before it
caught up with them (during a database outage, say)."""


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Answer every failure with the API's one error shape."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except APIError as exc:
        return reply(exc.body(), exc.status)
    except web.HTTPRequestEntityTooLarge:
        error = APIError(
            APIErrorCode.TOO_LARGE, f"the body exceeds {MAX_BODY_BYTES} bytes"
        )
    except web.HTTPNotFound:
        error = not_found(f"path {request.path!r}")
    except web.HTTPMethodNotAllowed as exc:
        error = APIError(
            APIErrorCode.METHOD_NOT_ALLOWED,
            f"{exc.method} is not allowed on {request.path}; "
            f"use {', '.join(sorted(exc.allowed_methods))}",
        )
    except web.HTTPException:
        raise
    except Exception:
        logger.exception("%s %s failed", request.method, request.path)
        error = APIError(APIErrorCode.INTERNAL, "internal error; see the origin's log")
    return reply(error.body(), error.status)


def build_app(
    config: OriginConfig,
    log: ClassLog | None = None,
    keyring: KeyRing | None = None,
) -> web.Application:
    """The origin as an aiohttp application, not yet started.

    ``log`` defaults to ``open_log(config.log_url)`` (closed with the app;
    a log passed in is left open for its owner). ``keyring`` defaults to the
    key kept in ``config.key_file``. Starting the app migrates the database
    and resumes reconciling every live class; cleanup stops the reconcilers
    and closes the database.
    """
    owns_log = log is None
    if log is None:
        log = open_log(config.log_url, config.log_retention)
    store = Store.open(config.database_url)
    origin = OriginState(
        config=config,
        store=store,
        log=log,
        keyring=keyring if keyring is not None else load_keyring(config.key_file),
        registry=EdgeRegistry(config.edge_timeout_s),
        reconcilers=Reconcilers(store, log),
        proxies=parse_networks(config.trusted_proxies),
        owns_log=owns_log,
    )

    app = web.Application(middlewares=[_errors], client_max_size=MAX_BODY_BYTES)
    app[STATE] = origin
    app[OPENAPI] = build_document(OPERATIONS)
    for operation in OPERATIONS:
        app.router.add_route(operation.method, operation.path, authenticated(operation))
    app.cleanup_ctx.append(_lifecycle)
    return app


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    origin = app[STATE]
    await origin.store.migrate()
    if origin.config.geoip_db is not None:
        # Imported here: geoip2 is needed only when a database is configured.
        from liveclass.routing.geoip import GeoIPReader

        origin.geoip = GeoIPReader(origin.config.geoip_db)
    for info in await origin.store.list_classes(ClassStatus.LIVE):
        origin.reconcilers.start(info.id)
    await _resume_ended(origin)
    logger.info(
        "origin ready; classes being reconciled: %d", len(origin.reconcilers.running())
    )
    try:
        yield
    finally:
        await origin.reconcilers.close()
        await origin.store.close()
        if origin.geoip is not None:
            origin.geoip.close()
        if origin.owns_log:
            await origin.log.close()
        logger.info("origin stopped")


async def _resume_ended(origin: OriginState) -> None:
    """Reconcile the recently ended classes whose logs hold entries not
    stored yet."""
    since = time.time() - RESUME_ENDED_WITHIN_S
    for info in await origin.store.list_classes(ClassStatus.ENDED, ended_after=since):
        try:
            backlog = await origin.log.backlog(info.id, GROUP)
        except ClassLogError as exc:
            logger.warning(
                "class log unreachable (%s); ended classes are not checked "
                "for entries left to store until the next start",
                exc,
            )
            return
        if backlog.total:
            origin.reconcilers.start(info.id, ended_at=info.ended_at)


@dataclass
class OriginServer:
    """A running origin; :meth:`stop` it when done."""

    app: web.Application
    runner: web.AppRunner
    url: str
    """The base URL it listens on, with the real port when 0 was asked."""

    @property
    def state(self) -> OriginState:
        """The running origin's parts (store, registry, key ring...)."""
        return self.app[STATE]

    async def stop(self) -> None:
        """Stop listening, finish requests in flight and clean up."""
        await self.runner.cleanup()


async def run_origin(
    config: OriginConfig,
    log: ClassLog | None = None,
    keyring: KeyRing | None = None,
) -> OriginServer:
    """Build the origin and start serving it on ``config.host:config.port``.

    Serves HTTPS when ``config.tls_cert`` and ``config.tls_key`` are set.
    Port 0 picks a free port; the answer's ``url`` has the real one.
    """
    app = build_app(config, log, keyring)
    context = None
    if config.tls_cert is not None and config.tls_key is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(config.tls_cert, config.tls_key)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, ssl_context=context)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    host, port = runner.addresses[0][:2]
    scheme = "https" if context is not None else "http"
    shown = f"[{host}]" if ":" in host else host
    url = f"{scheme}://{shown}:{port}"
    logger.info("origin listening on %s", url)
    return OriginServer(app=app, runner=runner, url=url)
