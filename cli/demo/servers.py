"""Start the demo's origin and edges in this process."""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from liveclass.cli.demo.plan import REGIONS, DemoOptions
from liveclass.origin.classlog import ClassLog, open_log

log = logging.getLogger(__name__)


def free_port() -> int:
    """A loopback TCP port that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Servers:
    """The running origin and edges, and how to reach them."""

    origin_url: str
    api_key: str
    class_log: ClassLog
    edge_urls: dict[str, str]
    runners: list[Any] = field(default_factory=list)

    async def stop(self) -> None:
        """Stop the edges, then the origin, then close the class log."""
        for runner in reversed(self.runners):
            try:
                await runner.stop()
            except Exception:
                log.exception("stopping a demo server failed")
        await self.class_log.close()


def build_geoip(path: Path) -> Path:
    """Write the demo's GeoIP database: each region's loopback range placed
    where its students live."""
    from liveclass.routing.geoip import Location
    from liveclass.routing.geoip_build import write_city_database

    path.parent.mkdir(parents=True, exist_ok=True)
    write_city_database(
        path,
        {
            r.network: Location(r.student_latitude, r.student_longitude, r.name)
            for r in REGIONS
        },
    )
    return path


async def start_servers(options: DemoOptions) -> Servers:
    """Start an origin and one edge per demo region, sharing one class log."""
    from liveclass.edge_node.app import run_edge
    from liveclass.edge_node.config import EdgeConfig
    from liveclass.origin.app import run_origin
    from liveclass.origin.config import OriginConfig

    data = options.data_dir
    data.mkdir(parents=True, exist_ok=True)
    class_log = open_log(options.redis_url)
    api_key, edge_key = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    origin_port = free_port()
    origin_url = f"http://127.0.0.1:{origin_port}"
    database_url = options.database_url or (
        f"sqlite+aiosqlite:///{(data / 'origin.db').resolve()}"
    )
    origin_config = OriginConfig(
        port=origin_port,
        api_key=api_key,
        edge_key=edge_key,
        database_url=database_url,
        log_url=options.redis_url,
        geoip_db=build_geoip(data / "geoip-demo.mmdb"),
        key_file=data / "origin-key.pem",
        edge_timeout_s=6.0,
    )
    servers = Servers(origin_url, api_key, class_log, {})
    servers.runners.append(await run_origin(origin_config, log=class_log))
    for region in REGIONS:
        port = free_port()
        config = EdgeConfig(
            edge_id=region.edge_id,
            port=port,
            origin_url=origin_url,
            edge_key=edge_key,
            latitude=region.latitude,
            longitude=region.longitude,
            region=region.name,
            log_url=options.redis_url,
            data_dir=data / region.edge_id,
            heartbeat_s=1.0,
        )
        servers.runners.append(await run_edge(config, log=class_log))
        servers.edge_urls[region.edge_id] = config.base_url
    await _wait_for_registry(servers, len(REGIONS))
    return servers


async def _wait_for_registry(servers: Servers, count: int) -> None:
    from liveclass.sdk.admin import AdminClient

    async with AdminClient(servers.origin_url, servers.api_key) as admin:
        for _ in range(100):
            if len(await admin.edges()) >= count:
                return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"the demo's {count} edges did not register with the origin")
