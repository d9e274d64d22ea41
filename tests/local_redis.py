"""A Redis server of the test's own, for tests that break the class log.

The shared Redis on port 6379 must never be paused or stopped; a test that
needs Redis to go away starts a :class:`LocalRedis` from the ``redis-server``
binary, on a free loopback port, with its data in a folder of the test's,
and pauses, resumes, shuts down or restarts it at will.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis
import redis.exceptions
from redis.backoff import NoBackoff
from redis.retry import Retry

START_WAIT_S = 20.0


class RedisUnavailable(RuntimeError):
    """The ``redis-server`` binary is missing."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalRedis:
    """One ``redis-server`` with append-only persistence in ``folder``:
    ``--save ""`` (no snapshots), ``--appendonly yes``, ``appendfsync
    everysec``. It keeps its port and folder across restarts."""

    def __init__(self, folder: Path) -> None:
        server = shutil.which("redis-server")
        if server is None:
            raise RedisUnavailable("redis-server is not installed")
        self.server = server
        self.folder = folder
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False

    @property
    def url(self) -> str:
        """The class-log URL of this server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server (again: same port, same data) and wait for it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                self.server,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--dir",
                str(self.folder),
                "--logfile",
                str(self.folder / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # A session of its own: should the shell that started pytest exit
            # while the server is paused, the kernel would continue every
            # stopped process of pytest's orphaned process group (SIGHUP,
            # which Redis ignores, then SIGCONT), ending the outage early.
            start_new_session=True,
        )
        client = redis.Redis(port=self.port, socket_timeout=1)
        deadline = time.monotonic() + START_WAIT_S
        try:
            while True:
                try:
                    if client.ping():
                        return
                except redis.exceptions.BusyLoadingError:
                    pass  # reading its append-only file
                except redis.exceptions.ConnectionError:
                    if self.proc.poll() is not None:
                        raise RuntimeError(self._failure("exited")) from None
                if time.monotonic() > deadline:
                    raise RuntimeError(self._failure("did not answer"))
                time.sleep(0.05)
        finally:
            client.close()

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open, nothing is
        answered, as with a host that stopped responding."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        """Let a paused server go on (SIGCONT)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)
        self.paused = False

    def shutdown(self) -> None:
        """Stop the server cleanly (SHUTDOWN: the append-only file is
        flushed to disk first) and wait for it to exit."""
        assert self.proc is not None
        # No retry: the client would take the closed connection for a
        # failure and try again, for seconds, against a server gone.
        client = redis.Redis(
            port=self.port, socket_timeout=5, retry=Retry(NoBackoff(), 0)
        )
        try:
            client.shutdown()
        except redis.exceptions.ConnectionError:
            pass  # the server closes the connection as it goes
        finally:
            client.close()
        self.proc.wait(timeout=20)
        self.proc = None

    def destroy(self) -> None:
        """Stop the server however it is (paused included)."""
        if self.proc is None:
            return
        if self.paused:
            self.resume()
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.proc = None

    def _failure(self, what: str) -> str:
        log = self.folder / "redis.log"
        text = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        return f"redis-server on port {self.port} {what}:\n{text}"
