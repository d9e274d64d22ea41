"""A member comes back after the class log has trimmed what it missed.

Real processes: an origin and three ``liveclass edge`` processes, all told
to keep only :data:`RETENTION` entries of a class's log (``--log-retention``),
on the shared Redis and then on a local three-node Redis Cluster. The
teacher chats on edge B; Bob stays on edge C throughout; Ann is on edge A
and Cy on edge C, and both leave early. Ann's edge dies (SIGKILL). The
class then goes on for several times the retention, and edge A starts
again, remembering nothing of the class. What must hold:

- Ann, resuming on edge A from a number the log has trimmed and edge A
  never saw, gets a ``state.reset`` with a fresh snapshot, never a silent
  gap; after it, the numbers go on without a gap.
- Cy, resuming on edge C from a number as old, gets every message she
  missed once, in order: edge C still remembers them, though the log does
  not.
- Bob, who never left, gets every message once, in order, with no reset.

The last tests check the ``--log-retention`` flag and variables that make a
short retention possible, and the log they open.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from fleet import API_KEY, Fleet
from test_faults import Wire, assert_exactly_once, new_class, numbered

from liveclass.cli.main import build_parser, main
from liveclass.origin.classlog import DEFAULT_RETENTION, HistoryTrimmed, open_log
from liveclass.origin.classlog.redis import RedisClassLog
from liveclass.origin.contract import LogEvent
from liveclass.sdk.admin import AdminClient
from liveclass.sdk.protocol import Role

RETENTION = 100
"""Entries the class log keeps per class in these tests."""
LATER = 6 * RETENTION
"""Messages the teacher sends while Ann and Cy are away: with Redis's
block-wise trimming (blocks of up to 100 entries) the log keeps at most
about twice :data:`RETENTION`, so the start of the class is certainly
gone."""
BURST = 10
"""Messages sent before waiting for Bob to see them: far below the
retention, so no edge that serves the class falls behind the log's
trimming however slow the machine."""


def is_chat(text: str) -> Callable[[dict[str, object]], bool]:
    """A predicate for :meth:`Wire.until`: the chat message ``text``."""

    def matches(event: dict[str, object]) -> bool:
        data = event.get("data")
        return (
            event["type"] == "chat.message"
            and isinstance(data, dict)
            and data.get("text") == text
        )

    return matches


@contextlib.asynccontextmanager
async def short_fleet(
    tmp_path: Path, log_url: str, database_url: str
) -> AsyncIterator[Fleet]:
    """A fleet whose class logs keep :data:`RETENTION` entries; its
    processes are all stopped on the way out."""
    fleet = Fleet(tmp_path, log_url, database_url, log_retention=RETENTION)
    try:
        yield fleet
    finally:
        await asyncio.to_thread(fleet.stop)


async def join(
    admin: AdminClient,
    fleet: Fleet,
    class_id: str,
    edge_id: str,
    user_id: str,
    role: Role = Role.STUDENT,
) -> tuple[Wire, str]:
    """A welcomed member on ``edge_id``, and its token for resuming."""
    minted = await admin.mint_token(class_id, user_id, user_id.title(), role)
    wire = await Wire.open(fleet.edges[edge_id], minted.token)
    await wire.until(lambda e: e["type"] == "welcome")
    return wire, minted.token


async def teach_in_bursts(teacher: Wire, bob: Wire, texts: list[str]) -> None:
    """Send ``texts``, :data:`BURST` at a time, each burst once Bob (edge C)
    and the teacher (edge B) have the previous one: both edges keep up with
    the log, so only members who left miss what it trims."""
    for start in range(0, len(texts), BURST):
        burst = texts[start : start + BURST]
        for text in burst:
            await teacher.chat_send(text)
        for member in (teacher, bob):
            await member.until(is_chat(burst[-1]), 20)


async def assert_trimmed(log_url: str, class_id: str, after: int) -> int:
    """The log no longer holds the entries after ``after``; its head."""
    log = RedisClassLog.from_url(log_url)
    try:
        with pytest.raises(HistoryTrimmed) as trimmed:
            await log.read(class_id, after)
        head = await log.head(class_id)
    finally:
        await log.close()
    kept = head - trimmed.value.first + 1
    # Block-wise trimming keeps a little more than asked, never 100,000.
    assert RETENTION <= kept <= 3 * RETENTION, f"the log keeps {kept} entries"
    return head


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.postgres
async def test_resume_past_retention_resets_across_processes(
    tmp_path: Path, log_url: str, postgres_url: str
) -> None:
    """See the module doc."""
    early, later = numbered("early", 3), numbered("later", LATER)
    async with (
        short_fleet(tmp_path, log_url, postgres_url) as fleet,
        AdminClient(fleet.origin_url, API_KEY) as admin,
        contextlib.AsyncExitStack() as stack,
    ):
        await asyncio.to_thread(fleet.start_origin)
        for edge_id in ("edge-a", "edge-b", "edge-c"):
            await asyncio.to_thread(fleet.start_edge, edge_id, 48.85, 2.35)
        class_id = await new_class(admin, "resume past retention")
        teacher, _ = await join(admin, fleet, class_id, "edge-b", "tea", Role.TEACHER)
        stack.push_async_callback(teacher.close)
        bob, _ = await join(admin, fleet, class_id, "edge-c", "bob")
        stack.push_async_callback(bob.close)
        ann, ann_token = await join(admin, fleet, class_id, "edge-a", "ann")
        cy, cy_token = await join(admin, fleet, class_id, "edge-c", "cy")

        # Everyone sees the start of the class; then Cy leaves and Ann's
        # edge dies under her.
        for text in early:
            await teacher.chat_send(text)
        for member in (teacher, bob, ann, cy):
            await member.until(is_chat(early[-1]))
        ann_left_at, cy_left_at = ann.seq_to, cy.seq_to
        assert ann_left_at is not None and cy_left_at is not None
        await cy.close()
        await asyncio.to_thread(fleet.kill, "edge-a")
        await ann.close()

        # The class goes on well past the log's retention.
        await teach_in_bursts(teacher, bob, later)
        head = await assert_trimmed(log_url, class_id, min(ann_left_at, cy_left_at))

        # Edge A comes back knowing nothing of the class; Ann resumes there.
        await asyncio.to_thread(fleet.start_edge, "edge-a", 48.85, 2.35)
        ann = await Wire.open(fleet.edges["edge-a"], ann_token, last_seq=ann_left_at)
        stack.push_async_callback(ann.close)
        first = await ann.until(lambda e: e["type"] in ("state.reset", "chat.message"))
        assert first["type"] == "state.reset", f"silent gap: {ann.events[:3]}"
        # The reset stands at the log's head, or past it: the entries edge A
        # appends as it opens the class and as Ann joins may come first.
        assert ann.seq_to is not None and ann.seq_to >= head
        recent = [e["data"]["text"] for e in first["data"]["snapshot"]["chat"]]
        assert recent and recent[-1] == later[-1], recent
        assert ann.chat == [], "history replayed after a reset"

        # Cy resumes on edge C, which still remembers what the log trimmed.
        cy = await Wire.open(fleet.edges["edge-c"], cy_token, last_seq=cy_left_at)
        stack.push_async_callback(cy.close)
        await cy.until(is_chat(later[-1]))

        # After the reset the numbers go on without a gap, for everyone.
        await teacher.chat_send("after-reset")
        for member in (teacher, bob, ann, cy):
            await member.until(is_chat("after-reset"))
        assert [text for _, text in ann.chat] == ["after-reset"]
        assert ann.chat[0][0] > head

        assert [text for _, text in teacher.chat] == [*early, *later, "after-reset"]
        assert_exactly_once("bob", bob.chat, teacher.chat)
        missed = [(seq, text) for seq, text in teacher.chat if seq > cy_left_at]
        assert_exactly_once("cy", cy.chat, missed)
        for name, member in (("tea", teacher), ("bob", bob), ("cy", cy)):
            resets = [e for e in member.events if e["type"] == "state.reset"]
            assert resets == [], f"{name}: state.reset"
        for name, member in (("tea", teacher), ("bob", bob), ("ann", ann), ("cy", cy)):
            assert member.frame_errors == [], f"{name}: {member.frame_errors}"


def test_log_retention_flags_and_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--log-retention`` and its variables reach both configurations;
    without them the default holds; 0 and words are refused."""
    from liveclass.cli import edge_args, origin_args

    def configs(*argv: str) -> tuple[int, int]:
        parser = build_parser()
        edge: argparse.Namespace = parser.parse_args(["edge", *argv])
        origin: argparse.Namespace = parser.parse_args(["origin", *argv])
        return (
            edge_args.config_from_args(edge).log_retention,
            origin_args.config_from_args(origin).log_retention,
        )

    for prefix in ("LIVECLASS_EDGE_", "LIVECLASS_ORIGIN_"):
        monkeypatch.delenv(prefix + "LOG_RETENTION", raising=False)
    assert configs() == (DEFAULT_RETENTION, DEFAULT_RETENTION)
    assert configs("--log-retention", "250") == (250, 250)
    monkeypatch.setenv("LIVECLASS_EDGE_LOG_RETENTION", "300")
    monkeypatch.setenv("LIVECLASS_ORIGIN_LOG_RETENTION", "400")
    assert configs() == (300, 400)
    assert configs("--log-retention", "50") == (50, 50)

    monkeypatch.delenv("LIVECLASS_EDGE_LOG_RETENTION")
    monkeypatch.delenv("LIVECLASS_ORIGIN_LOG_RETENTION")
    for command in ("edge", "origin"):
        for bad in ("0", "-5", "many"):
            with pytest.raises(SystemExit) as refused:
                main([command, "--log-retention", bad])
            assert refused.value.code == 2


def test_log_retention_help_names_the_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The help text's default is the one the code uses."""
    for command in ("edge", "origin"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        shown = " ".join(capsys.readouterr().out.split())
        assert f"(default {DEFAULT_RETENTION})" in shown, command


async def test_open_log_keeps_the_retention_given() -> None:
    """The in-process log opened with a retention trims to it."""
    log = open_log(None, retention=5)
    try:
        entries = [
            LogEvent(type="chat.message", actor="tea", data={"text": f"m{n}"})
            for n in range(12)
        ]
        await log.append("c1", entries)
        assert [e.seq for e in await log.read("c1", 7)] == list(range(8, 13))
        with pytest.raises(HistoryTrimmed):
            await log.read("c1", 6)
    finally:
        await log.close()
    with pytest.raises(ValueError, match="retention"):
        open_log(None, retention=0)
