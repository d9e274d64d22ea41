"""A real three-node Redis Cluster on loopback, started from the
``redis-server`` binary for the tests that need one."""

from __future__ import annotations

import shutil
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
    """Three masters, no replicas, each in its own folder under ``root``."""

    def __init__(self, root: Path, nodes: int = 3) -> None:
        self.root = root
        self.ports = [_free_port() for _ in range(nodes)]
        self.procs: list[subprocess.Popen[bytes]] = []

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
        for port in self.ports:
            folder = self.root / str(port)
            folder.mkdir(parents=True)
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
                        "no",
                        "--dir",
                        str(folder),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for port in self.ports:
            self._wait(cli, port, "PING", "PONG")
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
