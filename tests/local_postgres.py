"""A PostgreSQL server of the test's own, for tests that break the database.

The shared PostgreSQL on port 5432 must never be stopped; a test that needs
the database to go away starts a :class:`LocalPostgres` from the installed
binaries (``initdb``, ``pg_ctl``), on a free loopback port, with its data in
a temporary folder, and stops or restarts it at will.

PostgreSQL refuses to run as root. Under root the server runs as the
``postgres`` system user (through ``runuser``), and the folder is given to
that user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

BINDIR_ENV = "LIVECLASS_TEST_PG_BINDIR"
"""Set to the folder holding ``initdb`` and ``pg_ctl`` to pick a version."""

SERVER_USER = "postgres"
"""Who runs the server when the tests run as root."""


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server binaries, or a user to run them as, are missing."""


def find_bindir() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl``: :data:`BINDIR_ENV`, else the
    newest ``/usr/lib/postgresql/<version>/bin``, else the ``PATH``; None
    when none has both."""
    candidates = []
    if os.environ.get(BINDIR_ENV):
        candidates.append(Path(os.environ[BINDIR_ENV]))
    # Debian keeps the server binaries off the PATH, one folder per version.
    versioned = glob.glob("/usr/lib/postgresql/*/bin")
    versioned.sort(key=lambda p: int(Path(p).parent.name), reverse=True)
    candidates += [Path(p) for p in versioned]
    on_path = shutil.which("pg_ctl")
    if on_path is not None:
        candidates.append(Path(on_path).resolve().parent)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalPostgres:
    """One PostgreSQL server on loopback, owned by the test that made it.

    :meth:`start` creates the cluster on first use and starts the server;
    :meth:`stop` stops it (the data stays, so :meth:`start` brings the same
    database back on the same port); :meth:`destroy` stops it and deletes
    everything. Raises :class:`PostgresUnavailable` when it cannot run here.
    """

    def __init__(self) -> None:
        bindir = find_bindir()
        if bindir is None:
            raise PostgresUnavailable(
                "initdb and pg_ctl were not found; install the PostgreSQL "
                f"server or set {BINDIR_ENV}"
            )
        self.bindir = bindir
        self.port = _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="liveclass-pg-"))
        self._runas: list[str] = []
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam(SERVER_USER)
            except KeyError:
                shutil.rmtree(self.root)
                raise PostgresUnavailable(
                    f"running as root and there is no {SERVER_USER!r} user "
                    "to run the server as"
                ) from None
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._runas = ["runuser", "-u", SERVER_USER, "--"]

    @property
    def data_dir(self) -> Path:
        """The cluster's data folder."""
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        """The server's log."""
        return self.root / "server.log"

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of the server's ``postgres`` database."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        """Start the server (creating the cluster the first time) and return
        once it accepts connections."""
        if not self.data_dir.exists():
            self._run(
                "initdb",
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            )
        # TCP on loopback only; the Unix socket goes in our own folder, not
        # the system's, where the shared server has its own.
        options = f"-h 127.0.0.1 -p {self.port} -k {self.root} -c fsync=off"
        self._run(
            "pg_ctl",
            "start",
            "-w",
            "-t",
            "30",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_file),
            "-o",
            options,
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` aborts open transactions and closes
        every connection, ``immediate`` is a crash."""
        data = str(self.data_dir)
        self._run("pg_ctl", "stop", "-w", "-t", "30", "-m", mode, "-D", data)

    def running(self) -> bool:
        """Whether the server runs."""
        pg_ctl = str(self.bindir / "pg_ctl")
        status = subprocess.run(
            [*self._runas, pg_ctl, "status", "-D", str(self.data_dir)],
            capture_output=True,
        )
        return status.returncode == 0

    def destroy(self) -> None:
        """Stop the server if it runs, and delete its folder."""
        try:
            if self.data_dir.exists() and self.running():
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, program: str, *args: str) -> None:
        done = subprocess.run(
            [*self._runas, str(self.bindir / program), *args],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            log = self.log_file.read_text() if self.log_file.exists() else ""
            raise RuntimeError(
                f"{program} {' '.join(args)} failed ({done.returncode}):\n"
                f"{done.stdout}{done.stderr}{log[-3000:]}"
            )
