"""The class log: one ordered, numbered event log per class.

Edges append what their members did and read what every edge appended;
the origin reads it to persist and reconcile. Two implementations share the
:class:`~liveclass.origin.classlog.base.ClassLog` interface: in process (the
embedded default) and Redis Streams (scale-out, single node or Cluster).
"""

from liveclass.origin.classlog.base import (
    Backlog,
    ClassLog,
    ClassLogError,
    GroupMissing,
    HistoryTrimmed,
)
from liveclass.origin.classlog.memory import MemoryClassLog

__all__ = [
    "Backlog",
    "ClassLog",
    "ClassLogError",
    "GroupMissing",
    "HistoryTrimmed",
    "MemoryClassLog",
    "open_log",
]


def open_log(url: str | None) -> ClassLog:
    """Open the class log at ``url``: None for in process, ``redis://...`` for
    one Redis server, ``redis+cluster://host:port`` for a Redis Cluster."""
    if not url or url == "memory://":
        return MemoryClassLog()
    if url.startswith(
        ("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://")
    ):
        from liveclass.origin.classlog.redis import RedisClassLog

        return RedisClassLog.from_url(url)
    raise ValueError(
        f"unsupported class log URL {url!r}: use redis://host:port/db or "
        "redis+cluster://host:port"
    )
