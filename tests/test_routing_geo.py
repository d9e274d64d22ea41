"""Great-circle distances against known values."""

from __future__ import annotations

import math

import pytest

from liveclass.routing.geo import EARTH_RADIUS_KM, haversine_km


def test_same_point_is_zero() -> None:
    assert haversine_km(51.5, -0.12, 51.5, -0.12) == 0.0


def test_london_paris() -> None:
    # Published great-circle distance: about 344 km.
    assert haversine_km(51.5074, -0.1278, 48.8566, 2.3522) == pytest.approx(
        343.5, abs=1.0
    )


def test_new_york_los_angeles() -> None:
    # About 3,936 km on a sphere of mean radius.
    assert haversine_km(40.7128, -74.0060, 34.0522, -118.2437) == pytest.approx(
        3936, rel=0.005
    )


def test_quarter_and_half_circumference() -> None:
    assert haversine_km(0, 0, 0, 90) == pytest.approx(math.pi * EARTH_RADIUS_KM / 2)
    assert haversine_km(90, 0, -90, 0) == pytest.approx(math.pi * EARTH_RADIUS_KM)
    # Antipodes, where rounding could leave asin's domain.
    assert haversine_km(10, 20, -10, -160) == pytest.approx(math.pi * EARTH_RADIUS_KM)


def test_symmetric_and_wraps_the_date_line() -> None:
    assert haversine_km(1, 179.5, 1, -179.5) == pytest.approx(111.2, abs=0.5)
    assert haversine_km(10, 20, 30, 40) == haversine_km(30, 40, 10, 20)
