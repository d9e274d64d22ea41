"""A real three-node Redis Cluster on loopback, started from the
``redis-server`` binary for the tests that need one."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


def _free_port() -> int:
    # Cluster nodes also listen on port + 10000 (the cluster bus).
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port + 10000 < 65536:
            return port


class LocalCluster:
    """Three masters, no replicas, each in its own folder under ``root``.

    With ``persistent``, nodes keep an append-only file, and :meth:`start`
    after :meth:`shutdown` brings the same cluster back with its data (the
    nodes find each other again from their ``nodes.conf``).
    """

    def __init__(self, root: Path, nodes: int = 3, persistent: bool = False) -> None:
        self.root = root
        self.ports = [_free_port() for _ in range(nodes)]
        self.procs: list[subprocess.Popen[bytes]] = []
        self.persistent = persistent
        self.paused = False
        self._created = False

    @property
    def url(self) -> str:
        """The class-log URL naming the first node."""
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def start(self) -> None:
        """Start the nodes, join them into a cluster, wait until it is ok."""
        server = shutil.which("redis-server")
        cli = shutil.which("redis-cli")
        if server is None or cli is None:
            raise FileNotFoundError("redis-server and redis-cli are needed")
        self.procs = []
        for port in self.ports:
            folder = self.root / str(port)
            folder.mkdir(parents=True, exist_ok=True)
            self.procs.append(
                subprocess.Popen(
                    [
                        server,
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        str(folder / "nodes.conf"),
                        "--save",
                        "",
                        "--appendonly",
                        "yes" if self.persistent else "no",
                        "--dir",
                        str(folder),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    # Out of pytest's process group, so that nothing but
                    # resume() continues a paused node (see LocalRedis.start).
                    start_new_session=True,
                )
            )
        for port in self.ports:
            self._wait(cli, port, "PING", "PONG")
        if self._created:
            # Restarted: the nodes rejoin from their nodes.conf.
            for port in self.ports:
                self._wait(cli, port, "CLUSTER INFO", "cluster_state:ok")
            return
        self._created = True
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in self.ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
        )
        for port in self.ports:
            self._wait(cli, port, "CLUSTER INFO", "cluster_state:ok")

    def pause(self) -> None:
        """Freeze every node (SIGSTOP): connections stay open, nothing is
        answered."""
        for proc in self.procs:
            os.kill(proc.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        """Let paused nodes go on (SIGCONT)."""
        for proc in self.procs:
            os.kill(proc.pid, signal.SIGCONT)
        self.paused = False

    def shutdown(self) -> None:
        """Stop every node cleanly (SHUTDOWN writes the append-only file
        out first) and wait for them to exit."""
        cli = shutil.which("redis-cli")
        assert cli is not None
        for port in self.ports:
            subprocess.run(
                [cli, "-p", str(port), "SHUTDOWN"], capture_output=True, timeout=20
            )
        for proc in self.procs:
            proc.wait(timeout=20)
        self.procs = []

    def destroy(self) -> None:
        """Stop every node however it is (paused included)."""
        if self.paused:
            self.resume()
        for proc in self.procs:
            proc.kill()
            proc.wait(timeout=10)
        self.procs = []

    def stop(self) -> None:
        """Stop every node."""
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()

    @staticmethod
    def _wait(cli: str, port: int, command: str, expect: str) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            out = subprocess.run(
                [cli, "-p", str(port), *command.split()],
                capture_output=True,
                text=True,
            ).stdout
            if expect in out:
                return
            time.sleep(0.1)
        raise TimeoutError(f"redis node {port}: no {expect!r} after 20 s")
