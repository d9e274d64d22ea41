"""Reconciliation benchmark: one big class's poll over three edges, and what
it costs the origin.

``python -m bench.reconcile`` starts a Redis server of its own, a
``liveclass origin`` and three ``liveclass edge`` processes (all pinned to
one core), connects a teacher and ``--students`` students spread evenly
over the edges (:mod:`bench.pollgen`, on the other core), and plays a poll:
every student votes within ``--vote-seconds``, a third change their vote,
10% move to another edge in the middle, then the teacher closes it.

It prints whether the final tally is exact (at every student and in the
origin's report), the time from the close to the results at every student,
the messages the origin read from Redis and the Redis commands issued per
vote, and the origin's CPU time, against the goals; and writes the figures
as JSON under ``bench/results/``. Redis is watched from outside
(:mod:`bench.redisprobe`): nothing in the origin or the edges is changed
to be measured.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import secrets
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import servers
from bench.fanout import RESULTS, source_version
from bench.loadgen import loop_factory, raise_nofile, wait_idle
from bench.pollgen import PollScenario, ScenarioConfig
from bench.procstat import cpu_seconds, own_cpu_seconds, tree
from bench.reconcile_report import Goals, figures, table
from bench.redisprobe import Call, Group, Monitor, RedisProbe, owners
from bench.servers import Running, ServerFailed
from liveclass.sdk.admin import AdminClient

try:
    from liveclass.origin.reconcile import GROUP as ORIGIN_GROUP
except ImportError:  # an origin that reads the class log by number alone
    ORIGIN_GROUP = "origin"

EDGES = 3
SHARED_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"


def _log(text: str) -> None:
    print(f"  [reconcile] {text}", file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    """The command's flags."""
    p = argparse.ArgumentParser(prog="python -m bench.reconcile", description=__doc__)
    p.add_argument("--students", type=int, default=10_000, help="default 10000")
    p.add_argument(
        "--vote-seconds",
        type=float,
        default=5.0,
        help="every vote, changes included, is planned within this time; a "
        "student moving to another edge sends its votes once it has resumed",
    )
    p.add_argument("--seed", type=int, default=1, help="draws who does what when")
    p.add_argument(
        "--database-url",
        default=None,
        help="the origin's database (SQLAlchemy URL, e.g. "
        "sqlite+aiosqlite:///origin.db); default: a fresh database on the "
        "PostgreSQL at --postgres, dropped after the run",
    )
    p.add_argument(
        "--postgres",
        default=SHARED_POSTGRES,
        help="PostgreSQL server where the fresh database is made (as a client)",
    )
    p.add_argument(
        "--server-core", type=int, default=None, help="default: first allowed core"
    )
    p.add_argument(
        "--generator-core",
        type=int,
        default=None,
        help="default: second allowed core (the same one on a single-core host)",
    )
    p.add_argument("--out", type=Path, default=None, help="JSON results file")
    return p


# --- the servers -------------------------------------------------------------


@dataclass
class Fleet:
    """Redis, the origin and the edges, and what the run needs of them."""

    running: Running
    redis_port: int
    origin_port: int
    api_key: str
    edge_ports: list[int]
    pids: dict[str, int]
    """Process name (``redis``, ``origin``, ``edge-1``...) to pid."""
    class_id: str = ""
    teacher: str = ""
    students: list[str] | None = None

    @property
    def redis_url(self) -> str:
        """The class log's URL."""
        return f"redis://127.0.0.1:{self.redis_port}/0"


def start_fleet(
    cores: set[int], students: int, database_url: str, logdir: Path
) -> Fleet:
    """Start Redis, the origin and the edges, pinned to ``cores``; create the
    class and mint its tokens. Raises :class:`ServerFailed`."""
    redis = servers.start_redis(cores, logdir)
    work = redis.workdir
    assert work is not None
    running = Running("fleet", 0, "edge", list(redis.procs), list(redis.logs))
    running.workdir = work
    api_key, edge_key = secrets.token_hex(16), secrets.token_hex(16)
    redis_url = f"redis://127.0.0.1:{redis.port}/0"
    try:
        origin_port = servers.free_port()
        log = logdir / "origin.log"
        argv = servers.origin_argv(
            origin_port, api_key, edge_key, database_url, work / "keys.pem", redis_url
        )
        running.procs.append(servers.spawn(argv, cores, log))
        running.logs.append(log)
        servers.wait_port(origin_port, running.procs[-1], log)

        edge_ports = [servers.free_port() for _ in range(EDGES)]
        for n, port in enumerate(edge_ports, 1):
            argv = servers.edge_argv(
                port, origin_port, edge_key, work / f"edge-{n}", students
            )
            argv += [f"--edge-id=edge-{n}", f"--redis-url={redis_url}"]
            # Stopping is a drain; the members are gone by then.
            argv += ["--drain-timeout=2"]
            log = logdir / f"edge-{n}.log"
            running.procs.append(servers.spawn(argv, cores, log))
            running.logs.append(log)
        for n, port in enumerate(edge_ports):
            servers.wait_port(port, running.procs[2 + n], running.logs[2 + n])
        minted = servers.mint(origin_port, api_key, students)
    except BaseException:
        running.stop()
        raise
    names = ["redis", "origin", *(f"edge-{n}" for n in range(1, EDGES + 1))]
    return Fleet(
        running=running,
        redis_port=redis.port,
        origin_port=origin_port,
        api_key=api_key,
        edge_ports=edge_ports,
        pids={name: p.pid for name, p in zip(names, running.procs, strict=True)},
        class_id=minted.class_id,
        teacher=minted.teacher,
        students=minted.students,
    )


# --- measuring -------------------------------------------------------------


@dataclass
class Mark:
    """The counters at one moment: the bounds of a measured window."""

    at: float
    head: int
    group: Group | None
    commands: int
    calls: Counter[Call]
    cpu: dict[str, float]
    clients: dict[str, str]
    """Redis client address to process name, as found then."""


class Meter:
    """Takes :class:`Mark` readings of Redis and of the processes."""

    def __init__(self, fleet: Fleet, probe: RedisProbe, monitor: Monitor) -> None:
        self.fleet = fleet
        self.probe = probe
        self.monitor = monitor
        self._marks = 0

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far: each server process, and this one."""
        out = {n: cpu_seconds(tree(pid)) for n, pid in self.fleet.pids.items()}
        out["generator"] = own_cpu_seconds()
        return out

    async def mark(self) -> Mark:
        """Read every counter; the monitor is read once it has seen every
        command run before this moment."""
        self._marks += 1
        token = f"bench-mark-{self._marks}"
        seen = self.monitor.expect(token)
        commands = await self.probe.commands()
        await self.probe.echo(token)
        async with asyncio.timeout(10.0):
            await seen
        processes = {"bench": os.getpid(), **self.fleet.pids}
        return Mark(
            at=time.monotonic(),
            head=await self.probe.head(),
            group=await self.probe.group(ORIGIN_GROUP),
            commands=commands,
            calls=Counter(self.monitor.calls),
            cpu=self.cpu(),
            clients=owners(processes, self.fleet.redis_port),
        )

    async def stored(self, seq: int, limit_s: float) -> bool:
        """Wait until the origin has stored and acknowledged every entry up
        to ``seq``; False if it did not within ``limit_s`` (or the origin
        reads without a consumer group, so it cannot be seen from here)."""
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            group = await self.probe.group(ORIGIN_GROUP)
            if group is None:
                return False
            if group.last_delivered >= seq and group.pending == 0:
                return True
            await asyncio.sleep(0.02)
        return False


async def run(args: argparse.Namespace, fleet: Fleet) -> dict[str, Any]:
    """Join, settle, play the poll; return every measurement."""
    assert fleet.students is not None
    probe = RedisProbe(fleet.redis_url, fleet.class_id)
    monitor = await Monitor.open("127.0.0.1", fleet.redis_port, f"{{{fleet.class_id}}}")
    meter = Meter(fleet, probe, monitor)
    cfg = ScenarioConfig(
        edge_ports=fleet.edge_ports, vote_s=args.vote_seconds, seed=args.seed
    )
    scenario = PollScenario(cfg, fleet.teacher, fleet.students)
    admin = AdminClient(f"http://127.0.0.1:{fleet.origin_port}", fleet.api_key)
    servers_pids = [p for pid in fleet.pids.values() for p in tree(pid)]
    try:
        _log(f"joining {len(fleet.students)} students over {EDGES} edges...")
        cpu0 = meter.cpu()
        join = await scenario.join()
        join["cpu_s"] = _delta(cpu0, meter.cpu())
        _log(f"joined: {join}")

        _log("waiting for the origin to store the joins and the servers to idle...")
        join["stored"] = await meter.stored(await probe.head(), 120.0)
        await wait_idle(servers_pids, limit_s=60.0, quiet_cpu_s=0.1)

        _log("poll: open, votes, changes, moves, close...")
        before = await meter.mark()
        poll = await scenario.poll()
        _log(f"results at the students: {_brief(poll)}")
        stored = False
        if poll["close_seq"] is not None:
            stored = await meter.stored(poll["close_seq"], 60.0)
        since_close_ms = (time.time_ns() - poll["close_ns"]) / 1e6
        poll["origin_stored_ms"] = round(since_close_ms, 1) if stored else None
        after = await meter.mark()
        entries = await probe.entries(before.head, after.head)
        origin_poll = await _stored_poll(admin, fleet.class_id, poll["poll_id"])
        return figures(
            join=join,
            poll=poll,
            before=before,
            after=after,
            entries=entries,
            origin_poll=origin_poll,
            group_seen=before.group is not None,
        )
    finally:
        scenario.abort()
        monitor.close()
        try:
            await admin.end_class(fleet.class_id)
        except Exception as exc:  # the figures matter more than the cleanup
            _log(f"could not end the class: {exc}")
        await admin.aclose()
        await probe.close()


async def _stored_poll(
    admin: AdminClient, class_id: str, poll_id: str, limit_s: float = 30.0
) -> dict[str, Any] | None:
    """The poll as the origin's report has it, once closed there; as it
    is after ``limit_s`` otherwise (the origin's progress could not be seen
    in Redis, or it is behind)."""
    deadline = time.monotonic() + limit_s
    while True:
        report = await admin.report(class_id)
        found = next((p for p in report.polls if p.get("poll_id") == poll_id), None)
        if (found and found.get("counts") is not None) or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.5)


def _delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: round(after[k] - before[k], 2) for k in before}


def _brief(poll: dict[str, Any]) -> str:
    keys = ("votes_sent", "moved", "results_received", "results_exact", "p99_ms")
    return ", ".join(f"{k} {poll[k]}" for k in keys)


# --- the database ------------------------------------------------------------


async def _postgres(server_url: str, statement: str) -> None:
    # asyncpg comes with the origin's PostgreSQL support.
    import asyncpg

    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def make_database(server_url: str, name: str) -> str:
    """Create database ``name`` on the PostgreSQL at ``server_url``; its
    SQLAlchemy URL. A database of the run's own: live classes that other
    users left in a shared one would each get a reconciler of their own in
    the origin, reading Redis alongside the measured one."""
    asyncio.run(_postgres(server_url, f'CREATE DATABASE "{name}"'))
    base = server_url.rsplit("/", 1)[0]
    return base.replace("postgresql://", "postgresql+asyncpg://", 1) + f"/{name}"


def drop_database(server_url: str, name: str) -> None:
    """Drop database ``name`` made by :func:`make_database`."""
    asyncio.run(_postgres(server_url, f'DROP DATABASE IF EXISTS "{name}"'))


# --- the command -------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table; write the JSON. Exit 1 when it
    could not be measured (a server did not start, students were refused)."""
    args = build_parser().parse_args(argv)
    cores = sorted(os.sched_getaffinity(0))
    server_core = cores[0] if args.server_core is None else args.server_core
    gen_core = args.generator_core
    if gen_core is None:
        gen_core = cores[1] if len(cores) > 1 else cores[0]
    if {server_core, gen_core} - set(cores):
        build_parser().error(f"cores must be among {cores}")
    # The generator runs in this process: off the servers' core.
    os.sched_setaffinity(0, {gen_core})
    raise_nofile()

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    logdir = RESULTS / f"logs-reconcile-{stamp}"
    logdir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    version = source_version("edge_node", "origin")
    database, own_db = args.database_url, None
    if database is None:
        own_db = f"liveclass_bench_{stamp.replace('-', '_')}_{os.getpid()}"
        database = make_database(args.postgres, own_db)
    fleet: Fleet | None = None
    try:
        _log(f"starting redis, the origin and {EDGES} edges on core {server_core}")
        fleet = start_fleet({server_core}, args.students, database, logdir)
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            result = runner.run(run(args, fleet))
    except (ServerFailed, OSError, RuntimeError) as exc:
        print(f"could not run: {exc}", file=sys.stderr)
        return 1
    finally:
        if fleet is not None:
            fleet.running.stop()
        if own_db is not None:
            drop_database(args.postgres, own_db)

    where = (
        f"servers (redis, origin, {EDGES} edges) on core {server_core}, "
        f"generator on core {gen_core}"
    )
    db_kind = "PostgreSQL" if database.startswith("postgresql") else "SQLite"
    report = {
        "started": datetime.datetime.fromtimestamp(started).isoformat(),
        "version": version,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "kernel": platform.release(),
        },
        "args": {k: str(v) for k, v in vars(args).items()},
        "setup": {"where": where, "database": db_kind, "edges": EDGES},
        "goal_values": asdict(Goals()),
        **result,
    }
    out = args.out or RESULTS / f"reconcile-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))

    print(
        f"reconcile: {args.students} students over {EDGES} edges in one class, "
        f"edge and origin {version}\n{where}; database {db_kind}; "
        "class log on a Redis of its own"
    )
    print(table(result))
    if result["origin_stored"] is None or result["poll"]["origin_stored_ms"] is None:
        print(f"\nthe origin did not store the closed poll: see {logdir}/origin.log")
    print(f"\nJSON: {out}; server logs: {logdir}")
    poll = result["poll"]
    return 0 if poll["joined"] == args.students else 1


if __name__ == "__main__":
    sys.exit(main())
