"""Starting and stopping the servers under test, each pinned to its core.

A server is one or more processes; the first one is measured (memory and
CPU). The liveclass edge runs as the real thing: an origin that mints the
tokens and an edge that verifies them, each its own process.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
NODE_DIR = BENCH / ".node"
"""Where ``npm install ws`` puts the Node peer's library (gitignored)."""

PEERS = {
    "websockets": ["-m", "bench.peers.websockets_peer"],
    "aiohttp": ["-m", "bench.peers.aiohttp_peer"],
    "socketio": ["-m", "bench.peers.socketio_peer"],
    "asyncio": ["-m", "bench.peers.asyncio_peer"],
}
"""The Python peers: arguments to the interpreter."""

ALL = ["edge", "edge-tls", *PEERS, "node-ws"]
"""Every server the benchmark knows, in table order. ``edge-tls`` is the
edge terminating TLS itself (the other rows are plain WebSocket, TLS being
terminated in front of the server as at a load balancer)."""


class ServerFailed(RuntimeError):
    """A server did not start; the message says which and shows its output."""


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(cores: set[int]) -> Callable[[], None]:
    """A ``preexec_fn`` that pins the child to ``cores`` and raises its
    open-file limit to the hard limit (one descriptor a client)."""

    def setup() -> None:
        os.sched_setaffinity(0, cores)
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    return setup


@dataclass
class Running:
    """Processes of one server under test and what the generator needs."""

    name: str
    port: int
    mode: str
    procs: list[subprocess.Popen[bytes]]
    logs: list[Path]
    tokens: list[str] = field(default_factory=list)
    teacher_token: str = ""
    workdir: Path | None = None
    cafile: str | None = None
    """The certificate to trust when the server speaks TLS; None: plain."""

    @property
    def pids(self) -> list[int]:
        """The measured process: the first one."""
        return [self.procs[0].pid]

    @property
    def helper_pids(self) -> list[int]:
        """Processes that serve the measured one (the edge's origin)."""
        return [p.pid for p in self.procs[1:]]

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a few seconds."""
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 8.0
        for p in reversed(self.procs):
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5.0)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


def spawn(
    argv: list[str], cores: set[int], log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``argv`` pinned to ``cores`` in the repository's folder, its
    output going to ``log``."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            argv,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=pinned(cores),
            env=env,
        )


def wait_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Return once ``proc`` listens on ``port``; raise :class:`ServerFailed`
    (with the end of its ``log``) if it exits or is not listening within
    30 s."""
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerFailed(f"exited with {proc.returncode}: {_tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise ServerFailed(f"not listening on {port} after 30 s: {_tail(log)}")


def _tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-800:]
    except OSError:
        return "(no output)"


def node_available() -> bool:
    """Whether ``node`` and ``npm`` are on PATH."""
    return bool(shutil.which("node") and shutil.which("npm"))


def install_node_ws() -> None:
    """``npm install ws`` into the bench-local folder, once."""
    if (NODE_DIR / "node_modules" / "ws").is_dir():
        return
    NODE_DIR.mkdir(exist_ok=True)
    subprocess.run(
        ["npm", "install", "--prefix", str(NODE_DIR), "--no-audit", "--no-fund", "ws"],
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=300,
    )


def start(
    name: str, cores: set[int], clients: int, logdir: Path, edge_args: list[str]
) -> Running:
    """Start server ``name`` pinned to ``cores``, ready for ``clients``;
    ``edge_args`` are extra flags for ``liveclass edge``."""
    port = free_port()
    log = logdir / f"{name}.log"
    if name in ("edge", "edge-tls"):
        return _start_edge(cores, clients, logdir, edge_args, tls=name == "edge-tls")
    if name == "node-ws":
        install_node_ws()
        env = dict(os.environ, NODE_PATH=str(NODE_DIR / "node_modules"))
        argv = ["node", str(BENCH / "peers" / "node_ws.js"), "--port", str(port)]
        proc = spawn(argv, cores, log, env)
    else:
        argv = [sys.executable, *PEERS[name], "--port", str(port)]
        proc = spawn(argv, cores, log)
    wait_port(port, proc, log)
    mode = "socketio" if name == "socketio" else "plain"
    return Running(name, port, mode, [proc], [log])


LIVECLASS = [sys.executable, "-m", "liveclass.cli.main", "--log-level", "WARNING"]
"""The ``liveclass`` command, run by this interpreter."""


def origin_argv(
    port: int,
    api_key: str,
    edge_key: str,
    database_url: str,
    key_file: Path,
    redis_url: str | None = None,
) -> list[str]:
    """The command line of ``liveclass origin``; without ``redis_url`` the
    class log is the in-process one."""
    argv = [
        *LIVECLASS,
        "origin",
        f"--port={port}",
        f"--api-key={api_key}",
        f"--edge-key={edge_key}",
        f"--database-url={database_url}",
        f"--key-file={key_file}",
    ]
    return argv + ([f"--redis-url={redis_url}"] if redis_url else [])


def edge_argv(
    port: int, origin_port: int, edge_key: str, data_dir: Path, members: int
) -> list[str]:
    """The command line of ``liveclass edge``, sized for ``members`` in one
    class, without media work; add ``--redis-url`` and ``--edge-id`` for
    more than one edge."""
    return [
        *LIVECLASS,
        "edge",
        f"--port={port}",
        f"--origin-url=http://127.0.0.1:{origin_port}",
        f"--edge-key={edge_key}",
        f"--data-dir={data_dir}",
        # Twice over: with --workers each process takes a share, and the
        # kernel's spread of connections over them is even only on average.
        f"--capacity={2 * members + 100}",
        f"--class-limit={members + 100}",
        "--no-transcode",
    ]


def _start_edge(
    cores: set[int], clients: int, logdir: Path, edge_args: list[str], tls: bool
) -> Running:
    work = Path(tempfile.mkdtemp(prefix="liveclass-bench-"))
    name = "edge-tls" if tls else "edge"
    cafile = None
    if tls:
        cert, key = self_signed(work)
        edge_args = [*edge_args, f"--tls-cert={cert}", f"--tls-key={key}"]
        cafile = str(cert)
    api_key, edge_key = secrets.token_hex(16), secrets.token_hex(16)
    origin_port, edge_port = free_port(), free_port()
    origin_log, edge_log = logdir / f"origin-{name}.log", logdir / f"{name}.log"
    database = f"sqlite+aiosqlite:///{work}/origin.db"
    origin = spawn(
        origin_argv(origin_port, api_key, edge_key, database, work / "keys.pem"),
        cores,
        origin_log,
    )
    procs = [origin]
    try:
        wait_port(origin_port, origin, origin_log)
        argv = edge_argv(edge_port, origin_port, edge_key, work / "edge", clients)
        edge = spawn([*argv, *edge_args], cores, edge_log)
        procs.insert(0, edge)
        wait_port(edge_port, edge, edge_log)
        minted = mint(origin_port, api_key, clients)
    except BaseException:
        Running(name, edge_port, "edge", procs, [], workdir=work).stop()
        raise
    return Running(
        name,
        edge_port,
        "edge",
        procs,
        [edge_log, origin_log],
        tokens=minted.students,
        teacher_token=minted.teacher,
        workdir=work,
        cafile=cafile,
    )


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1, valid for a
    day, and its key, as PEM files written to ``folder``: ``(cert, key)``.
    Clients trust it with ``cafile=cert``.

    ECDSA P-256: the handshake's signature costs the server tens of
    microseconds, where an RSA-2048 one costs about a millisecond.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    names = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@dataclass
class Minted:
    """A live class and its members' join tokens."""

    class_id: str
    teacher: str
    students: list[str]


def mint(port: int, api_key: str, students: int) -> Minted:
    """Create and start a class; mint the teacher's and ``students``
    students' tokens (user ids ``s0``, ``s1``...) in bulk through the admin
    API."""
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {api_key}"}
    with httpx.Client(base_url=base, headers=headers, timeout=120.0) as http:
        r = http.post("/v1/classes", json={"title": "bench", "max_members": 1_000_000})
        r.raise_for_status()
        class_id = r.json()["id"]
        http.post(f"/v1/classes/{class_id}/start").raise_for_status()
        members = [{"user_id": "teacher", "name": "Teacher", "role": "teacher"}]
        members += [
            {"user_id": f"s{i}", "name": f"Student {i}", "role": "student"}
            for i in range(students)
        ]
        tokens: list[str] = []
        for at in range(0, len(members), 5000):
            r = http.post(
                f"/v1/classes/{class_id}/tokens/bulk",
                json={"members": members[at : at + 5000]},
            )
            r.raise_for_status()
            tokens += [t["token"] for t in r.json()["tokens"]]
    return Minted(class_id, tokens[0], tokens[1:])


def start_redis(cores: set[int], logdir: Path) -> Running:
    """A Redis server of our own on a free loopback port, pinned to ``cores``,
    that keeps nothing on disk: its command counters see only the processes
    under test. Raises :class:`ServerFailed` if ``redis-server`` is missing
    or does not start."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServerFailed("redis-server is not on PATH")
    work = Path(tempfile.mkdtemp(prefix="liveclass-bench-redis-"))
    port = free_port()
    log = logdir / "redis.log"
    argv = [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(work)]
    argv += ["--save", "", "--appendonly", "no"]
    proc = spawn(argv, cores, log)
    try:
        wait_port(port, proc, log)
    except BaseException:
        Running("redis", port, "redis", [proc], [log], workdir=work).stop()
        raise
    return Running("redis", port, "redis", [proc], [log], workdir=work)
