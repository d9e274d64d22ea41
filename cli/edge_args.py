"""``liveclass edge``: flags and start-up of an edge node."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from liveclass.cli.flags import flag, port, positive, repeated


def add_parser(commands: Any) -> None:
    """Add the ``edge`` subcommand."""
    p: argparse.ArgumentParser = commands.add_parser(
        "edge", help="run an edge node: member connections, fan-out, media"
    )
    env = "LIVECLASS_EDGE_"
    flag(p, "--edge-id", env + "ID", "edge-1", "this edge's name in the registry")
    flag(p, "--host", env + "HOST", "127.0.0.1", "address to listen on")
    flag(p, "--port", env + "PORT", 8801, "port to listen on", port)
    flag(p, "--public-url", env + "PUBLIC_URL", "", "URL members reach us at")
    flag(p, "--origin-url", env + "ORIGIN_URL", "http://127.0.0.1:8800", "origin")
    flag(p, "--edge-key", env + "KEY", "", "key to register with the origin")
    flag(p, "--latitude", env + "LATITUDE", 0.0, "where this edge stands", float)
    flag(p, "--longitude", env + "LONGITUDE", 0.0, "where this edge stands", float)
    flag(p, "--region", env + "REGION", "", "a region label for reports")
    flag(
        p,
        "--capacity",
        env + "CAPACITY",
        20_000,
        "members this edge takes (over all its workers)",
        int,
    )
    flag(p, "--class-limit", env + "CLASS_LIMIT", 50_000, "members per class", int)
    flag(p, "--redis-url", env + "REDIS_URL", None, "class log in Redis")
    flag(
        p,
        "--log-retention",
        env + "LOG_RETENTION",
        None,
        "class log entries kept per class (default 100000), the same as the "
        "origin's; a member resuming from an older one gets a fresh snapshot",
        positive,
    )
    flag(p, "--data-dir", env + "DATA_DIR", "liveclass-data/edge", "media folder")
    flag(p, "--tls-cert", env + "TLS_CERT", None, "certificate for HTTPS/WSS")
    flag(p, "--tls-key", env + "TLS_KEY", None, "private key for HTTPS/WSS")
    flag(
        p,
        "--ice-interface",
        env + "ICE_INTERFACES",
        None,
        "local address WebRTC may advertise (default: loopback only)",
        repeat=True,
    )
    flag(p, "--ice-public-ip", env + "ICE_PUBLIC_IP", None, "address behind NAT")
    flag(
        p,
        "--ice-server",
        env + "ICE_SERVERS",
        None,
        "STUN or TURN URL (none unless given)",
        repeat=True,
    )
    flag(
        p,
        "--workers",
        env + "WORKERS",
        1,
        "processes sharing the port (more than 1 needs --redis-url)",
        int,
    )
    flag(
        p,
        "--drain-timeout",
        env + "DRAIN_TIMEOUT",
        10.0,
        "seconds a drain (SIGTERM, or the origin's request) may take to move "
        "the members to other edges before the edge stops anyway",
        float,
    )
    flag(
        p,
        "--loop",
        env + "LOOP",
        "auto",
        "event loop: auto (uvloop when installed), asyncio or uvloop",
    )
    p.add_argument(
        "--no-transcode", action="store_true", help="do not ingest media here"
    )
    p.set_defaults(run=run)


def config_from_args(args: argparse.Namespace) -> Any:
    """The edge's configuration from parsed flags."""
    from liveclass.edge_node.config import EdgeConfig
    from liveclass.origin.classlog import DEFAULT_RETENTION

    return EdgeConfig(
        edge_id=args.edge_id,
        host=args.host,
        port=args.port,
        public_url=args.public_url,
        origin_url=args.origin_url,
        edge_key=args.edge_key,
        latitude=args.latitude,
        longitude=args.longitude,
        region=args.region,
        capacity=args.capacity,
        class_limit=args.class_limit,
        log_url=args.redis_url,
        log_retention=args.log_retention or DEFAULT_RETENTION,
        data_dir=Path(args.data_dir),
        tls_cert=Path(args.tls_cert) if args.tls_cert else None,
        tls_key=Path(args.tls_key) if args.tls_key else None,
        ice_interfaces=repeated(args, "ice_interface"),
        ice_public_ip=args.ice_public_ip,
        ice_servers=repeated(args, "ice_server"),
        transcode=not args.no_transcode,
        drain_timeout_s=args.drain_timeout,
    )


def run(args: argparse.Namespace) -> int:
    """Serve the edge until SIGINT, or until a drain (SIGTERM, or the
    origin's request) has moved its members; exit status 0 either way."""
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ValueError("give both --tls-cert and --tls-key, or neither")
    if not args.drain_timeout >= 0:  # also refuses nan
        raise ValueError(f"--drain-timeout {args.drain_timeout}: give 0 or more")
    if not args.redis_url:
        logging.getLogger("liveclass.edge_node").warning(
            "class log in process: no other edge and no origin can see this "
            "edge's classes; give --redis-url to join a fleet"
        )
    from liveclass.edge_node.app import run_edge
    from liveclass.edge_node.workers import check_workers, run_loop, run_workers

    if args.loop not in ("auto", "asyncio", "uvloop"):
        raise ValueError(f"--loop {args.loop}: choose auto, asyncio or uvloop")
    config = config_from_args(args)
    check_workers(config, args.workers)
    if args.workers > 1:
        status: int = run_workers(config, args.workers, args.loop)
        return status

    async def serve() -> None:
        runner = await run_edge(config)
        await runner.serve()

    run_loop(serve(), args.loop)
    return 0
