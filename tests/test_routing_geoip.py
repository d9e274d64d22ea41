"""GeoIP: a database built here read back, and MaxMind's test database."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from liveclass.routing.geoip import GeoIPReader, Location
from liveclass.routing.geoip_build import write_city_database

MAXMIND_CITY = Path(__file__).parents[2] / "shared" / "geoip" / "GeoIP2-City-Test.mmdb"

NETWORKS = {
    "81.2.69.0/24": Location(51.5142, -0.0931, "GB-ENG"),
    "89.160.0.0/16": Location(58.4167, 15.6167, "Östergötland"),
    "2001:218::/32": Location(35.68536, 139.75309, "JP"),
    "175.16.0.0/12": Location(43.88, 125.3228, ""),
}


@pytest.fixture
def built(tmp_path: Path) -> GeoIPReader:
    path = tmp_path / "city.mmdb"
    write_city_database(path, NETWORKS)
    reader = GeoIPReader(path)
    yield reader  # type: ignore[misc]
    reader.close()


def test_built_database_reads_back(built: GeoIPReader) -> None:
    assert built.locate("81.2.69.142") == Location(51.5142, -0.0931, "GB-ENG")
    assert built.locate("89.160.20.112") == Location(58.4167, 15.6167, "Östergötland")
    assert built.locate("2001:218::1") == Location(35.68536, 139.75309, "JP")
    assert built.locate("175.16.199.0") == Location(43.88, 125.3228, "")


def test_ipv4_mapped_address(built: GeoIPReader) -> None:
    assert built.locate("::ffff:81.2.69.142") == NETWORKS["81.2.69.0/24"]


@pytest.mark.parametrize(
    "ip",
    [
        "1.1.1.1",
        "127.0.0.1",
        "10.1.2.3",
        "192.168.0.1",
        "::1",
        "fe80::1",
        "224.0.0.1",
        "0.0.0.0",
        "not an ip",
        "",
        "81.2.69.142/24",
        "300.1.1.1",
    ],
)
def test_unknown_private_and_bad_input_give_none(built: GeoIPReader, ip: str) -> None:
    assert built.locate(ip) is None


def test_missing_database_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="liveclass.routing.geoip"):
        reader = GeoIPReader(tmp_path / "absent.mmdb")
        assert reader.locate("81.2.69.142") is None
        assert reader.locate("81.2.69.143") is None
        reader.close()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "absent.mmdb" in warnings[0].getMessage()


def test_garbage_file_gives_none(tmp_path: Path) -> None:
    path = tmp_path / "garbage.mmdb"
    path.write_bytes(b"not a database" * 10)
    reader = GeoIPReader(path)
    assert reader.locate("81.2.69.142") is None


def test_closed_reader_gives_none(built: GeoIPReader) -> None:
    built.close()
    assert built.locate("81.2.69.142") is None


def test_malformed_network_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="malformed network"):
        write_city_database(tmp_path / "x.mmdb", {"nope": Location(0, 0)})


@pytest.mark.skipif(
    not MAXMIND_CITY.exists(), reason="MaxMind test databases not beside the repo"
)
def test_maxmind_test_database() -> None:
    reader = GeoIPReader(MAXMIND_CITY)
    try:
        london = reader.locate("81.2.69.142")
        assert london is not None
        assert (london.latitude, london.longitude) == (51.5142, -0.0931)
        assert london.region == "England"
        milton = reader.locate("216.160.83.56")
        assert milton is not None and milton.latitude == pytest.approx(47.2513)
        japan = reader.locate("2001:218::")
        assert japan is not None and japan.longitude == pytest.approx(139.75309)
        assert japan.region == "JP"
        assert reader.locate("1.1.1.1") is None
    finally:
        reader.close()
