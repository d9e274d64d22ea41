"""``liveclass edge --workers N``: one edge served by N processes.

Each worker is a full edge (member server, rooms, media) listening on the
same port with ``SO_REUSEPORT``; the kernel spreads new connections among
them. Members of one class may land on different workers, so the class log
must be shared: Redis. The workers do not register with the origin. The
parent does, once, under the edge's id, and its heartbeats carry the sum of
the load the workers report to it over a queue: to the origin, N workers
are one edge.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import queue
import signal
from collections import Counter
from collections.abc import Coroutine, Sequence
from dataclasses import replace
from multiprocessing.process import BaseProcess
from typing import Any

import aiohttp

from liveclass.edge_node.config import EdgeConfig
from liveclass.edge_node.origin_link import OriginLink
from liveclass.origin.contract import EdgeHeartbeat
from liveclass.origin.tokens import TokenVerifier

logger = logging.getLogger(__name__)

READY_TIMEOUT_S = 30.0
"""How long the parent waits for every worker to listen."""

STOP_TIMEOUT_S = 10.0
"""How long a worker may take to stop before it is killed."""

Report = tuple[str, int, int, dict[str, int], bool]
"""What a worker tells its parent: kind, worker index, members, classes,
draining."""


def run_loop(main: Coroutine[Any, Any, Any], loop: str = "auto") -> Any:
    """Run ``main`` on uvloop when installed (``auto``), or as asked.

    Raises ValueError when ``loop`` is ``uvloop`` and it is not installed.
    """
    factory = None
    if loop in ("auto", "uvloop"):
        try:
            import uvloop

            factory = uvloop.new_event_loop
        except ImportError:
            if loop == "uvloop":
                main.close()
                raise ValueError(
                    "--loop uvloop: uvloop is not installed; "
                    "pip install 'liveclass[server]'"
                ) from None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def check_workers(config: EdgeConfig, workers: int) -> None:
    """Raise ValueError if ``workers`` processes cannot serve ``config``."""
    if workers < 1:
        raise ValueError("--workers must be 1 or more")
    if workers > 1 and not config.log_url:
        raise ValueError(
            f"--workers {workers} needs --redis-url: the workers of one edge "
            "share classes, so the class log must be in Redis"
        )


def run_workers(config: EdgeConfig, workers: int, loop: str = "auto") -> int:
    """Serve ``config`` with ``workers`` processes until SIGINT or SIGTERM.

    Returns the exit status: 0 after a signal, 1 if a worker died.
    Raises ValueError when the configuration cannot be served so.
    """
    check_workers(config, workers)
    ctx = multiprocessing.get_context("spawn")
    reports: multiprocessing.Queue[Report | None] = ctx.Queue()
    worker_config = replace(config, register=False)
    procs = [
        ctx.Process(
            target=_worker,
            args=(worker_config, k, reports, loop, logging.getLogger().level),
            name=f"edge-worker-{k}",
        )
        for k in range(workers)
    ]
    for proc in procs:
        proc.start()
    try:
        status: int = run_loop(_parent(config, procs, reports), loop)
    finally:
        _stop(procs)
        reports.close()
    return status


def _stop(procs: Sequence[BaseProcess]) -> None:
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    for proc in procs:
        proc.join(STOP_TIMEOUT_S)
        if proc.is_alive():
            logger.warning("worker did not stop; killing", extra={"pid": proc.pid})
            proc.kill()
            proc.join()


async def _parent(
    config: EdgeConfig,
    procs: Sequence[BaseProcess],
    reports: multiprocessing.Queue[Report | None],
) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    load: dict[int, Report] = {}
    ready: set[int] = set()

    def heartbeat() -> EdgeHeartbeat:
        classes: Counter[str] = Counter()
        for _, _, _, per_class, _ in load.values():
            classes.update(per_class)
        return EdgeHeartbeat(
            members=sum(r[2] for r in load.values()),
            classes=dict(classes),
            draining=any(r[4] for r in load.values()),
        )

    def drain() -> None:
        while True:
            try:
                report = reports.get_nowait()
            except queue.Empty:
                return
            if report is not None:
                load[report[1]] = report
                ready.add(report[1])

    extra = {"edge_id": config.edge_id}
    async with asyncio.timeout(READY_TIMEOUT_S):
        while len(ready) < len(procs):
            drain()
            if not all(p.is_alive() for p in procs):
                logger.error("a worker failed to start", extra=extra)
                return 1
            await asyncio.sleep(0.05)
    logger.info("edge serving with %d workers", len(procs), extra=extra)
    async with aiohttp.ClientSession() as http:
        link = OriginLink(config, TokenVerifier(), http, heartbeat)
        link.start()
        try:
            while not stop.is_set():
                drain()
                if not all(p.is_alive() for p in procs):
                    logger.error("a worker died; stopping the edge", extra=extra)
                    return 1
                try:
                    await asyncio.wait_for(stop.wait(), 0.5)
                except TimeoutError:
                    pass
        finally:
            await link.stop()
    return 0


def _worker(
    config: EdgeConfig,
    index: int,
    reports: multiprocessing.Queue[Report | None],
    loop: str,
    log_level: int,
) -> None:
    """One worker process: a full edge on the shared port."""
    logging.basicConfig(
        level=log_level, format=f"%(asctime)s worker {index} %(name)s: %(message)s"
    )
    run_loop(_serve_worker(config, index, reports), loop)


async def _serve_worker(
    config: EdgeConfig, index: int, reports: multiprocessing.Queue[Report | None]
) -> None:
    from liveclass.edge_node.app import run_edge

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    runner = await run_edge(config, reuse_port=True)
    node = runner.node
    try:
        while not stop.is_set():
            # The first report also says the worker listens.
            reports.put(
                (
                    "load",
                    index,
                    node.connections,
                    node.members_per_class(),
                    node.draining,
                )
            )
            try:
                await asyncio.wait_for(stop.wait(), config.heartbeat_s / 2)
            except TimeoutError:
                pass
    finally:
        await runner.stop()
