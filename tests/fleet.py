"""Start ``liveclass origin`` and ``liveclass edge`` as separate processes.

A :class:`Fleet` owns every process it starts and stops them all in
:meth:`Fleet.stop` (SIGTERM, then SIGKILL after a grace period), so a test
that fails half-way leaves nothing running. Each process logs to a file in
the test's ``tmp_path``; failures quote it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

LIVECLASS = str(Path(sys.executable).with_name("liveclass"))
API_KEY = "admin-secret"
EDGE_KEY = "edge-secret"
HEALTHY_WAIT_S = 30.0


def free_port() -> int:
    """A loopback TCP port that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def spawn(args: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """Run ``liveclass <args>``, appending its output to ``log_path``."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [LIVECLASS, "--log-level", "INFO", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            # A process stuck on the way out dumps its threads on SIGABRT.
            env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"},
        )


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Return once ``url/healthz`` answers 200; fail the test with the log
    if the process exits or stays unhealthy for :data:`HEALTHY_WAIT_S`."""
    deadline = time.monotonic() + HEALTHY_WAIT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{url} exited {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"{url} not healthy in {HEALTHY_WAIT_S:.0f} s:\n{log.read_text()}")


def dump_and_kill(proc: subprocess.Popen[bytes]) -> None:
    """Make a stuck process dump its threads into its log (SIGABRT, with
    faulthandler on), then SIGKILL it if it still runs."""
    proc.send_signal(signal.SIGABRT)
    try:
        proc.wait(timeout=2)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@dataclass
class Proc:
    """One process of the fleet and the file it logs to."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path


@dataclass
class Fleet:
    """An origin and edges in separate processes that share one Redis."""

    tmp_path: Path
    redis_url: str
    database_url: str = ""
    """The origin's store; empty for a SQLite file in ``tmp_path``."""
    log_retention: int | None = None
    """Entries the class log keeps per class, given to the origin and every
    edge; None for the default."""
    origin_port: int = field(default_factory=free_port)
    procs: dict[str, Proc] = field(default_factory=dict)
    edges: dict[str, str] = field(default_factory=dict)

    @property
    def origin_url(self) -> str:
        """The origin's base URL."""
        return f"http://127.0.0.1:{self.origin_port}"

    def start_origin(self) -> None:
        """Start the origin (again, after a stop: same port, key and store)."""
        args = [
            "origin",
            "--port",
            str(self.origin_port),
            "--api-key",
            API_KEY,
            "--edge-key",
            EDGE_KEY,
            "--redis-url",
            self.redis_url,
            "--database-url",
            self.database_url or f"sqlite+aiosqlite:///{self.tmp_path / 'origin.db'}",
            "--key-file",
            str(self.tmp_path / "key.pem"),
            *self._retention_args(),
        ]
        self._start("origin", args, self.origin_url)

    def _retention_args(self) -> list[str]:
        if self.log_retention is None:
            return []
        return ["--log-retention", str(self.log_retention)]

    def start_edge(
        self,
        edge_id: str,
        latitude: float | None = None,
        longitude: float = 0.0,
        *,
        capacity: int | None = None,
        transcode: bool = False,
        drain_timeout: float | None = None,
    ) -> str:
        """Start an edge; returns its base URL. With ``latitude``, the edge
        registers a location, so the origin ranks it without GeoIP; with
        ``capacity``, it takes at most that many members; ``drain_timeout``
        bounds its drain (SIGTERM, or the origin's request)."""
        port = free_port()
        args = [
            "edge",
            "--edge-id",
            edge_id,
            "--port",
            str(port),
            "--origin-url",
            self.origin_url,
            "--edge-key",
            EDGE_KEY,
            "--redis-url",
            self.redis_url,
            "--data-dir",
            str(self.tmp_path / edge_id),
            *self._retention_args(),
        ]
        if capacity is not None:
            args += ["--capacity", str(capacity)]
        if drain_timeout is not None:
            args += ["--drain-timeout", str(drain_timeout)]
        if not transcode:
            args.append("--no-transcode")
        if latitude is not None:
            args += ["--latitude", str(latitude), "--longitude", str(longitude)]
        url = f"http://127.0.0.1:{port}"
        self._start(edge_id, args, url)
        self.edges[edge_id] = url
        self.wait_routable(edge_id)
        return url

    def wait_routable(self, edge_id: str, timeout_s: float = 20.0) -> None:
        """Wait until the origin lists ``edge_id`` as healthy: an edge
        serves before its first heartbeat reaches the origin, and until then
        routing does not offer it (a busy machine makes that gap long)."""
        deadline = time.monotonic() + timeout_s
        headers = {"Authorization": f"Bearer {API_KEY}"}
        while time.monotonic() < deadline:
            try:
                answer = httpx.get(
                    f"{self.origin_url}/v1/edges", headers=headers, timeout=5.0
                )
                edges = {e["edge_id"]: e for e in answer.json().get("edges", [])}
                if edges.get(edge_id, {}).get("healthy"):
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.05)
        raise AssertionError(f"the origin never listed {edge_id} as healthy")

    def _start(self, name: str, args: list[str], url: str) -> None:
        log = self.tmp_path / f"{name}.log"
        self.procs[name] = Proc(name, spawn(args, log), log)
        wait_healthy(url, self.procs[name].popen, log)

    def kill(self, name: str) -> None:
        """SIGKILL one process and reap it: a crash, nothing flushed."""
        proc = self.procs[name].popen
        proc.kill()
        proc.wait(timeout=10)

    def terminate(self, name: str, wait_s: float = 15.0) -> int:
        """SIGTERM one process and wait for it; returns its exit status.
        Fails the test (after a SIGKILL) if it does not stop in ``wait_s``."""
        proc = self.procs[name].popen
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            dump_and_kill(proc)
            pytest.fail(
                f"{name} did not stop on SIGTERM in {wait_s:.0f} s:\n"
                + self.log_text(name)[-6000:]
            )

    def log_text(self, name: str) -> str:
        """What one process has logged so far."""
        return self.procs[name].log.read_text(errors="replace")

    def stop(self) -> list[str]:
        """Stop every process still running: SIGTERM, then SIGKILL after
        15 s. Returns the names of those that needed the SIGKILL."""
        running = [p for p in self.procs.values() if p.popen.poll() is None]
        for proc in running:
            proc.popen.send_signal(signal.SIGTERM)
        stubborn = []
        deadline = time.monotonic() + 15
        for proc in running:
            try:
                proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                dump_and_kill(proc.popen)
                stubborn.append(proc.name)
        return stubborn
