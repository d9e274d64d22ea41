"""Outages of the database and the class log: one log line per change."""

from __future__ import annotations

import logging

import asyncpg
import pytest
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError

from liveclass.origin.outages import (
    Dependency,
    Outages,
    Reachability,
    describe,
    is_unreachable,
)


@pytest.mark.parametrize(
    ("error", "unreachable"),
    [
        (ConnectionRefusedError(111, "Connect call failed"), True),
        (TimeoutError(), True),
        (InterfaceError("SELECT 1", None, Exception("connection is closed")), True),
        (asyncpg.exceptions.CannotConnectNowError("shutting down"), True),
        (
            DBAPIError("SELECT 1", None, asyncpg.exceptions.AdminShutdownError("x")),
            True,
        ),
        (IntegrityError("INSERT", None, Exception("duplicate key")), False),
        (asyncpg.exceptions.UndefinedTableError("no table"), False),
        (ValueError("a bug"), False),
    ],
)
def test_unreachable_or_refused(error: BaseException, unreachable: bool) -> None:
    assert is_unreachable(error) is unreachable


def test_describe_keeps_what_members_wrote_out_of_the_log() -> None:
    error = InterfaceError(
        "INSERT INTO chat_messages ...",
        {"text": "my secret"},
        Exception("connection was closed\nterminating connection"),
    )
    assert describe(error) == "connection was closed"
    assert describe(TimeoutError()) == "TimeoutError"


def test_one_warning_when_down_and_one_when_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outages = Outages()
    refused = ConnectionRefusedError(111, "Connect call failed")
    for _ in range(3):  # two classes, retrying
        outages.unreachable(Dependency.STORE, "a", refused)
        outages.unreachable(Dependency.STORE, "b", refused)
    assert outages.state(Dependency.STORE) is Reachability.UNREACHABLE
    assert outages.state(Dependency.CLASS_LOG) is Reachability.OK
    down_for = outages.down_for(Dependency.STORE)
    assert down_for is not None and down_for >= 0
    outages.reached(Dependency.STORE, "a")  # b still waits: still down
    assert outages.state(Dependency.STORE) is Reachability.UNREACHABLE
    outages.reached(Dependency.STORE, "b")
    outages.reached(Dependency.STORE, "b")
    assert outages.state(Dependency.STORE) is Reachability.OK
    assert outages.down_for(Dependency.STORE) is None

    messages = [r.getMessage() for r in caplog.records]
    assert all(r.levelno == logging.WARNING for r in caplog.records)
    assert len(messages) == 2, messages
    assert messages[0].startswith("database unreachable ([Errno 111] Connect call")
    assert messages[1].startswith("database reachable again after ")


def test_a_stopped_class_ends_its_outage_silently(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outages = Outages()
    outages.unreachable(Dependency.CLASS_LOG, "a", OSError("reset"))
    outages.forget("a")
    assert outages.state(Dependency.CLASS_LOG) is Reachability.OK
    assert [r.getMessage() for r in caplog.records] == [
        "class log unreachable (reset); nothing is stored until it is back"
    ]
