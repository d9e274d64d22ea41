"""The class log: one ordered, numbered event log per class.

Edges append what their members did and read what every edge appended;
the origin reads it to persist and reconcile. Two implementations share the
:class:`~liveclass.origin.classlog.base.ClassLog` interface: in process (the
embedded default) and Redis Streams (scale-out, single node or Cluster).
"""

from liveclass.origin.classlog.base import (
    DEFAULT_RETENTION,
    Backlog,
    ClassLog,
    ClassLogError,
    GroupMissing,
    HistoryTrimmed,
)
from liveclass.origin.classlog.memory import MemoryClassLog

__all__ = [
    "DEFAULT_RETENTION",
    "Backlog",
    "ClassLog",
    "ClassLogError",
    "GroupMissing",
    "HistoryTrimmed",
    "MemoryClassLog",
    "open_log",
]


def open_log(url: str | None, retention: int = DEFAULT_RETENTION) -> ClassLog:
    """Open the class log at ``url``: None for in process, ``redis://...`` for
    one Redis server, ``redis+cluster://host:port`` for a Redis Cluster.

    Appends through it keep about ``retention`` entries per class (see
    :data:`~liveclass.origin.classlog.base.DEFAULT_RETENTION`). Raises
    ValueError for an unsupported URL or a retention below 1.
    """
    if retention < 1:
        raise ValueError(f"class log retention {retention}: give 1 or more")
    if not url or url == "memory://":
        return MemoryClassLog(retention)
    if url.startswith(
        ("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://")
    ):
        from liveclass.origin.classlog.redis import RedisClassLog

        return RedisClassLog.from_url(url, retention)
    raise ValueError(
        f"unsupported class log URL {url!r}: use redis://host:port/db or "
        "redis+cluster://host:port"
    )
