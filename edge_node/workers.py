"""``liveclass edge --workers N``: one edge served by N processes.

Each worker is a full edge (member server, rooms, media) listening on the
same port with ``SO_REUSEPORT``; the kernel spreads new connections among
them. Members of one class may land on different workers, so the class log
must be shared: Redis. The workers do not register with the origin. The
parent does, once, under the edge's id, and its heartbeats carry the sum of
the load the workers report to it over a queue: to the origin, N workers
are one edge.

A drain (SIGTERM to the parent, or the origin's request in a heartbeat
answer) is the parent's: it tells the origin, then sends SIGTERM to every
worker, and each drains its own members. SIGINT, or a second SIGTERM,
stops the workers at once.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import os
import queue
import signal
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import replace
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any

import aiohttp

from liveclass.edge_node.allocator import tune_malloc
from liveclass.edge_node.config import EdgeConfig
from liveclass.edge_node.origin_link import OriginLink
from liveclass.origin.contract import EdgeHeartbeat
from liveclass.origin.tokens import TokenVerifier

if TYPE_CHECKING:
    from liveclass.edge_node.node import EdgeNode

logger = logging.getLogger(__name__)

READY_TIMEOUT_S = 30.0
"""How long the parent waits for every worker to listen."""

STOP_TIMEOUT_S = 10.0
"""How long a worker may take to stop, after its drain if any, before it is
killed."""

Report = tuple[str, int, int, dict[str, int], bool]
"""What a worker tells its parent: kind, worker index, members, classes,
draining."""


GC_THRESHOLDS = (50_000, 20, 20)
"""Allocations between young collections, and the two ratios above them.

An edge holds some twenty objects per member for as long as the member
stays; with the interpreter's defaults (700, 10, 10) a join storm of ten
thousand members ran two full collections over the whole heap and spent an
eighth of its time collecting. Members' objects are freed by reference
counting when they leave; the collector is only for the rare cycle."""


def tune_gc() -> None:
    """Collect less often, and never scan what was loaded at start-up.

    Objects that exist now (modules, the application) are moved out of the
    collector's sight for good: they live as long as the process.
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def run_loop(main: Coroutine[Any, Any, Any], loop: str = "auto") -> Any:
    """Run ``main`` on uvloop when installed (``auto``), or as asked.

    Raises ValueError when ``loop`` is ``uvloop`` and it is not installed.
    The garbage collector and the C allocator are tuned for a server first
    (:func:`tune_gc`, :func:`~liveclass.edge_node.allocator.tune_malloc`).
    """
    tune_gc()
    tune_malloc()
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


def worker_config(config: EdgeConfig, workers: int) -> EdgeConfig:
    """The configuration of each of ``workers`` processes serving ``config``.

    The parent registers the edge; each worker takes its share of the
    edge's capacity (rounded up). The kernel spreads connections over the
    processes that share the port evenly on average only: a worker that is
    full refuses (``EDGE_FULL``) while another may have room left.
    """
    share = -(-config.capacity // workers)
    return replace(config, register=False, workers=workers, capacity=share)


def run_workers(config: EdgeConfig, workers: int, loop: str = "auto") -> int:
    """Serve ``config`` with ``workers`` processes until SIGINT or SIGTERM.

    Returns the exit status: 0 after a signal, 1 if a worker died.
    Raises ValueError when the configuration cannot be served so.
    """
    check_workers(config, workers)
    ctx = multiprocessing.get_context("spawn")
    reports: multiprocessing.Queue[Report | None] = ctx.Queue()
    each = worker_config(config, workers)
    procs = [
        ctx.Process(
            target=_worker,
            args=(each, k, reports, loop, logging.getLogger().level),
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
    drain = asyncio.Event()  # SIGTERM or the origin's request
    now = asyncio.Event()  # SIGINT or a second SIGTERM
    terms = 0

    def on_sigterm() -> None:
        nonlocal terms
        terms += 1
        (drain if terms == 1 else now).set()

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    loop.add_signal_handler(signal.SIGINT, now.set)
    load: dict[int, Report] = {}
    ready: set[int] = set()

    def heartbeat() -> EdgeHeartbeat:
        classes: Counter[str] = Counter()
        for _, _, _, per_class, _ in load.values():
            classes.update(per_class)
        return EdgeHeartbeat(
            members=sum(r[2] for r in load.values()),
            classes=dict(classes),
            draining=drain.is_set() or any(r[4] for r in load.values()),
        )

    def read_reports() -> None:
        # Also keeps the queue's pipe empty: a worker whose reports are
        # not read cannot exit.
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
            read_reports()
            if not all(p.is_alive() for p in procs):
                logger.error("a worker failed to start", extra=extra)
                return 1
            await asyncio.sleep(0.05)
    logger.info("edge serving with %d workers", len(procs), extra=extra)
    async with aiohttp.ClientSession() as http:
        link = OriginLink(config, TokenVerifier(), http, heartbeat)
        link.on_drain_request = drain.set
        link.start()
        try:
            while not (drain.is_set() or now.is_set()):
                read_reports()
                if not all(p.is_alive() for p in procs):
                    logger.error("a worker died; stopping the edge", extra=extra)
                    return 1
                await _first(drain, now, 0.5)
            if not now.is_set():
                why = "SIGTERM" if terms else "asked by the origin"
                logger.info("draining (%s)", why, extra=extra)
                if not await link.farewell():
                    logger.warning(
                        "could not tell the origin that this edge drains",
                        extra=extra,
                    )
                _signal(procs, signal.SIGTERM)
                await _stopped(procs, config.drain_timeout_s, now, read_reports)
            if now.is_set():
                _signal(procs, signal.SIGINT)
                await _stopped(procs, 0.0, asyncio.Event(), read_reports)
        finally:
            await link.stop()
    return 0


async def _first(drain: asyncio.Event, now: asyncio.Event, timeout: float) -> None:
    """Return when either event is set, or after ``timeout`` seconds."""
    waiters = [asyncio.ensure_future(e.wait()) for e in (drain, now)]
    try:
        await asyncio.wait(
            waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        for waiter in waiters:
            waiter.cancel()


def _signal(procs: Sequence[BaseProcess], signum: int) -> None:
    for proc in procs:
        if proc.is_alive() and proc.pid is not None:
            os.kill(proc.pid, signum)


async def _stopped(
    procs: Sequence[BaseProcess],
    drain_s: float,
    now: asyncio.Event,
    read_reports: Callable[[], None],
) -> None:
    """Wait until every worker exited, ``now`` is set, or the workers'
    drain and stop times are up; reading their reports meanwhile."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + drain_s + STOP_TIMEOUT_S
    while any(p.is_alive() for p in procs) and loop.time() < deadline:
        read_reports()
        if now.is_set():
            return
        await asyncio.sleep(0.1)


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
    run_loop(_serve_worker(replace(config, worker=index), index, reports), loop)


async def _serve_worker(
    config: EdgeConfig, index: int, reports: multiprocessing.Queue[Report | None]
) -> None:
    from liveclass.edge_node.app import run_edge

    runner = await run_edge(config, reuse_port=True)
    reporter = asyncio.create_task(_report(runner.node, index, reports))
    try:
        # SIGTERM from the parent drains this worker's members; SIGINT stops.
        await runner.serve()
    finally:
        reporter.cancel()
        try:
            await reporter
        except asyncio.CancelledError:
            pass


async def _report(
    node: EdgeNode, index: int, reports: multiprocessing.Queue[Report | None]
) -> None:
    """Tell the parent this worker's load, twice a heartbeat period."""
    while True:
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
        await asyncio.sleep(node.config.heartbeat_s / 2)
