"""The edge's media: WebRTC ingest, the HLS ladder, the recording, HLS serving.

Needs the ``media`` extra. The edge server calls :func:`setup_media` once
and feeds the returned service every class-log entry.
"""

from __future__ import annotations

from aiohttp import web

from liveclass.edge_node.context import EdgeContext
from liveclass.edge_node.media.service import MediaService

__all__ = ["MediaService", "setup_media"]


def setup_media(app: web.Application, ctx: EdgeContext) -> MediaService:
    """Add the media routes to ``app``; return the service to feed and close."""
    service = MediaService(ctx)
    service.add_routes(app)
    return service
