"""The edge's calls to the origin: public keys, registration, heartbeats.

None of them is needed to serve members already admitted, so a failure is
logged and retried, never fatal. The answer to a heartbeat may ask the edge
to drain (an admin's request at the origin); the link passes that on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from liveclass.edge_node.config import EdgeConfig
from liveclass.origin.contract import EdgeHeartbeat, EdgeLocation, EdgeRegistration
from liveclass.origin.tokens import TokenVerifier

logger = logging.getLogger(__name__)

KEYS_REFRESH_S = 60.0
"""How often the edge fetches the origin's public keys."""

MIN_KEYS_REFRESH_S = 5.0
"""The soonest a token with an unknown key may trigger another fetch."""

_TIMEOUT = aiohttp.ClientTimeout(total=5.0)


class OriginLink:
    """Keeps the token verifier's keys fresh and the edge registered.

    ``on_drain_request``, when set, is called after each heartbeat whose
    answer says an admin asked this edge to drain; it must return at once.
    """

    def __init__(
        self,
        config: EdgeConfig,
        verifier: TokenVerifier,
        http: aiohttp.ClientSession,
        heartbeat: Callable[[], EdgeHeartbeat],
    ) -> None:
        self.config = config
        self.verifier = verifier
        self.http = http
        self.on_drain_request: Callable[[], None] | None = None
        self._heartbeat = heartbeat
        self._origin = config.origin_url.rstrip("/")
        self._last_keys_fetch = 0.0
        self._fetching: asyncio.Future[bool] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._extra = {"edge_id": config.edge_id}

    def start(self) -> None:
        """Start the key refresher and (unless ``config.register`` is off) the
        registration/heartbeat loop."""
        self._tasks = [asyncio.create_task(self._keys_loop(), name="edge-keys")]
        if self.config.register:
            self._tasks.append(
                asyncio.create_task(self._registry_loop(), name="edge-registry")
            )

    async def farewell(self) -> bool:
        """Tell the origin this edge is leaving (a heartbeat saying it
        drains), so routing stops offering it now rather than after the
        heartbeat timeout; whether the origin took it.

        Best effort: an unreachable origin times the edge out instead. An
        edge that does not register (a worker) has nothing to say: True.
        """
        if not self.config.register:
            return True
        beat = self._heartbeat().model_copy(update={"draining": True})
        try:
            # A 404 is as good: an origin that does not know this edge
            # offers it to nobody.
            await self._post(
                f"/v1/edges/{self.config.edge_id}/heartbeat",
                beat.model_dump(),
                allow_404=True,
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            logger.info(
                "could not say goodbye to the origin: %s", exc, extra=self._extra
            )
            return False
        return True

    async def stop(self) -> None:
        """Stop both loops."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    def _headers(self) -> dict[str, str]:
        if not self.config.edge_key:
            return {}
        return {"Authorization": f"Bearer {self.config.edge_key}"}

    async def fetch_keys(self) -> bool:
        """Fetch ``/v1/keys`` into the verifier; whether it worked."""
        self._last_keys_fetch = time.monotonic()
        try:
            async with self.http.get(
                f"{self._origin}/v1/keys", timeout=_TIMEOUT
            ) as resp:
                resp.raise_for_status()
                document = await resp.json()
            self.verifier.update(document)
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
            logger.warning(
                "could not fetch the origin's public keys: %s", exc, extra=self._extra
            )
            return False
        return True

    async def refresh_keys_soon(self) -> bool:
        """Fetch the keys now unless that was done moments ago (a token named
        an unknown key: the origin may have rotated).

        Callers arriving while a fetch is in flight share it; and while no
        key is known at all (the edge just started) any caller may fetch, so
        the first members are not refused for the edge's own slowness.
        """
        if self._fetching is not None:
            return await asyncio.shield(self._fetching)
        recent = time.monotonic() - self._last_keys_fetch < MIN_KEYS_REFRESH_S
        if recent and self.verifier.kids:
            return False
        self._fetching = asyncio.ensure_future(self.fetch_keys())
        try:
            return await asyncio.shield(self._fetching)
        finally:
            self._fetching = None

    async def _keys_loop(self) -> None:
        while True:
            ok = await self.fetch_keys()
            # Until the first fetch works no token can be checked: retry soon.
            await asyncio.sleep(KEYS_REFRESH_S if ok else MIN_KEYS_REFRESH_S)

    async def _registry_loop(self) -> None:
        registered = False
        reachable = True
        while True:
            try:
                if not registered:
                    await self._post("/v1/edges", self._registration().model_dump())
                    registered = True
                    logger.info("registered with the origin", extra=self._extra)
                answer = await self._beat()
                if answer is None:
                    # The origin forgot this edge (it restarted): register again.
                    registered = False
                    continue
                self._answered(answer)
                if not reachable:
                    logger.info("origin reachable again", extra=self._extra)
                reachable = True
            except (aiohttp.ClientError, TimeoutError) as exc:
                if reachable:
                    logger.warning(
                        "origin unreachable, will retry: %s", exc, extra=self._extra
                    )
                reachable = False
            await asyncio.sleep(self.config.heartbeat_s)

    async def _beat(self) -> dict[str, Any] | None:
        """Send one heartbeat; the origin's answer, None if it does not know
        this edge."""
        async with self.http.post(
            f"{self._origin}/v1/edges/{self.config.edge_id}/heartbeat",
            json=self._heartbeat().model_dump(),
            headers=self._headers(),
            timeout=_TIMEOUT,
        ) as resp:
            if resp.status == 404:
                return None
            resp.raise_for_status()
            try:
                answer = await resp.json(content_type=None)
            except ValueError:
                answer = None
        # An origin older than the drain request answers without it.
        return answer if isinstance(answer, dict) else {}

    def _answered(self, answer: dict[str, Any]) -> None:
        # Every answer repeats the request until the edge has gone.
        asked = answer.get("drain_requested") is True
        if asked and self.on_drain_request is not None:
            self.on_drain_request()

    def _registration(self) -> EdgeRegistration:
        c = self.config
        return EdgeRegistration(
            edge_id=c.edge_id,
            public_url=c.base_url,
            location=EdgeLocation(
                latitude=c.latitude, longitude=c.longitude, region=c.region
            ),
            capacity=c.capacity,
        )

    async def _post(self, path: str, body: object, allow_404: bool = False) -> int:
        async with self.http.post(
            f"{self._origin}{path}",
            json=body,
            headers=self._headers(),
            timeout=_TIMEOUT,
        ) as resp:
            if resp.status == 404 and allow_404:
                return 404
            resp.raise_for_status()
            return resp.status
