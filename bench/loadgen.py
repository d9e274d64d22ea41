"""The load generator: one process, pinned to its own core, runs every phase.

Started by :mod:`bench.fanout` as ``python -m bench.loadgen CONFIG.json``;
prints one JSON object (the measurements) on its last line of output.
Progress goes to standard error.
"""

from __future__ import annotations

import asyncio
import json
import resource
import ssl
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.procstat import cpu_seconds, own_cpu_seconds, rss_kb, tree
from bench.report import percentile_ms
from bench.wsclient import Client, Stats, connect, marker
from liveclass.edge_node.workers import tune_gc

PHASES = ("join", "idle", "broadcast", "slow", "chat")
"""The scenarios, in the order they run."""


@dataclass
class GenConfig:
    """What the generator needs to know; written as JSON by the orchestrator.

    ``mode`` is ``plain`` (message in, same message out to all), ``socketio``
    or ``edge``; with ``cafile`` the clients speak TLS and trust that
    certificate. ``tokens`` are the students' join tokens (edge only),
    ``teacher_token`` the publisher's. ``server_pids`` are measured (memory,
    CPU); ``helper_pids`` (the edge's origin) only for CPU, apart.
    """

    host: str
    port: int
    mode: str
    clients: int
    server_pids: list[int]
    helper_pids: list[int] = field(default_factory=list)
    phases: list[str] = field(default_factory=lambda: list(PHASES))
    tokens: list[str] = field(default_factory=list)
    teacher_token: str = ""
    seconds: float = 10.0
    slow_seconds: float = 20.0
    rate: float = 20.0
    chat_rate: float = 100.0
    chat_senders: int = 200
    slow_share: float = 0.05
    slow_rcvbuf: int = 4096
    sample_every: int = 10
    join_window: int = 200
    text_chars: int = 100
    cafile: str | None = None


def _log(text: str) -> None:
    print(f"  [gen] {text}", file=sys.stderr, flush=True)


class Generator:
    """Holds the clients and runs the phases against one server."""

    def __init__(self, cfg: GenConfig) -> None:
        self.cfg = cfg
        self.clients: list[Client] = []
        self.publisher: Client | None = None
        self._narrow: set[int] = set()
        self.result: dict[str, Any] = {"config": _public(cfg)}
        self._tls = None
        if cfg.cafile:
            self._tls = ssl.create_default_context(cafile=cfg.cafile)

    # --- connecting ---------------------------------------------------------

    def _path(self, token: str) -> str:
        if self.cfg.mode == "edge":
            return f"/v1/ws?token={token}&v=1"
        if self.cfg.mode == "socketio":
            return "/socket.io/?EIO=4&transport=websocket"
        return "/"

    async def _connect(
        self, token: str, sampled: bool, rcvbuf: int | None = None
    ) -> Client | str:
        """Open one client and wait until the server has accepted it; why
        not, if it was refused (see :func:`~bench.wsclient.connect`)."""
        signal = {
            "edge": b'"type":"welcome"',
            "socketio": b"40{",
            "plain": b"",
        }[self.cfg.mode]
        client = Client(
            self._path(token),
            f"{self.cfg.host}:{self.cfg.port}",
            signal,
            sampled=sampled,
            chain=self.cfg.mode == "edge",
            eio=self.cfg.mode == "socketio",
        )
        error = await connect(
            client, self.cfg.host, self.cfg.port, rcvbuf=rcvbuf, tls=self._tls
        )
        return client if error is None else error

    def _text(self, phase: str, number: int) -> bytes:
        text = marker(phase, number)
        text += " " + "x" * max(0, self.cfg.text_chars - len(text) - 1)
        if self.cfg.mode == "edge":
            return json.dumps({"type": "chat.send", "text": text}).encode()
        if self.cfg.mode == "socketio":
            return b"42" + json.dumps(["msg", text]).encode()
        return text.encode()

    # --- phases -------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        """Run the configured phases; return the measurements."""
        cfg = self.cfg
        # A server may run worker processes: measure them all, from here on.
        cfg.server_pids = [p for pid in cfg.server_pids for p in tree(pid)]
        pids = cfg.server_pids
        cpu0 = cpu_seconds(pids)
        help0 = cpu_seconds(cfg.helper_pids)
        gen0 = own_cpu_seconds()
        started = time.monotonic()

        publisher = await self._connect(cfg.teacher_token, sampled=False)
        if isinstance(publisher, str):
            raise SystemExit(f"the publisher could not join: {publisher}")
        self.publisher = publisher
        publisher.own_stats = Stats()
        await asyncio.sleep(1.0)
        self.result["baseline_rss_kb"] = self._rss()

        await self._measure("join", self._join_storm)
        if "idle" in cfg.phases:
            await self._measure("idle", self._idle)
        if "broadcast" in cfg.phases:
            await self._measure("broadcast", lambda: self._fanout("b", cfg.rate))
        # The chat storm goes last: servers that cannot keep up with it
        # build a backlog of minutes, which would spoil any phase after it.
        if "slow" in cfg.phases:
            await self._measure("slow", self._slow)
        if "chat" in cfg.phases:
            await self._measure("chat", lambda: self._fanout("c", cfg.chat_rate))

        self.result["server_cpu_s"] = round(cpu_seconds(pids) - cpu0, 2)
        self.result["helper_cpu_s"] = round(cpu_seconds(cfg.helper_pids) - help0, 2)
        self.result["generator_cpu_s"] = round(own_cpu_seconds() - gen0, 2)
        self.result["wall_s"] = round(time.monotonic() - started, 1)
        for c in [*self.clients, publisher]:
            c.abort()
        return self.result

    async def _measure(self, name: str, body: Any) -> None:
        """Run one phase; add its server and generator CPU use."""
        pids = self.cfg.server_pids
        cpu0, gen0, t0 = cpu_seconds(pids), own_cpu_seconds(), time.monotonic()
        await self._settle()
        _log(f"{name}...")
        out: dict[str, Any] = await body()
        wall = time.monotonic() - t0
        out["wall_s"] = round(wall, 2)
        out["server_cpu_s"] = round(cpu_seconds(pids) - cpu0, 2)
        # A phase that polls without sleeping says how long it polled idle.
        used = own_cpu_seconds() - gen0 - out.get("generator_idle_s", 0.0)
        out["generator_cpu_pct"] = round(100 * used / wall, 1)
        self.result[name] = out
        _log(f"{name}: {out}")

    async def _settle(self) -> None:
        """Wait until the server is idle, so a phase does not pay for the
        backlog of the one before."""
        await wait_idle(self.cfg.server_pids)

    async def _join_storm(self) -> dict[str, Any]:
        cfg = self.cfg
        tokens = cfg.tokens or [""] * cfg.clients
        outcomes: list[Client | str] = ["not tried"] * cfg.clients
        numbers = iter(range(cfg.clients))

        # Every slow_share-th client may later be a slow reader: its small
        # receive buffer is set before it connects (see _slow).
        step = max(1, round(1 / cfg.slow_share))

        async def joiner() -> None:
            # join_window of these keep that many joins in flight: a task
            # per joiner rather than per client, less work for this process.
            for i in numbers:
                narrow = i % step == step // 2
                client = await self._connect(
                    tokens[i],
                    i % cfg.sample_every == 0,
                    cfg.slow_rcvbuf if narrow else None,
                )
                if narrow and isinstance(client, Client):
                    self._narrow.add(id(client))
                outcomes[i] = client

        cpu0, gen0 = cpu_seconds(self.cfg.server_pids), own_cpu_seconds()
        t0 = time.perf_counter()
        with BusyPolling() as polling:
            await asyncio.gather(*(joiner() for _ in range(cfg.join_window)))
        elapsed = time.perf_counter() - t0
        busy = {
            "storm_s": round(elapsed, 2),
            "server_busy_pct": round(
                100 * (cpu_seconds(self.cfg.server_pids) - cpu0) / elapsed, 1
            ),
            # Its CPU use less the time it polled with nothing to do.
            "generator_busy_pct": round(
                100 * (own_cpu_seconds() - gen0 - polling.idle_s) / elapsed, 1
            ),
            "generator_idle_s": round(polling.idle_s, 3),
        }
        self.clients = [c for c in outcomes if isinstance(c, Client)]
        failures = Counter(o for o in outcomes if isinstance(o, str))
        return {
            "joined": len(self.clients),
            "failed": sum(failures.values()),
            "failures": dict(failures.most_common(5)),
            "joins_per_s": round(len(self.clients) / elapsed, 1),
            **busy,
        }

    async def _idle(self) -> dict[str, Any]:
        # Let the server finish what the joins started (presence batches,
        # buffers) before reading its memory.
        await asyncio.sleep(3.0)
        rss = self._rss()
        base = self.result["baseline_rss_kb"]
        alive = self._alive()
        return {
            "rss_kb": rss,
            "connected": len(alive),
            "kb_per_connection": round((rss - base) / max(1, len(alive)), 2),
        }

    def _rss(self) -> int:
        """Resident memory of the measured server processes, in KiB."""
        return sum(rss_kb(p) for p in self.cfg.server_pids)

    def _alive(self, exclude: set[int] | None = None) -> list[Client]:
        skip = exclude or set()
        return [c for c in self.clients if not c.closed and id(c) not in skip]

    async def _fanout(
        self,
        phase: str,
        rate: float,
        seconds: float | None = None,
        slow: list[Client] | None = None,
    ) -> dict[str, Any]:
        """Send ``rate`` messages a second for ``seconds``; count deliveries.

        Phase ``b`` (and the slow phase ``s``) publishes from the teacher;
        phase ``c`` from ``chat_senders`` students in turn.
        """
        cfg = self.cfg
        seconds = seconds or cfg.seconds
        stats = Stats(phase)
        Client.stats = stats
        slow = slow or []
        slow_ids = {id(c) for c in slow}
        slow_stats = Stats(phase)
        for c in slow:
            c.own_stats = slow_stats
        receivers = self._alive(slow_ids)
        if phase == "c":
            step = max(1, len(receivers) // cfg.chat_senders)
            senders = receivers[::step][: cfg.chat_senders]
        else:
            assert self.publisher is not None
            senders = [self.publisher]

        total = int(rate * seconds)
        rss_peak = 0
        t0 = time.monotonic()
        for i in range(total):
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            senders[i % len(senders)].send_text(self._text(phase, i))
            if i % int(rate / 2 or 1) == 0:
                rss_peak = max(rss_peak, self._rss())
        sent_done = time.monotonic()

        expected = total * len(receivers)
        last_count, last_change = -1, sent_done
        drain_until = sent_done + max(5.0, seconds)
        while time.monotonic() < drain_until and stats.delivered < expected:
            await asyncio.sleep(0.05)
            if stats.delivered != last_count:
                last_count, last_change = stats.delivered, time.monotonic()
            elif time.monotonic() - last_change > 3.0:
                break
        rss_peak = max(rss_peak, self._rss())
        if stats.delivered >= expected:
            last_change = time.monotonic()
        Client.stats = Stats()

        lat = sorted(stats.latencies_ns)
        read = sorted(stats.read_latencies_ns)
        out: dict[str, Any] = {
            "sent": total,
            "senders": len(senders),
            "receivers": len(receivers),
            "expected": expected,
            "delivered": stats.delivered,
            "lost": max(0, expected - stats.delivered),
            "delivered_per_s": round(stats.delivered / (last_change - t0), 1),
            "p50_ms": percentile_ms(lat, 0.50),
            "p99_ms": percentile_ms(lat, 0.99),
            "read_p50_ms": percentile_ms(read, 0.50),
            "read_p99_ms": percentile_ms(read, 0.99),
            "latency_samples": len(lat),
            "closed_during": sum(1 for c in receivers if c.closed),
            "server_rss_peak_kb": rss_peak,
        }
        if self.cfg.mode == "edge":
            out["seq_gaps"] = stats.gaps
            out["refused_rate_limited"] = stats.refused
        if slow:
            out["slow_delivered_while_paused"] = slow_stats.delivered
        return out

    async def _slow(self) -> dict[str, Any]:
        cfg = self.cfg
        # A small receive buffer makes the kernel push back soon, so the
        # server sees a slow reader within the phase, not minutes later.
        slow = [c for c in self._alive() if id(c) in self._narrow]
        for c in slow:
            c.pause()
        out = await self._fanout("s", cfg.rate, cfg.slow_seconds, slow)
        # Read what the server kept for the slow ones: a close frame if it
        # closed them, else their backlog.
        for c in slow:
            c.resume()
        slow_stats = slow[0].own_stats if slow else None
        # Until their backlog stops coming: after a long zero window the
        # kernel may take seconds to notice that the readers read again.
        seen, still_since, until = -1, time.monotonic(), time.monotonic() + 20.0
        while slow_stats is not None and time.monotonic() < until:
            await asyncio.sleep(0.2)
            if slow_stats.delivered != seen:
                seen, still_since = slow_stats.delivered, time.monotonic()
            elif time.monotonic() - still_since > 5.0:
                break
        if slow_stats is not None:
            out["slow_delivered_by_end"] = slow_stats.delivered
            out["slow_expected"] = out["sent"] * len(slow)
            if cfg.mode == "edge":
                out["slow_seq_gaps"] = slow_stats.gaps
        codes = Counter(
            str(c.close_code) if c.close_code else "no close frame"
            for c in slow
            if c.closed
        )
        # Closed by the server, but the close frame is still queued behind
        # data the kernel has not let through yet: the TCP state says so.
        unread = sum(1 for c in slow if not c.closed and c.tcp_state() != 1)
        if unread:
            codes["closed, close frame not read"] = unread
        out["slow_clients"] = len(slow)
        out["slow_closed"] = sum(codes.values())
        out["slow_close_codes"] = dict(codes)
        out["server_rss_after_kb"] = self._rss()
        # The slow readers are dropped: whatever state the server left them
        # in, they must neither send nor count in the phases after this one.
        for c in slow:
            c.abort()
        retired = {id(c) for c in slow}
        self.clients = [c for c in self.clients if id(c) not in retired]
        return out


async def wait_idle(
    pids: list[int], limit_s: float = 60.0, quiet_cpu_s: float = 0.05
) -> None:
    """Return once ``pids`` used less than ``quiet_cpu_s`` of CPU in half a
    second, or after ``limit_s`` seconds."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        before = cpu_seconds(pids)
        await asyncio.sleep(0.5)
        if cpu_seconds(pids) - before < quiet_cpu_s:
            return


def _public(cfg: GenConfig) -> dict[str, Any]:
    # Tokens are credentials, even test ones: keep them out of the results.
    out = asdict(cfg)
    out.pop("tokens")
    out.pop("teacher_token")
    return out


def loop_factory() -> Any:
    """uvloop's loop factory when it is installed, else None (asyncio's).

    uvloop's read path is in C: several times less generator CPU per
    received frame, and that CPU is what limits the load one core offers.
    """
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


IDLE_TURN_S = 10e-6
"""A turn of the event loop this short found nothing to do (a poll of the
descriptors and the callback below, a few microseconds); any real work, such
as reading one answer and opening the next connection, takes longer."""


class BusyPolling:
    """Keep the running event loop from sleeping while the block runs, and
    count the time it spent polling idle.

    The join storm is a request and answer per client, so its rate depends
    on how fast each side wakes for the other. On one machine, a server's
    write to a sleeping generator also pays for waking the generator's core
    (an inter-processor interrupt, several microseconds in a VM): about a
    tenth of a join's server CPU, which clients on other machines never
    cost it. A callback that schedules itself again keeps the loop polling
    without a timeout, so the generator is awake when answers arrive.
    """

    def __init__(self) -> None:
        self.idle_s = 0.0
        """Time spent in turns of the loop that had nothing to do."""
        self._polling = False
        self._last = 0.0

    def __enter__(self) -> BusyPolling:
        self._polling = True
        self._last = time.perf_counter()
        asyncio.get_running_loop().call_soon(self._again)
        return self

    def __exit__(self, *exc: object) -> None:
        self._polling = False

    def _again(self) -> None:
        now = time.perf_counter()
        turn = now - self._last
        self._last = now
        if turn < IDLE_TURN_S:
            self.idle_s += turn
        if self._polling:
            asyncio.get_running_loop().call_soon(self._again)


def raise_nofile() -> None:
    """Raise the open-file limit to its hard limit: one descriptor a client."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main() -> None:
    """Entry point: ``python -m bench.loadgen CONFIG.json``."""
    with open(sys.argv[1]) as f:
        cfg = GenConfig(**json.load(f))
    raise_nofile()
    if cfg.clients + 100 > resource.getrlimit(resource.RLIMIT_NOFILE)[0]:
        raise SystemExit("open-file limit too low for that many clients")
    # The generator holds tens of thousands of objects per phase; left to
    # the interpreter's defaults, full collections over them stall it for
    # tens of milliseconds at a time, and the server under test goes idle.
    tune_gc()
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        result = runner.run(Generator(cfg).run())
    # Seen by the orchestrator: the last line is the result.
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
