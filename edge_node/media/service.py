"""The media service of an edge: WHIP ingest and HLS serving.

On the ingest edge of a class, segments come from the local transcoder and
playlists from memory; the recording stays under ``data_dir/<class_id>/``.
Every other edge learns the ingest edge's URL from the class's
``media.live`` entry and pulls each playlist and segment from it once,
however many of its members ask (see :mod:`.cache`).

URL layout, under ``/v1/classes/{class_id}``::

    POST   /whip                              teacher's SDP offer -> answer
    DELETE /whip/{session}                    stop publishing
    GET    /hls/master.m3u8                   live master playlist
    GET    /hls/{rendition}/live.m3u8         sliding live playlist
    GET    /hls/{rendition}/{n}.ts            segment
    GET    /recording/master.m3u8             recording master playlist
    GET    /recording/{rendition}/vod.m3u8    recording (VOD) playlist
    GET    /recording/{rendition}/{n}.ts      segment

GET requests need ``?token=<join token>`` or the signed query the edge put
in the playlist that listed them (see :mod:`.access`).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from liveclass.edge_node.context import EdgeContext
from liveclass.edge_node.media.access import AccessDenied, Grant, MediaAccess
from liveclass.edge_node.media.cache import SingleFlightCache
from liveclass.edge_node.media.ingest import IngestSession
from liveclass.edge_node.media.playlist import (
    MediaPlaylist,
    Rendition,
    Segment,
    master_playlist,
    rewrite_uris,
)
from liveclass.edge_node.media.transcoder import DEFAULT_LADDER, Transcoder
from liveclass.origin.contract import LogEvent
from liveclass.origin.tokens import TokenError
from liveclass.sdk.media.ice import host_addresses
from liveclass.sdk.protocol import Role

logger = logging.getLogger(__name__)

PREFIX = "/v1/classes/{class_id}"
SEGMENT_S = 2
LIVE_WINDOW = 6
UPSTREAM_TIMEOUT = aiohttp.ClientTimeout(total=10)
"""A segment not fetched from the ingest edge in this time is a 502."""
_CLASS_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")
_PLAYLIST_TYPE = "application/vnd.apple.mpegurl"  # RFC 8216 section 4
_SEGMENT_TYPE = "video/mp2t"
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, Range",
    "Access-Control-Expose-Headers": "Location, Content-Length",
    "Access-Control-Max-Age": "600",
}


class _UpstreamError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


@dataclass
class _LocalClass:
    """A class whose ingest edge this is."""

    directory: Path
    renditions: list[Rendition]
    playlists: dict[str, MediaPlaylist]
    session: IngestSession | None = None
    announced: bool = False
    ended: bool = False

    @property
    def next_sequence(self) -> int:
        first = next(iter(self.playlists.values()))
        return first.segments[-1].sequence + 1 if first.segments else 0


@dataclass
class _RemoteClass:
    """A class ingested elsewhere, as its ``media.live`` entry describes it."""

    ingest_url: str
    generation: str
    renditions: list[str]
    token: str | None = None
    token_exp: int = 0
    ended: bool = False


class MediaService:
    """WHIP ingest, transcoding and HLS serving for one edge."""

    def __init__(self, ctx: EdgeContext, cache_bytes: int = 256 * 1024 * 1024) -> None:
        self.ctx = ctx
        self.access = MediaAccess(ctx.verifier)
        self.cache = SingleFlightCache(cache_bytes)
        self._local: dict[str, _LocalClass] = {}
        self._remote: dict[str, _RemoteClass] = {}
        self._ended: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._addresses = host_addresses(ctx.config.ice_interfaces)

    def add_routes(self, app: web.Application) -> None:
        """Add the media routes to ``app``."""
        get_routes: list[tuple[str, Callable[[web.Request], Awaitable[Any]]]] = [
            ("/hls/master.m3u8", self._live_master),
            ("/hls/{rendition}/live.m3u8", self._live_playlist),
            ("/hls/{rendition}/{segment:\\d{1,9}}.ts", self._segment),
            ("/recording/master.m3u8", self._recording_master),
            ("/recording/{rendition}/vod.m3u8", self._vod_playlist),
            ("/recording/{rendition}/{segment:\\d{1,9}}.ts", self._segment),
        ]
        for path, handler in get_routes:
            app.router.add_get(PREFIX + path, handler, allow_head=False)
            app.router.add_route("OPTIONS", PREFIX + path, self._preflight)
        app.router.add_post(PREFIX + "/whip", self._whip_post)
        app.router.add_route("OPTIONS", PREFIX + "/whip", self._preflight)
        app.router.add_delete(PREFIX + "/whip/{session}", self._whip_delete)
        app.router.add_route("OPTIONS", PREFIX + "/whip/{session}", self._preflight)

    # The class log.

    async def on_log_event(self, class_id: str, event: LogEvent) -> None:
        """React to a class-log entry: ``media.live`` and ``class.ended``."""
        if event.type == "media.live":
            data = event.data
            if data.get("ingest_edge") == self.ctx.config.edge_id:
                return
            old = self._remote.get(class_id)
            self._remote[class_id] = _RemoteClass(
                ingest_url=str(data["ingest_url"]).rstrip("/"),
                generation=event.id,
                renditions=[r["name"] for r in data.get("renditions", [])],
                token=old.token if old else None,
                token_exp=old.token_exp if old else 0,
            )
        elif event.type == "class.ended":
            self._ended.add(class_id)
            remote = self._remote.get(class_id)
            if remote is not None:
                remote.ended = True
            if class_id in self._local:
                self._spawn(self._finish(class_id))

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Stop every ingest and task; finished segments stay on disk."""
        sessions = [c.session for c in self._local.values() if c.session]
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.cache.close()

    # WHIP ingest.

    async def _whip_post(self, request: web.Request) -> web.Response:
        class_id = _class_id(request)
        try:
            self._check_publisher(request, class_id)
        except AccessDenied as exc:
            return _error(exc.status, exc.reason)
        if not self.ctx.config.transcode:
            return _error(503, "this edge does not ingest; publish to another")
        if class_id in self._ended:
            return _error(409, "the class has ended")
        if request.content_type != "application/sdp":
            return _error(415, "send the SDP offer as application/sdp")
        offer = await request.text()

        cls = self._local_class(class_id)
        if cls.session is not None:
            # A new offer replaces the old session (the teacher reconnected).
            await cls.session.close()
        transcoder = Transcoder(
            cls.directory,
            self._on_segment_threadsafe(class_id),
            segment_s=SEGMENT_S,
            first_sequence=cls.next_sequence,
        )
        session = IngestSession(class_id, transcoder, self.ctx.config.ice_servers)
        try:
            answer = await session.answer(
                offer, self._addresses, self.ctx.config.ice_public_ip
            )
        except (ValueError, RuntimeError) as exc:
            await session.close()
            return _error(400, f"unusable SDP offer: {exc}")
        cls.session = session
        location = f"/v1/classes/{class_id}/whip/{session.id}"
        return web.Response(
            status=201,
            text=answer,
            content_type="application/sdp",
            headers={"Location": location, **CORS_HEADERS},
        )

    async def _whip_delete(self, request: web.Request) -> web.Response:
        class_id = _class_id(request)
        try:
            self._check_publisher(request, class_id)
        except AccessDenied as exc:
            return _error(exc.status, exc.reason)
        cls = self._local.get(class_id)
        if cls is None or cls.session is None:
            return _error(404, "no such ingest session")
        if cls.session.id != request.match_info["session"]:
            return _error(404, "no such ingest session")
        session, cls.session = cls.session, None
        await session.close()
        return web.Response(status=200, headers=CORS_HEADERS)

    def _check_publisher(self, request: web.Request, class_id: str) -> None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise AccessDenied(401, "send the join token as Authorization: Bearer")
        try:
            claims = self.ctx.verifier.verify(token)
        except TokenError as exc:
            raise AccessDenied(401, str(exc)) from None
        if claims.cls != class_id:
            raise AccessDenied(403, "the token is for another class")
        if claims.role not in (Role.TEACHER, Role.TA):
            raise AccessDenied(403, "only the teacher or a TA may publish")

    def _local_class(self, class_id: str) -> _LocalClass:
        cls = self._local.get(class_id)
        if cls is None:
            renditions = [step.rendition() for step in DEFAULT_LADDER]
            cls = _LocalClass(
                directory=self.ctx.config.data_dir / class_id,
                renditions=renditions,
                playlists={
                    r.name: MediaPlaylist(SEGMENT_S, LIVE_WINDOW) for r in renditions
                },
            )
            self._local[class_id] = cls
        return cls

    def _on_segment_threadsafe(self, class_id: str) -> Callable[[str, Segment], None]:
        loop = asyncio.get_running_loop()

        def on_segment(rendition: str, segment: Segment) -> None:
            loop.call_soon_threadsafe(self._on_segment, class_id, rendition, segment)

        return on_segment

    def _on_segment(self, class_id: str, rendition: str, segment: Segment) -> None:
        cls = self._local[class_id]
        cls.playlists[rendition].add(segment)
        if not cls.announced and all(p.segments for p in cls.playlists.values()):
            # Announced once every rendition has a segment: a player that
            # reacts at once finds something to play.
            cls.announced = True
            self._spawn(self._announce(class_id, cls))

    async def _announce(self, class_id: str, cls: _LocalClass) -> None:
        config = self.ctx.config
        event = LogEvent(
            type="media.live",
            edge_id=config.edge_id,
            data={
                "master_url": f"/v1/classes/{class_id}/hls/master.m3u8",
                "renditions": [
                    {
                        "name": r.name,
                        "resolution": r.resolution,
                        "bandwidth": r.bandwidth,
                    }
                    for r in cls.renditions
                ],
                "ingest_edge": config.edge_id,
                "ingest_url": config.base_url,
            },
        )
        await self.ctx.append(class_id, [event])

    async def _finish(self, class_id: str) -> None:
        cls = self._local[class_id]
        if cls.ended:
            return
        cls.ended = True
        if cls.session is not None:
            await cls.session.close()
            cls.session = None
        for playlist in cls.playlists.values():
            playlist.end()
        await asyncio.to_thread(self._write_recording, cls)
        duration = max(p.duration for p in cls.playlists.values())
        event = LogEvent(
            type="recording.ready",
            edge_id=self.ctx.config.edge_id,
            data={
                "playlist_url": f"/v1/classes/{class_id}/recording/master.m3u8",
                "duration_s": round(duration, 3),
                "renditions": [r.name for r in cls.renditions],
            },
        )
        await self.ctx.append(class_id, [event])
        logger.info("class %s: recording ready, %.1f s", class_id, duration)

    @staticmethod
    def _write_recording(cls: _LocalClass) -> None:
        cls.directory.mkdir(parents=True, exist_ok=True)
        master = master_playlist(cls.renditions, lambda r: f"{r.name}/vod.m3u8")
        (cls.directory / "recording.m3u8").write_text(master)
        for name, playlist in cls.playlists.items():
            (cls.directory / name).mkdir(exist_ok=True)
            (cls.directory / name / "vod.m3u8").write_text(playlist.vod())

    # Serving HLS.

    async def _preflight(self, request: web.Request) -> web.Response:
        return web.Response(status=204, headers=CORS_HEADERS)

    async def _live_master(self, request: web.Request) -> web.StreamResponse:
        def local(cls: _LocalClass) -> str:
            return master_playlist(cls.renditions, lambda r: f"{r.name}/live.m3u8")

        return await self._playlist(request, local, max_age=None)

    async def _live_playlist(self, request: web.Request) -> web.StreamResponse:
        rendition = request.match_info["rendition"]
        if not _CLASS_ID.match(rendition):
            return _error(404, "no such rendition")

        def local(cls: _LocalClass) -> str | None:
            playlist = cls.playlists.get(rendition)
            return playlist.live() if playlist else None

        # A live playlist is never served more than half a segment stale.
        return await self._playlist(request, local, max_age=SEGMENT_S / 2)

    async def _recording_master(self, request: web.Request) -> web.StreamResponse:
        return await self._playlist(request, None, max_age=None, file="recording.m3u8")

    async def _vod_playlist(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["rendition"]
        if not _CLASS_ID.match(name):
            return _error(404, "no such rendition")
        return await self._playlist(
            request, None, max_age=None, file=f"{name}/vod.m3u8"
        )

    async def _playlist(
        self,
        request: web.Request,
        local: Callable[[_LocalClass], str | None] | None,
        max_age: float | None,
        file: str | None = None,
    ) -> web.StreamResponse:
        """Serve a playlist from memory, the recording folder or upstream."""
        class_id = _class_id(request)
        try:
            grant = self._grant(request, class_id)
        except AccessDenied as exc:
            return _error(exc.status, exc.reason)

        text: str | None = None
        cls = self._local.get(class_id)
        path = self.ctx.config.data_dir / class_id / file if file else None
        if cls is not None and local is not None:
            text = local(cls)
        elif path is not None and path.is_file():
            text = await asyncio.to_thread(path.read_text)
        elif class_id in self._remote:
            try:
                body = await self._upstream(request, class_id, grant, max_age)
            except _UpstreamError as exc:
                return _error(exc.status, "not available from the ingest edge")
            text = body.decode()
        if text is None:
            return _error(404, "no media for this class here (yet)")
        body_text = rewrite_uris(text, self.access.signed_query(grant))
        return web.Response(
            text=body_text,
            content_type=_PLAYLIST_TYPE,
            headers={"Cache-Control": "no-cache", **CORS_HEADERS},
        )

    async def _segment(self, request: web.Request) -> web.StreamResponse:
        class_id = _class_id(request)
        try:
            grant = self._grant(request, class_id)
        except AccessDenied as exc:
            return _error(exc.status, exc.reason)
        rendition = request.match_info["rendition"]
        if not _CLASS_ID.match(rendition):
            return _error(404, "no such rendition")
        name = f"{int(request.match_info['segment']):06d}.ts"
        headers = {
            "Content-Type": _SEGMENT_TYPE,
            # A segment never changes once listed (RFC 8216 section 6.2.1).
            "Cache-Control": "public, max-age=86400, immutable",
            **CORS_HEADERS,
        }
        path = self.ctx.config.data_dir / class_id / rendition / name
        if path.is_file():
            return web.FileResponse(path, headers=headers)
        if class_id not in self._remote:
            return _error(404, "no such segment")
        try:
            body = await self._upstream(request, class_id, grant, None)
        except _UpstreamError as exc:
            return _error(exc.status, "segment not available from the ingest edge")
        return web.Response(body=body, headers=headers)

    def _grant(self, request: web.Request, class_id: str) -> Grant:
        grant = self.access.check(class_id, dict(request.query))
        remote = self._remote.get(class_id)
        # Remember the longest-lived member token seen: this edge forwards it
        # upstream when members come back with signed URLs only.
        if grant.token and remote is not None and grant.token_exp >= remote.token_exp:
            remote.token, remote.token_exp = grant.token, grant.token_exp
        return grant

    async def _upstream(
        self, request: web.Request, class_id: str, grant: Grant, max_age: float | None
    ) -> bytes:
        remote = self._remote[class_id]
        token = grant.token or remote.token
        if token is None:
            raise _UpstreamError(401)
        path = request.path
        # Segments are the same files under /hls and /recording: cache once.
        key = f"{remote.ingest_url}{path.replace('/recording/', '/hls/')}"
        if path.endswith(".m3u8"):
            key = f"{remote.generation}:{path}"
        url = f"{remote.ingest_url}{path}"

        async def fetch() -> bytes:
            try:
                async with self.ctx.http.get(
                    url, params={"token": token}, timeout=UPSTREAM_TIMEOUT
                ) as response:
                    if response.status != 200:
                        raise _UpstreamError(404 if response.status == 404 else 502)
                    body = await response.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                logger.warning("class %s: upstream %s failed: %s", class_id, url, exc)
                raise _UpstreamError(502) from None
            if path.endswith(".m3u8"):
                # The ingest edge signed the URIs for itself; drop that.
                body = rewrite_uris(body.decode(), "").encode()
            return body

        return await self.cache.get(key, fetch, max_age)


def _class_id(request: web.Request) -> str:
    class_id = request.match_info["class_id"]
    if not _CLASS_ID.match(class_id):
        raise web.HTTPNotFound(text="no such class", headers=CORS_HEADERS)
    return class_id


def _error(status: int, reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=status, headers=CORS_HEADERS)
