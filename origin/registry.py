"""The edge registry: which edges exist, where, and how busy they are.

It lives in memory: edges register when they start and heartbeat every few
seconds, so after an origin restart the registry refills within one
heartbeat period (an edge whose heartbeat is refused as unknown registers
again). An admin's request to drain an edge lives here too, until the edge
registers again: it is lost with an origin restart that comes before the
edge's next heartbeat.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from liveclass.origin.contract import EdgeHeartbeat, EdgeRegistration

logger = logging.getLogger(__name__)


class UnknownEdge(KeyError):
    """No edge with this id registered (since the origin started)."""


@dataclass
class EdgeRecord:
    """One edge: what it registered and its latest heartbeat."""

    registration: EdgeRegistration
    heartbeat: EdgeHeartbeat = field(default_factory=lambda: EdgeHeartbeat(members=0))
    last_seen: float = 0.0
    drain_requested: bool = False
    """An admin asked the edge to drain; the answer to its next heartbeat
    tells it so."""

    @property
    def draining(self) -> bool:
        """Whether the edge drains or was asked to: routing skips it."""
        return self.drain_requested or self.heartbeat.draining

    @property
    def load(self) -> float:
        """Members over capacity: 0 is idle, 1 is full."""
        return self.heartbeat.members / self.registration.capacity


class EdgeRegistry:
    """Edges by id, with the rule for which of them routing may offer.

    ``clock`` is monotonic seconds; tests replace it to age heartbeats
    without sleeping.
    """

    def __init__(
        self, timeout_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.timeout_s = timeout_s
        self.clock = clock
        self._edges: dict[str, EdgeRecord] = {}

    def register(self, registration: EdgeRegistration) -> EdgeRecord:
        """Add an edge, or replace its record when it registers again.

        Registering again clears a drain request: it comes from a new
        process under the same id (the drained one exits), or from the
        same process after an origin restart, which forgot the request.
        """
        known = registration.edge_id in self._edges
        record = EdgeRecord(registration=registration, last_seen=self.clock())
        self._edges[registration.edge_id] = record
        logger.info(
            "edge %s %s at %s",
            registration.edge_id,
            "registered again" if known else "registered",
            registration.public_url,
            extra={"edge_id": registration.edge_id},
        )
        return record

    def heartbeat(self, edge_id: str, heartbeat: EdgeHeartbeat) -> EdgeRecord:
        """Record a heartbeat. Raises :class:`UnknownEdge`: register first."""
        record = self._edges.get(edge_id)
        if record is None:
            raise UnknownEdge(edge_id)
        if heartbeat.draining and not record.heartbeat.draining:
            logger.info("edge %s is draining", edge_id, extra={"edge_id": edge_id})
        record.heartbeat = heartbeat
        record.last_seen = self.clock()
        return record

    def request_drain(self, edge_id: str) -> EdgeRecord:
        """Stop offering the edge now and ask it to drain at its next
        heartbeat. Asking again changes nothing.

        Raises :class:`UnknownEdge`.
        """
        record = self._edges.get(edge_id)
        if record is None:
            raise UnknownEdge(edge_id)
        if not record.drain_requested:
            record.drain_requested = True
            logger.info(
                "edge %s: drain requested; routing no longer offers it",
                edge_id,
                extra={"edge_id": edge_id},
            )
        return record

    def age(self, record: EdgeRecord) -> float:
        """Seconds since the edge was last heard from."""
        return max(0.0, self.clock() - record.last_seen)

    def healthy(self, record: EdgeRecord) -> bool:
        """Whether routing may offer the edge: heard from lately, not draining."""
        return self.age(record) <= self.timeout_s and not record.draining

    def all(self) -> list[EdgeRecord]:
        """Every registered edge, by id."""
        return [self._edges[key] for key in sorted(self._edges)]

    def routable(self) -> list[EdgeRecord]:
        """The edges routing may offer."""
        return [record for record in self.all() if self.healthy(record)]
