"""Fan-out benchmark: the liveclass edge and its peers under one load generator.

``python -m bench.fanout`` starts each server in turn pinned to one core,
runs the load generator (:mod:`bench.loadgen`) pinned to the other, and
prints one table: joins/s, memory per connection, broadcast and chat-storm
delivery rates with p50/p99 latency and losses, slow-reader behaviour and
server CPU, each also as a ratio to the edge. Results are also written as
JSON under ``bench/results/``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import servers
from bench.loadgen import PHASES, GenConfig
from bench.report import table
from bench.servers import ALL, ROOT, ServerFailed, node_available, pinned

RESULTS = Path(__file__).resolve().parent / "results"


def build_parser() -> argparse.ArgumentParser:
    """The command's flags."""
    p = argparse.ArgumentParser(prog="python -m bench.fanout", description=__doc__)
    p.add_argument(
        "--servers",
        default=",".join(ALL),
        help=f"comma-separated, from {','.join(ALL)} (default: all; node-ws "
        "only where node and npm exist)",
    )
    p.add_argument(
        "--phases",
        default=",".join(PHASES),
        help=f"comma-separated, from {','.join(PHASES)} (join always runs)",
    )
    p.add_argument("--clients", type=int, default=10_000, help="WebSocket clients")
    p.add_argument("--seconds", type=float, default=10.0, help="broadcast and chat")
    p.add_argument(
        "--slow-seconds",
        type=float,
        default=None,
        help="slow-reader phase (default: twice --seconds, so bounded send "
        "queues fill within it)",
    )
    p.add_argument(
        "--join-window",
        type=int,
        default=GenConfig.join_window,
        help="joins in flight at once during the join storm",
    )
    p.add_argument("--rate", type=float, default=20.0, help="teacher msgs/s")
    p.add_argument("--chat-rate", type=float, default=100.0, help="chat msgs/s")
    p.add_argument(
        "--chat-senders",
        type=int,
        default=200,
        help="students sharing the chat load (default 200: 0.5 msg/s each, "
        "the edge's sustained chat limit of 5 per 10 s)",
    )
    p.add_argument(
        "--edge-arg",
        action="append",
        default=[],
        help="extra flag for `liveclass edge`, e.g. --edge-arg=--loop=asyncio "
        "(repeatable)",
    )
    p.add_argument(
        "--server-core", type=int, default=None, help="default: first allowed core"
    )
    p.add_argument(
        "--edge-workers",
        type=int,
        default=1,
        help="run the edge as `liveclass edge --workers N` on Redis (--redis-url), "
        "on every core, the generator's included (default 1: one process on "
        "--server-core)",
    )
    p.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379/0",
        help="the class log of a multi-worker edge",
    )
    p.add_argument(
        "--generator-core",
        type=int,
        default=None,
        help="default: second allowed core (the same one on a single-core host)",
    )
    p.add_argument("--out", type=Path, default=None, help="JSON results file")
    return p


def source_version(*folders: str) -> str:
    """The commit that last touched ``folders`` (default: edge_node/), and
    whether they have local changes: the code may be rewritten between
    runs."""
    folders = folders or ("edge_node",)
    try:
        commit = subprocess.run(
            ["git", "log", "-1", "--format=%h %cI", "--", *folders],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", *folders],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + (" + uncommitted changes" if dirty else "")


def run_one(
    name: str, args: argparse.Namespace, phases: list[str], logdir: Path
) -> dict[str, Any]:
    """Start one server, run the generator against it, stop it."""
    print(f"== {name}", file=sys.stderr, flush=True)
    try:
        cores = {args.server_core}
        edge_args = list(args.edge_arg)
        if name.startswith("edge") and args.edge_workers > 1:
            cores = set(os.sched_getaffinity(0)) | {args.server_core}
            edge_args += [
                f"--workers={args.edge_workers}",
                f"--redis-url={args.redis_url}",
            ]
        running = servers.start(name, cores, args.clients, logdir, edge_args)
    except (ServerFailed, OSError, subprocess.SubprocessError) as exc:
        return {"error": f"did not start: {exc}"[:400]}
    try:
        cfg = GenConfig(
            host="127.0.0.1",
            port=running.port,
            mode=running.mode,
            clients=args.clients,
            server_pids=running.pids,
            helper_pids=running.helper_pids,
            phases=phases,
            tokens=running.tokens,
            teacher_token=running.teacher_token,
            seconds=args.seconds,
            slow_seconds=args.slow_seconds or 2 * args.seconds,
            rate=args.rate,
            chat_rate=args.chat_rate,
            chat_senders=args.chat_senders,
            join_window=args.join_window,
            cafile=running.cafile,
        )
        # The config holds join tokens: a private temporary file, removed after.
        with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
            json.dump(asdict(cfg), f)
            f.flush()
            budget = 120 + 3 * (args.seconds * 2 + cfg.slow_seconds) + args.clients / 50
            proc = subprocess.run(
                [sys.executable, "-m", "bench.loadgen", f.name],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=None,
                preexec_fn=pinned({args.generator_core}),
                timeout=budget,
                check=False,
            )
        lines = proc.stdout.decode(errors="replace").strip().splitlines()
        if proc.returncode != 0 or not lines:
            return {"error": f"generator exited with {proc.returncode}"}
        result: dict[str, Any] = json.loads(lines[-1])
        result["server_pids"] = running.pids
        return result
    except subprocess.TimeoutExpired:
        return {"error": "generator timed out"}
    finally:
        running.stop()


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table; write the JSON. Exit 1 when a
    server failed."""
    args = build_parser().parse_args(argv)
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    unknown = [n for n in names if n not in ALL]
    if unknown:
        build_parser().error(f"unknown server(s): {', '.join(unknown)}")
    if "node-ws" in names and not node_available():
        print("node or npm missing: skipping node-ws", file=sys.stderr)
        names.remove("node-ws")
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    cores = sorted(os.sched_getaffinity(0))
    if args.server_core is None:
        args.server_core = cores[0]
    if args.generator_core is None:
        args.generator_core = cores[1] if len(cores) > 1 else cores[0]
    if {args.server_core, args.generator_core} - set(cores):
        build_parser().error(f"cores must be among {cores}")
    # The orchestrator mostly waits; it stays off the server's core.
    os.sched_setaffinity(0, {args.generator_core})

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    logdir = RESULTS / f"logs-{stamp}"
    logdir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    # Read before the run: the edge may be committed to while it goes on.
    version = source_version()
    results = {name: run_one(name, args, phases, logdir) for name in names}

    report = {
        "started": datetime.datetime.fromtimestamp(started).isoformat(),
        "edge_version": version,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "kernel": platform.release(),
        },
        "args": {k: str(v) for k, v in vars(args).items()},
        "servers": results,
    }
    out = args.out or RESULTS / f"fanout-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))

    where = f"server on core {args.server_core}"
    if args.edge_workers > 1:
        where = f"edge: {args.edge_workers} workers on every core, the others"
        where += f" on core {args.server_core}"
    print(
        f"fan-out, {args.clients} clients, edge {report['edge_version']}, "
        f"{where}, generator on core {args.generator_core}"
    )
    slow_s = args.slow_seconds or 2 * args.seconds
    legend = (
        f"bcast: one publisher, {args.rate:g} msg/s to all, {args.seconds:g} s; "
        f"chat: {args.chat_rate:g} msg/s from {args.chat_senders} clients;\n"
        f"slow: bcast for {slow_s:g} s while 5% stop reading (p99 of the others); "
        "p50/p99: send to arrival in the client's socket (kernel receive time), "
        "ms;\nlost: not received within max(5 s, "
        "phase length) after the last send; KB/conn: RSS growth / clients;\n"
        "edge-tls: the edge terminating TLS itself (P-256 certificate), timed "
        "when the generator read (the others: TLS ends in front of the server)"
    )
    print(table(results, legend))
    print(f"\nJSON: {out}")
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
