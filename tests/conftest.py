"""Shared fixtures: real Redis and PostgreSQL, free ports, tokens.

Redis and PostgreSQL are used for real. Where one is not listening, tests
that need it fail under ``CI=true`` (CI must have it) and are skipped with a
reason elsewhere. A test that breaks the database starts its own
(``own_postgres``): the shared one is never stopped.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import NoReturn

import pytest
from local_postgres import LocalPostgres, PostgresUnavailable

REDIS_URL = os.environ.get("LIVECLASS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get(
    "LIVECLASS_TEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def unavailable(message: str, hint: str) -> NoReturn:
    """A server or binary a test needs is missing: fail under ``CI=true``
    (CI must provide it), skip elsewhere with ``hint``."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}; CI must provide it")
    pytest.skip(f"{message}; {hint}")


def _need(service: str, host: str, port: int) -> None:
    if _listening(host, port):
        return
    unavailable(
        f"{service} is not listening on {host}:{port}",
        "start it to run this test (.ci/run does)",
    )


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def redis_url() -> str:
    """URL of the shared Redis; each test must use its own class ids."""
    _need("Redis", "127.0.0.1", 6379)
    return REDIS_URL


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a three-node Redis Cluster that this test session starts."""
    import shutil

    from redis_cluster import LocalCluster

    if shutil.which("redis-server") is None:
        message = "redis-server is not installed"
        unavailable(message, "install it to test Redis Cluster")
    cluster = LocalCluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        cluster.start()
        yield cluster.url
    finally:
        cluster.stop()


@pytest.fixture(params=["redis", "redis-cluster"])
def log_url(request: pytest.FixtureRequest) -> str:
    """The class log's URL: the shared single Redis, then (the same test
    again) a local three-node Redis Cluster."""
    if request.param == "redis":
        return str(request.getfixturevalue("redis_url"))
    return str(request.getfixturevalue("redis_cluster_url"))


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1, and its key,
    as PEM files: ``(cert, key)``. Clients trust it with ``cafile=cert``."""
    from bench.servers import self_signed

    return self_signed(tmp_path)


@pytest.fixture
def postgres_url() -> str:
    """SQLAlchemy URL of the shared PostgreSQL database ``test``."""
    _need("PostgreSQL", "127.0.0.1", 5432)
    return POSTGRES_URL


@pytest.fixture
def own_postgres() -> Iterator[LocalPostgres]:
    """A PostgreSQL server of this test's own, running: the test may stop
    and start it. Deleted with its data after the test. Skipped where the
    server binaries are missing, except under ``CI=true``."""
    try:
        server = LocalPostgres()
    except PostgresUnavailable as exc:
        unavailable(str(exc), "install the PostgreSQL server to run this test")
    try:
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.fixture
def class_id() -> str:
    """A class id no other test uses."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def port() -> Iterator[int]:
    """A free loopback port."""
    yield free_port()


@pytest.fixture
def keyring():  # type: ignore[no-untyped-def]
    """A fresh origin key ring."""
    from liveclass.origin.tokens import KeyRing

    return KeyRing()


@pytest.fixture
async def memory_log() -> AsyncIterator[object]:
    """An in-process class log."""
    from liveclass.origin.classlog import MemoryClassLog

    log = MemoryClassLog()
    yield log
    await log.close()
