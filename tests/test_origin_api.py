"""The origin's admin API over real loopback HTTP, mostly through AdminClient."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from liveclass.origin.app import OriginServer, run_origin
from liveclass.origin.classlog import ClassLogError, MemoryClassLog
from liveclass.origin.config import OriginConfig
from liveclass.origin.tokens import KeyRing, TokenVerifier
from liveclass.sdk.admin import (
    AdminAPIError,
    AdminClient,
    ClassStatus,
    TokenSpec,
)
from liveclass.sdk.protocol import Role

API_KEY = "admin-secret"
EDGE_KEY = "edge-secret"


@pytest.fixture
async def origin(
    tmp_path: Path, port: int, memory_log: MemoryClassLog, keyring: KeyRing
) -> AsyncIterator[OriginServer]:
    """An origin on SQLite in a temporary folder, on a loopback port."""
    config = OriginConfig(
        port=port,
        api_key=API_KEY,
        edge_key=EDGE_KEY,
        database_url=f"sqlite+aiosqlite:///{tmp_path}/origin.db",
        key_file=tmp_path / "key.pem",
    )
    server = await run_origin(config, log=memory_log, keyring=keyring)
    yield server
    await server.stop()


@pytest.fixture
async def admin(origin: OriginServer) -> AsyncIterator[AdminClient]:
    """An admin client of the origin."""
    async with AdminClient(origin.url, API_KEY) as client:
        yield client


@pytest.fixture
async def http(origin: OriginServer) -> AsyncIterator[httpx.AsyncClient]:
    """A plain HTTP client of the origin, with no credentials."""
    async with httpx.AsyncClient(base_url=origin.url) as client:
        yield client


ADMIN = {"Authorization": f"Bearer {API_KEY}"}


async def test_class_lifecycle(
    admin: AdminClient, memory_log: MemoryClassLog, class_id: str
) -> None:
    created = await admin.create_class("Physics", class_id=class_id, max_members=10)
    assert created.status is ClassStatus.CREATED
    assert (created.id, created.max_members) == (class_id, 10)
    assert await admin.get_class(class_id) == created
    assert class_id in [c.id for c in await admin.list_classes()]

    live = await admin.start_class(class_id)
    assert live.status is ClassStatus.LIVE and live.started_at is not None
    assert (await admin.start_class(class_id)).status is ClassStatus.LIVE

    ended = await admin.end_class(class_id)
    assert ended.status is ClassStatus.ENDED and ended.ended_at is not None
    [entry] = await memory_log.read(class_id, 0)
    assert (entry.type, entry.audience) == ("class.ended", "all")

    with pytest.raises(AdminAPIError) as again:
        await admin.end_class(class_id)
    assert (again.value.status, again.value.code) == (409, "conflict")
    with pytest.raises(AdminAPIError) as restart:
        await admin.start_class(class_id)
    assert restart.value.status == 409


async def test_generated_class_id(admin: AdminClient) -> None:
    first = await admin.create_class("One")
    second = await admin.create_class("Two")
    assert first.id != second.id


async def test_report_follows_the_log(
    origin: OriginServer,
    admin: AdminClient,
    memory_log: MemoryClassLog,
    class_id: str,
) -> None:
    from liveclass.origin.contract import LogEvent

    await admin.create_class("Physics", class_id=class_id)
    await admin.start_class(class_id)
    member = {"user_id": "u1", "name": "Ada", "role": "student"}
    await memory_log.append(
        class_id,
        [
            LogEvent(type="member.joined", data=member),
            LogEvent(type="chat.message", actor="u1", data={"text": "hi", **member}),
        ],
    )
    await admin.end_class(class_id)
    await origin.state.reconcilers.finished(class_id, 10)

    report = await admin.report(class_id)
    assert report.class_.status is ClassStatus.ENDED
    assert [a["user_id"] for a in report.attendance] == ["u1"]
    assert report.attendance[0]["left_at"] is not None
    assert [c["text"] for c in report.chat] == ["hi"]
    assert report.recording is None


async def test_tokens_verify_with_published_keys(
    admin: AdminClient, http: httpx.AsyncClient, class_id: str
) -> None:
    await admin.create_class("Physics", class_id=class_id)
    issued = await admin.mint_token(class_id, "t1", "Grace", Role.TEACHER, ttl_s=60)
    keys = (await http.get("/v1/keys")).json()

    claims = TokenVerifier(keys).verify(issued.token)
    assert (claims.sub, claims.cls, claims.role) == ("t1", class_id, Role.TEACHER)
    assert claims.exp == int(issued.expires_at)
    assert claims.max == (await admin.get_class(class_id)).max_members

    specs = [TokenSpec(user_id=f"s{i}", name=f"Student {i}") for i in range(25)]
    bulk = await admin.mint_tokens(class_id, specs)
    assert [t.user_id for t in bulk] == [s.user_id for s in specs]
    assert TokenVerifier(keys).verify(bulk[-1].token).sub == "s24"

    # Roles as strings and members as plain mappings are accepted too.
    ta = await admin.mint_token(class_id, "ta1", "Alan", "ta")
    [raw] = await admin.mint_tokens(class_id, [{"user_id": "s99", "name": "Eve"}])
    assert TokenVerifier(keys).verify(ta.token).role is Role.TA
    assert raw.user_id == "s99"


async def test_rotation_keeps_old_tokens_valid(
    admin: AdminClient, http: httpx.AsyncClient, class_id: str
) -> None:
    await admin.create_class("Physics", class_id=class_id)
    old = await admin.mint_token(class_id, "u1", "Ada")
    kids = await admin.rotate_keys()
    new = await admin.mint_token(class_id, "u2", "Bob")

    verifier = TokenVerifier((await http.get("/v1/keys")).json())
    assert len(kids) == 2 and verifier.kids == kids
    assert verifier.verify(old.token).sub == "u1"
    assert verifier.verify(new.token).sub == "u2"

    # Rotating again would retire the key that signed `old`, still valid.
    with pytest.raises(AdminAPIError) as unsafe:
        await admin.rotate_keys()
    assert unsafe.value.status == 409 and "force" in unsafe.value.message
    assert TokenVerifier((await http.get("/v1/keys")).json()).kids == kids
    forced = await admin.rotate_keys(force=True)
    assert kids[0] not in forced and kids[1] in forced


async def test_no_tokens_for_ended_class(admin: AdminClient, class_id: str) -> None:
    await admin.create_class("Physics", class_id=class_id)
    await admin.end_class(class_id)
    with pytest.raises(AdminAPIError) as refused:
        await admin.mint_token(class_id, "u1", "Ada")
    assert refused.value.code == "conflict"


async def test_health(http: httpx.AsyncClient) -> None:
    answer = await http.get("/healthz")
    assert (answer.status_code, answer.json()) == (
        200,
        {
            "status": "ok",
            "store": "ok",
            "class_log": "ok",
            "reconciling": 0,
            "backlog": 0,
        },
    )


# --- bad requests --------------------------------------------------------


async def _refusal(
    http: httpx.AsyncClient,
    method: str,
    path: str,
    *,
    json: Any = None,
    content: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, str, str]:
    answer = await http.request(
        method, path, json=json, content=content, headers=headers
    )
    error = answer.json()["error"]
    assert set(error) == {"code", "message"}
    return answer.status_code, error["code"], error["message"]


async def test_bad_json(http: httpx.AsyncClient) -> None:
    status, code, _ = await _refusal(
        http, "POST", "/v1/classes", content=b"{nope", headers=ADMIN
    )
    assert (status, code) == (400, "bad_json")
    status, code, _ = await _refusal(
        http, "POST", "/v1/classes", json=["a list"], headers=ADMIN
    )
    assert (status, code) == (400, "bad_json")


async def test_missing_field(http: httpx.AsyncClient) -> None:
    status, code, message = await _refusal(
        http, "POST", "/v1/classes", json={}, headers=ADMIN
    )
    assert (status, code) == (422, "missing_field")
    assert "'title'" in message


async def test_wrong_type(http: httpx.AsyncClient) -> None:
    body = {"title": "Physics", "max_members": "many"}
    status, code, message = await _refusal(
        http, "POST", "/v1/classes", json=body, headers=ADMIN
    )
    assert (status, code) == (422, "wrong_type")
    assert "'max_members'" in message


async def test_unknown_field_and_bad_value(http: httpx.AsyncClient) -> None:
    body = {"title": "Physics", "colour": "red"}
    status, code, message = await _refusal(
        http, "POST", "/v1/classes", json=body, headers=ADMIN
    )
    assert (status, code) == (422, "unknown_field")
    assert "'colour'" in message
    body = {"title": "Physics", "class_id": "has{brace}"}
    status, code, _ = await _refusal(
        http, "POST", "/v1/classes", json=body, headers=ADMIN
    )
    assert (status, code) == (422, "invalid")


async def test_unknown_class(admin: AdminClient, http: httpx.AsyncClient) -> None:
    for call in (
        admin.get_class("nope"),
        admin.start_class("nope"),
        admin.end_class("nope"),
        admin.report("nope"),
        admin.mint_token("nope", "u1", "Ada"),
    ):
        with pytest.raises(AdminAPIError) as missing:
            await call
        assert (missing.value.status, missing.value.code) == (404, "not_found")
        assert "'nope'" in missing.value.message


async def test_bad_auth(origin: OriginServer, http: httpx.AsyncClient) -> None:
    for headers in (
        {},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {EDGE_KEY}"},
    ):
        status, code, _ = await _refusal(http, "GET", "/v1/classes", headers=headers)
        assert (status, code) == (401, "unauthorized")
    async with AdminClient(origin.url, "wrong") as intruder:
        with pytest.raises(AdminAPIError) as refused:
            await intruder.list_classes()
        assert refused.value.status == 401


async def test_conflict_on_taken_id(admin: AdminClient, class_id: str) -> None:
    await admin.create_class("Physics", class_id=class_id)
    with pytest.raises(AdminAPIError) as taken:
        await admin.create_class("Chemistry", class_id=class_id)
    assert (taken.value.status, taken.value.code) == (409, "conflict")


async def test_unknown_path_and_method(http: httpx.AsyncClient) -> None:
    status, code, _ = await _refusal(http, "GET", "/v1/nothing", headers=ADMIN)
    assert (status, code) == (404, "not_found")
    status, code, message = await _refusal(http, "DELETE", "/v1/classes")
    assert (status, code) == (405, "method_not_allowed")
    assert "GET" in message


async def test_bulk_limit(http: httpx.AsyncClient, admin: AdminClient) -> None:
    info = await admin.create_class("Huge")
    members = [{"user_id": f"u{i}", "name": "x"} for i in range(20_001)]
    status, code, message = await _refusal(
        http,
        "POST",
        f"/v1/classes/{info.id}/tokens/bulk",
        json={"members": members},
        headers=ADMIN,
    )
    assert (status, code) == (422, "invalid")
    assert "'members'" in message
    status, code, message = await _refusal(
        http,
        "POST",
        f"/v1/classes/{info.id}/tokens/bulk",
        json={"members": [{"user_id": "u1"}]},
        headers=ADMIN,
    )
    assert (status, code) == (422, "missing_field")
    assert "members.0.name" in message
    status, code, _ = await _refusal(
        http,
        "POST",
        f"/v1/classes/{info.id}/tokens/bulk",
        content=b" " * (9 * 1024 * 1024),
        headers=ADMIN,
    )
    assert (status, code) == (413, "too_large")


async def test_live_classes_resume_after_restart(
    tmp_path: Path, port: int, memory_log: MemoryClassLog, keyring: KeyRing
) -> None:
    from liveclass.origin.contract import LogEvent

    config = OriginConfig(
        port=port,
        api_key=API_KEY,
        database_url=f"sqlite+aiosqlite:///{tmp_path}/origin.db",
        key_file=None,
    )
    first = await run_origin(config, log=memory_log, keyring=keyring)
    async with AdminClient(first.url, API_KEY) as admin:
        info = await admin.create_class("Physics")
        await admin.start_class(info.id)
    await first.stop()

    # Written while no origin ran: the next one must pick it up.
    chat = LogEvent(type="chat.message", actor="u1", data={"text": "hi", "name": "A"})
    await memory_log.append(info.id, [chat, LogEvent(type="class.ended")])
    second = await run_origin(config, log=memory_log, keyring=keyring)
    try:
        assert second.state.reconcilers.running() == [info.id]
        await second.state.reconcilers.finished(info.id, 10)
        async with AdminClient(second.url, API_KEY) as admin:
            report = await admin.report(info.id)
    finally:
        await second.stop()
    assert report.class_.status is ClassStatus.ENDED
    assert [c["text"] for c in report.chat] == ["hi"]


async def test_an_ended_class_left_unstored_is_resumed_at_start(
    tmp_path: Path, port: int, memory_log: MemoryClassLog, keyring: KeyRing
) -> None:
    """The previous origin ended the class but stopped before storing all of
    its log (the database was away, say): the next one finishes the job."""
    from liveclass.origin.api.models import ClassStatus as Status
    from liveclass.origin.contract import LogEvent
    from liveclass.origin.reconcile import GROUP
    from liveclass.origin.store import Store

    config = OriginConfig(
        port=port,
        api_key=API_KEY,
        database_url=f"sqlite+aiosqlite:///{tmp_path}/origin.db",
        key_file=None,
    )
    first = await run_origin(config, log=memory_log, keyring=keyring)
    async with AdminClient(first.url, API_KEY) as admin:
        info = await admin.create_class("Physics")
        await admin.start_class(info.id)
    await first.stop()
    chat = LogEvent(type="chat.message", actor="u1", data={"text": "hi", "name": "A"})
    await memory_log.append(info.id, [chat, LogEvent(type="class.ended")])
    store = Store.open(config.database_url)
    try:
        assert await store.transition(info.id, Status.LIVE, Status.ENDED)
    finally:
        await store.close()

    second = await run_origin(config, log=memory_log, keyring=keyring)
    try:
        assert second.state.reconcilers.running() == [info.id]
        async with AdminClient(second.url, API_KEY) as admin:
            for _ in range(100):
                report = await admin.report(info.id)
                if report.chat:
                    break
                await asyncio.sleep(0.05)
        assert [c["text"] for c in report.chat] == ["hi"]
        assert (await memory_log.backlog(info.id, GROUP)).total == 0
    finally:
        await second.stop()

    # Nothing left to store: the next start leaves the class alone.
    third = await run_origin(config, log=memory_log, keyring=keyring)
    try:
        assert third.state.reconcilers.running() == []
    finally:
        await third.stop()


@pytest.mark.postgres
async def test_on_postgres(
    postgres_url: str,
    port: int,
    memory_log: MemoryClassLog,
    keyring: KeyRing,
    class_id: str,
) -> None:
    from sqlalchemy import delete

    from liveclass.origin.contract import LogEvent
    from liveclass.origin.store import schema

    config = OriginConfig(
        port=port, api_key=API_KEY, database_url=postgres_url, key_file=None
    )
    server = await run_origin(config, log=memory_log, keyring=keyring)
    try:
        async with AdminClient(server.url, API_KEY) as admin:
            info = await admin.create_class("Physics", class_id=class_id)
            await admin.start_class(info.id)
            member = {"user_id": "u1", "name": "Ada", "role": "student"}
            await memory_log.append(
                info.id, [LogEvent(type="member.joined", data=member)]
            )
            await admin.end_class(info.id)
            await server.state.reconcilers.finished(info.id, 10)
            report = await admin.report(info.id)
        assert [a["user_id"] for a in report.attendance] == ["u1"]
    finally:
        # The database is shared: remove this test's class only.
        async with server.state.store.engine.begin() as conn:
            for table in schema.metadata.sorted_tables:
                await conn.execute(delete(table).where(table.c.class_id == class_id))
        await server.stop()


async def test_tls(
    tmp_path: Path,
    port: int,
    memory_log: MemoryClassLog,
    keyring: KeyRing,
    tls_files: tuple[Path, Path],
) -> None:
    import ssl

    cert_file, key_file = tls_files
    config = OriginConfig(
        port=port,
        database_url=f"sqlite+aiosqlite:///{tmp_path}/origin.db",
        key_file=None,
        tls_cert=cert_file,
        tls_key=key_file,
    )
    server = await run_origin(config, log=memory_log, keyring=keyring)
    try:
        assert server.url.startswith("https://")
        trust = ssl.create_default_context(cafile=str(cert_file))
        async with httpx.AsyncClient(verify=trust) as http:
            answer = await http.get(f"https://localhost:{port}/healthz")
        assert answer.json()["status"] == "ok"
    finally:
        await server.stop()


def test_admin_client_needs_no_server_dependencies() -> None:
    import subprocess
    import sys

    probe = (
        "import sys, liveclass.sdk.admin\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('aiohttp', 'sqlalchemy', 'asyncpg', 'redis', 'geoip2', 'alembic')"
        " or m.startswith('liveclass.origin')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", probe], check=True, timeout=60)


async def test_end_with_the_class_log_down_changes_nothing_and_can_be_retried(
    admin: AdminClient, memory_log: MemoryClassLog, class_id: str
) -> None:
    await admin.create_class("Flaky", class_id=class_id)
    await admin.start_class(class_id)
    real_append = memory_log.append

    async def unreachable(*args: Any) -> Any:
        raise ClassLogError("connection refused")

    memory_log.append = unreachable  # type: ignore[method-assign]
    with pytest.raises(AdminAPIError) as down:
        await admin.end_class(class_id)
    assert (down.value.status, down.value.code) == (503, "unavailable")
    assert (await admin.get_class(class_id)).status is ClassStatus.LIVE

    memory_log.append = real_append  # type: ignore[method-assign]
    assert (await admin.end_class(class_id)).status is ClassStatus.ENDED
    assert [e.type for e in await memory_log.read(class_id, 0)] == ["class.ended"]


async def test_deeply_nested_json_is_a_bad_request(http: httpx.AsyncClient) -> None:
    nested = "[" * 100_000 + "]" * 100_000
    response = await http.post("/v1/classes", content=nested, headers=ADMIN)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_json"
