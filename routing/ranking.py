"""Ranking edges for one client by distance, load and class affinity.

A candidate's ``score`` is a cost in kilometre-equivalents: lower is better.
Kilometres are the common unit because distance is what the SDK's later
latency probe measures most directly; light in fibre covers about 100 km of
path per millisecond of round trip, so 1,000 km of score is roughly 10 ms.

- **Distance**: the great-circle distance from the client, in km.
- **Load**: ``LOAD_WEIGHT_KM * load / (1 - load)``. This is the shape of an
  M/M/1 queue's waiting time: small while an edge is lightly loaded (0.5
  costs 500 km), steep near full (0.9 costs 4,500 km, 0.95 costs 9,500 km),
  so a nearly full edge loses to a farther idle one before it starts
  refusing members. An edge at or above full load (``load >= 1``) would
  refuse with ``EDGE_FULL``; it ranks after every other edge instead of
  being dropped, because the load the origin sees is a few seconds old.
- **Affinity**: edges that do not already serve the class pay
  ``NEW_CLASS_PENALTY_KM``. A serving edge already reads the class log and
  caches its media segments; opening the class on another edge costs the
  origin one more log reader and media pull. The preference ends at
  ``AFFINITY_MAX_LOAD``: adding members to a nearly full edge would push
  the class's next arrivals elsewhere anyway.

Without a client location, distance counts as zero and the order is by load
and affinity alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from liveclass.routing.geo import haversine_km

LOAD_WEIGHT_KM = 500.0
"""The cost of an edge at half load, in km."""

NEW_CLASS_PENALTY_KM = 1000.0
"""The cost of opening the class on an edge that does not serve it yet."""

AFFINITY_MAX_LOAD = 0.85
"""Above this load, serving the class no longer earns a preference."""

FULL_PENALTY_KM = 1_000_000.0
"""The cost of a full edge: more than any distance on Earth (about 20,000 km),
finite so that scores stay valid JSON."""

_MAX_LOAD = 0.99
"""Loads are capped here in the load term, which keeps it finite."""


@dataclass(frozen=True)
class EdgeInfo:
    """What the origin knows about one healthy edge."""

    edge_id: str
    url: str
    latitude: float
    longitude: float
    load: float
    """Members over capacity: 0 idle, 1 full."""
    serves_class: bool


@dataclass(frozen=True)
class Ranked:
    """One edge with its distance from the client and its cost."""

    edge: EdgeInfo
    distance_km: float
    """0.0 when the client's location is unknown."""
    score: float
    """Cost in kilometre-equivalents; lower is better (see the module doc)."""


def rank(
    client: tuple[float, float] | None, edges: list[EdgeInfo], limit: int = 3
) -> list[Ranked]:
    """The ``limit`` best edges for a client at ``(latitude, longitude)``.

    Best first; ties go to the lower ``edge_id`` so that answers are stable.
    Raises ``ValueError`` for a negative ``limit``.
    """
    if limit < 0:
        raise ValueError(f"limit must be 0 or more, not {limit}")
    ranked = [_rank_one(client, edge) for edge in edges]
    ranked.sort(key=lambda r: (r.score, r.edge.edge_id))
    return ranked[:limit]


def _rank_one(client: tuple[float, float] | None, edge: EdgeInfo) -> Ranked:
    distance = 0.0
    if client is not None:
        distance = haversine_km(client[0], client[1], edge.latitude, edge.longitude)
    return Ranked(edge=edge, distance_km=distance, score=distance + _cost(edge))


def _cost(edge: EdgeInfo) -> float:
    """The load and affinity terms of an edge's score."""
    load = edge.load
    if math.isnan(load) or load >= 1.0:
        # Unknown or full: after everything else, still ordered by distance.
        return FULL_PENALTY_KM
    load = min(max(load, 0.0), _MAX_LOAD)
    cost = LOAD_WEIGHT_KM * load / (1.0 - load)
    if not (edge.serves_class and load <= AFFINITY_MAX_LOAD):
        cost += NEW_CLASS_PENALTY_KM
    return cost
