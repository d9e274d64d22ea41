"""Watching a Redis server from outside: who sends which command, what a
class log holds, how far the origin's consumer group has read.

:class:`Monitor` follows ``MONITOR`` and counts every command by the
client address that sent it; commands a script runs are counted for the
client that ran the script. :func:`owners` tells which local process holds
each client address, from the kernel's socket tables, so the counts can be
split by process without asking the processes anything. :class:`RedisProbe`
reads the rest with ordinary commands on its own connection (counted as the
benchmark's, and left out).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from bench.procstat import socket_inodes, tcp_to, tree

LUA = "lua"
"""The client address ``MONITOR`` gives commands run by a script."""

Call = tuple[str, str, bool]
"""One kind of command: client address, command name (``lua.`` in front of
those a script ran), and whether it names the watched class's keys."""


class Monitor(asyncio.Protocol):
    """Counts the commands ``MONITOR`` shows, per :data:`Call`.

    Redis shows a script's commands right after the command that ran it
    (it runs one command at a time), so they are counted for that client.
    ``class_tag`` is the hash tag of the watched class's keys.
    """

    def __init__(self, class_tag: str) -> None:
        self.calls: Counter[Call] = Counter()
        self.lines = 0
        self._tag = class_tag.encode()
        self._buf = b""
        self._last_client = "?"
        self._last_in_class = False
        self._transport: asyncio.Transport | None = None
        self._expected: dict[bytes, asyncio.Future[None]] = {}
        self.started: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @classmethod
    async def open(cls, host: str, port: int, class_tag: str) -> Monitor:
        """Connect to Redis and start monitoring."""
        loop = asyncio.get_running_loop()
        _, monitor = await loop.create_connection(lambda: cls(class_tag), host, port)
        async with asyncio.timeout(10.0):
            await monitor.started
        return monitor

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Ask for the feed."""
        self._transport = transport  # type: ignore[assignment]
        transport.write(b"MONITOR\r\n")  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        """Count each complete line."""
        lines = (self._buf + data).split(b"\r\n")
        self._buf = lines.pop()
        for line in lines:
            self._line(line)

    def _line(self, line: bytes) -> None:
        # +1796410825.810248 [0 127.0.0.1:48952] "xadd" "key" ...
        if line == b"+OK":
            if not self.started.done():
                self.started.set_result(None)
            return
        open_at = line.find(b"[")
        close_at = line.find(b"]", open_at)
        if open_at < 0 or close_at < 0:
            return
        client = line[open_at + 1 : close_at].split(b" ", 1)[-1].decode()
        name_at = close_at + 3  # past '] "'
        name = line[name_at : line.find(b'"', name_at)].decode().lower()
        in_class = self._tag in line
        self.lines += 1
        if name == "echo" and self._expected:
            for token in [t for t in self._expected if t in line]:
                self._expected.pop(token).set_result(None)
        if client == LUA:
            # A script's keys are the caller's: count it with them.
            call = (self._last_client, f"lua.{name}", self._last_in_class)
        else:
            self._last_client, self._last_in_class = client, in_class
            call = (client, name, in_class)
        self.calls[call] += 1

    def expect(self, token: str) -> asyncio.Future[None]:
        """A future done once an ``ECHO`` of ``token`` has been seen: every
        command Redis ran before that one has been counted by then."""
        future = asyncio.get_running_loop().create_future()
        self._expected[token.encode()] = future
        return future

    def connection_lost(self, exc: Exception | None) -> None:
        """Nothing more comes; unblock a caller still waiting to start."""
        if not self.started.done():
            self.started.set_exception(exc or ConnectionError("MONITOR closed"))

    def close(self) -> None:
        """Stop monitoring."""
        if self._transport is not None:
            self._transport.close()


def owners(processes: dict[str, int], redis_port: int) -> dict[str, str]:
    """Which of ``processes`` (name to pid, with its children) holds each
    client connection to the Redis on ``redis_port``: client address
    (``127.0.0.1:port``, as ``MONITOR`` shows it) to name."""
    local_port = tcp_to(redis_port)
    found: dict[str, str] = {}
    for name, pid in processes.items():
        for inode in socket_inodes(tree(pid)):
            port = local_port.get(inode)
            if port is not None:
                found[f"127.0.0.1:{port}"] = name
    return found


@dataclass(frozen=True)
class Group:
    """A consumer group of a class log, as ``XINFO GROUPS`` says."""

    entries_read: int
    """Entries the group has delivered since it was made."""
    last_delivered: int
    """The number of the last entry it delivered."""
    pending: int
    """Entries delivered and not acknowledged."""


@dataclass(frozen=True)
class Entry:
    """What the benchmark wants to know about one class-log entry."""

    seq: int
    type: str
    edge_id: str
    items: int
    """Votes in a vote batch; 1 for any other entry."""


class RedisProbe:
    """Reads counters and a class log from the Redis at ``url``.

    The key names are those of the class log on Redis (``lc:{<class>}:seq``
    and ``lc:{<class>}:log``, entry ids ``<seq>-1``).
    """

    def __init__(self, url: str, class_id: str) -> None:
        self._redis = aioredis.from_url(url)
        self._seq_key = f"lc:{{{class_id}}}:seq"
        self._log_key = f"lc:{{{class_id}}}:log"

    async def close(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()

    async def commands(self) -> int:
        """Commands the server has run, those run by scripts included."""
        stats = await self._redis.info("stats")
        return int(stats["total_commands_processed"])

    async def echo(self, text: str) -> None:
        """Send ``ECHO text``: a mark in the ``MONITOR`` feed."""
        await self._redis.echo(text)

    async def head(self) -> int:
        """The number of the class log's last entry."""
        return int(await self._redis.get(self._seq_key) or 0)

    async def group(self, name: str) -> Group | None:
        """The consumer group ``name`` of the class log, None without one."""
        try:
            groups = await self._redis.xinfo_groups(self._log_key)
        except aioredis.ResponseError:
            return None  # no stream yet
        for found in groups:
            if _text(found["name"]) == name:
                return Group(
                    entries_read=int(found.get("entries-read") or 0),
                    last_delivered=_seq(found["last-delivered-id"]),
                    pending=int(found["pending"]),
                )
        return None

    async def entries(self, after: int, upto: int) -> list[Entry]:
        """The entries numbered ``after + 1`` to ``upto`` still kept."""
        out: list[Entry] = []
        start = f"{after + 1}-0"
        while True:
            rows: Any = await self._redis.xrange(
                self._log_key, start, f"{upto}-1", count=1000
            )
            for stream_id, fields in rows:
                event = json.loads(fields[b"e"])
                data = event.get("data") or {}
                votes = data.get("votes") if event["type"] == "poll.votes" else None
                out.append(
                    Entry(
                        seq=_seq(stream_id),
                        type=event["type"],
                        edge_id=event.get("edge_id") or "",
                        items=len(votes) if isinstance(votes, list) else 1,
                    )
                )
            if len(rows) < 1000:
                return out
            start = f"({_text(rows[-1][0])}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _seq(stream_id: bytes | str) -> int:
    return int(_text(stream_id).split("-", 1)[0])
