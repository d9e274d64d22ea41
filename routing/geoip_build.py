"""Write a small MaxMind City database, for demos and tests.

Production uses a real GeoIP2 or GeoLite2 City database; this builds one of a
few networks so that the project runs without downloading anything.
"""

from __future__ import annotations

import os
import re
from typing import Any

from mmdb_writer import MMDBWriter
from netaddr import IPNetwork, IPSet

from liveclass.routing.geoip import Location

_ISO_REGION = re.compile(r"^([A-Z]{2})(?:-[A-Z0-9]{1,3})?$")


def write_city_database(
    path: str | os.PathLike[str], networks: dict[str, Location]
) -> None:
    """Write a City database mapping each CIDR network to a location.

    ``networks`` maps ``"81.2.69.0/24"`` (IPv4 or IPv6) to a
    :class:`Location`. The region is written as the network's subdivision and
    city name, which is what :meth:`GeoIPReader.locate` reads back; a region
    shaped like an ISO 3166 code (``"GB"`` or ``"GB-ENG"``) also sets the
    country. Raises ``ValueError`` for a malformed network.
    """
    # An IPv6 tree with the IPv4 space under ::/96 answers both families,
    # as MaxMind's own City databases do.
    writer = MMDBWriter(
        ip_version=6,
        ipv4_compatible=True,
        database_type="GeoIP2-City",
        languages=["en"],
        description="liveclass test City database",
    )
    for cidr, location in networks.items():
        try:
            network = IPNetwork(cidr)
        except Exception as exc:  # netaddr raises several unrelated types
            raise ValueError(f"malformed network {cidr!r}: {exc}") from None
        writer.insert_network(IPSet([network]), _record(location))
    writer.to_db_file(os.fspath(path))


def _record(location: Location) -> dict[str, Any]:
    """The fields of a City record that ``geoip2``'s ``city()`` reads."""
    record: dict[str, Any] = {
        "location": {
            "latitude": float(location.latitude),
            "longitude": float(location.longitude),
            "accuracy_radius": 100,
        },
    }
    if location.region:
        names = {"en": location.region}
        record["subdivisions"] = [{"names": names}]
        record["city"] = {"names": names}
        match = _ISO_REGION.match(location.region)
        if match:
            record["country"] = {"iso_code": match.group(1)}
    return record
