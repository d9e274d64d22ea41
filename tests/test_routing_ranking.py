"""Edge ranking: distance, load and class affinity."""

from __future__ import annotations

import pytest

from liveclass.routing.ranking import EdgeInfo, rank

LONDON = (51.5074, -0.1278)


def edge(
    edge_id: str,
    lat: float,
    lon: float,
    load: float = 0.1,
    serves: bool = False,
) -> EdgeInfo:
    return EdgeInfo(edge_id, f"https://{edge_id}.test", lat, lon, load, serves)


LON = edge("lon", 51.5, -0.1)
PAR = edge("par", 48.86, 2.35)
FRA = edge("fra", 50.11, 8.68)
NYC = edge("nyc", 40.71, -74.0)
SYD = edge("syd", -33.87, 151.21)


def ids(ranked: list) -> list[str]:  # type: ignore[type-arg]
    return [r.edge.edge_id for r in ranked]


def test_nearest_first_at_equal_load() -> None:
    ranked = rank(LONDON, [SYD, NYC, FRA, PAR, LON], limit=5)
    assert ids(ranked) == ["lon", "par", "fra", "nyc", "syd"]
    assert ranked[0].distance_km < 5
    assert ranked[0].score < ranked[1].score


def test_limit() -> None:
    assert ids(rank(LONDON, [SYD, NYC, FRA, PAR, LON])) == ["lon", "par", "fra"]
    assert rank(LONDON, [LON], limit=0) == []
    with pytest.raises(ValueError):
        rank(LONDON, [LON], limit=-1)


def test_nearly_full_edge_loses_to_a_farther_idle_one() -> None:
    busy_london = edge("lon", 51.5, -0.1, load=0.95)
    ranked = rank(LONDON, [busy_london, PAR, FRA])
    assert ids(ranked) == ["par", "fra", "lon"]


def test_moderate_load_does_not_beat_distance() -> None:
    # Half load costs less than crossing the Atlantic.
    half_london = edge("lon", 51.5, -0.1, load=0.5)
    assert ids(rank(LONDON, [NYC, half_london])) == ["lon", "nyc"]


def test_full_edge_is_last_even_when_nearest() -> None:
    full_london = edge("lon", 51.5, -0.1, load=1.0, serves=True)
    over = edge("par", 48.86, 2.35, load=1.3)
    ranked = rank(LONDON, [full_london, over, SYD], limit=3)
    assert ids(ranked) == ["syd", "lon", "par"]


def test_affinity_prefers_serving_edge_nearby() -> None:
    serving_paris = edge("par", 48.86, 2.35, serves=True)
    assert ids(rank(LONDON, [LON, serving_paris], limit=2)) == ["par", "lon"]


def test_affinity_does_not_cross_an_ocean() -> None:
    serving_nyc = edge("nyc", 40.71, -74.0, serves=True)
    assert ids(rank(LONDON, [LON, serving_nyc], limit=2)) == ["lon", "nyc"]


def test_affinity_ends_when_nearly_full() -> None:
    crowded_paris = edge("par", 48.86, 2.35, load=0.9, serves=True)
    assert ids(rank(LONDON, [LON, crowded_paris], limit=2)) == ["lon", "par"]


def test_without_location_by_load_and_affinity() -> None:
    edges = [
        edge("a", 0, 0, load=0.7),
        edge("b", 10, 10, load=0.2),
        edge("c", 20, 20, load=0.4, serves=True),
        edge("d", 30, 30, load=1.0, serves=True),
    ]
    ranked = rank(None, edges, limit=4)
    assert ids(ranked) == ["c", "b", "a", "d"]
    assert all(r.distance_km == 0.0 for r in ranked)


def test_ties_are_stable() -> None:
    twins = [edge("b", 51.5, -0.1), edge("a", 51.5, -0.1)]
    assert ids(rank(LONDON, twins)) == ["a", "b"]
