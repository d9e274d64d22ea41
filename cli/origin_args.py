"""``liveclass origin``: flags and start-up of the admin API server."""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path
from typing import Any

from liveclass.cli.flags import flag, port, positive, repeated

log = logging.getLogger("liveclass.origin")


def add_parser(commands: Any) -> None:
    """Add the ``origin`` subcommand."""
    p: argparse.ArgumentParser = commands.add_parser(
        "origin", help="run the origin: admin API, tokens, registry, routing"
    )
    env = "LIVECLASS_ORIGIN_"
    flag(p, "--host", env + "HOST", "127.0.0.1", "address to listen on")
    flag(p, "--port", env + "PORT", 8800, "port to listen on", port)
    flag(p, "--api-key", env + "API_KEY", None, "admin API key (bearer)")
    flag(p, "--edge-key", env + "EDGE_KEY", None, "key edges register with")
    flag(p, "--database-url", env + "DATABASE_URL", None, "SQLAlchemy URL")
    flag(p, "--redis-url", env + "REDIS_URL", None, "class log in Redis")
    flag(
        p,
        "--log-retention",
        env + "LOG_RETENTION",
        None,
        "class log entries kept per class (default 100000), the same as the "
        "edges'; the origin cannot store what is trimmed before it does",
        positive,
    )
    flag(p, "--geoip-db", env + "GEOIP_DB", None, "MaxMind City database", Path)
    flag(
        p,
        "--trusted-proxy",
        env + "TRUSTED_PROXIES",
        None,
        "CIDR of a proxy whose X-Forwarded-For is believed",
        repeat=True,
    )
    flag(p, "--key-file", env + "KEY_FILE", None, "RSA signing key (PEM)", Path)
    flag(p, "--tls-cert", env + "TLS_CERT", None, "certificate for HTTPS", Path)
    flag(p, "--tls-key", env + "TLS_KEY", None, "private key for HTTPS", Path)
    p.set_defaults(run=run)


def config_from_args(args: argparse.Namespace) -> Any:
    """The origin's configuration from parsed flags."""
    from liveclass.origin.config import OriginConfig

    config = OriginConfig.from_env()
    updates: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "api_key": args.api_key,
        "edge_key": args.edge_key,
        "database_url": args.database_url,
        "log_url": args.redis_url,
        "log_retention": args.log_retention,
        "geoip_db": args.geoip_db,
        "key_file": args.key_file,
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
    }
    for name, value in updates.items():
        if value is not None:
            setattr(config, name, value)
    proxies = repeated(args, "trusted_proxy")
    if proxies:
        config.trusted_proxies = proxies
    # Check the combination the flags made (TLS pair, proxy CIDRs), as a
    # config built in one go would be.
    config.__post_init__()
    if not config.log_url:
        log.warning(
            "class log in process: edges in other processes cannot share it; "
            "give --redis-url so that edges and this origin meet in Redis"
        )
    return config


def run(args: argparse.Namespace) -> int:
    """Serve the origin until SIGINT or SIGTERM."""
    from liveclass.cli.main import serve_until_signalled
    from liveclass.origin.app import run_origin

    async def serve() -> None:
        runner = await run_origin(config_from_args(args))
        await serve_until_signalled(runner)

    asyncio.run(serve())
    return 0
