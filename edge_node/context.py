"""What an edge's parts share: settings, the class log, the token verifier.

The member server (WebSocket, state machines) and the media service (WebRTC
ingest, HLS) of one edge both receive one :class:`EdgeContext`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import aiohttp

from liveclass.edge_node.config import EdgeConfig
from liveclass.origin.classlog import ClassLog
from liveclass.origin.contract import LogEvent
from liveclass.origin.tokens import TokenVerifier

Appender = Callable[[str, Sequence[LogEvent]], Awaitable[None]]


@dataclass
class EdgeContext:
    """The shared parts of one running edge.

    ``append`` queues class-log entries for the next flush; ``http`` is the
    edge's client session for calls to the origin and to other edges.
    """

    config: EdgeConfig
    log: ClassLog
    verifier: TokenVerifier
    append: Appender
    http: aiohttp.ClientSession
