"""Where a client is, from its IP address: the origin's side of routing.

Needs ``geoip2`` (the server extra); the SDK never imports this module.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from dataclasses import dataclass

import geoip2.database
import geoip2.errors
import maxminddb

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Location:
    """A point on Earth and the name of the region it lies in."""

    latitude: float
    longitude: float
    region: str = ""


class GeoIPReader:
    """Looks addresses up in a MaxMind City database (GeoIP2 or GeoLite2).

    A missing or unreadable database is logged once at WARNING; every lookup
    then answers ``None``, so routing falls back to ranking by load alone
    instead of failing.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._reader: geoip2.database.Reader | None = None
        try:
            self._reader = geoip2.database.Reader(self.path)
        except FileNotFoundError:
            logger.warning(
                "GeoIP database %s not found; routing ignores distance",
                self.path,
            )
        except (OSError, maxminddb.InvalidDatabaseError) as exc:
            logger.warning(
                "GeoIP database %s unreadable (%s); routing ignores distance",
                self.path,
                exc,
            )

    def locate(self, ip: str) -> Location | None:
        """The location of ``ip``, or ``None`` if it is unknown.

        Bad input and addresses missing from the database give ``None``;
        this method never raises. Public databases hold no private or
        loopback networks, so those answer ``None`` there; a database of an
        operator's own (or the demo's) may place them.
        """
        if self._reader is None:
            return None
        address = _public_address(ip)
        if address is None:
            return None
        try:
            city = self._reader.city(address)
        except geoip2.errors.AddressNotFoundError:
            logger.debug("GeoIP: %s not in the database", address)
            return None
        except (geoip2.errors.GeoIP2Error, ValueError, TypeError) as exc:
            # TypeError: the file is not a City database (a Country one, say).
            logger.debug("GeoIP: lookup of %s failed: %s", address, exc)
            return None
        latitude, longitude = city.location.latitude, city.location.longitude
        if latitude is None or longitude is None:
            logger.debug("GeoIP: %s has no coordinates", address)
            return None
        region = (
            city.subdivisions.most_specific.name
            or city.city.name
            or city.country.iso_code
            or ""
        )
        return Location(latitude=latitude, longitude=longitude, region=region)

    def close(self) -> None:
        """Release the database file; later lookups answer ``None``."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None


def _public_address(ip: str) -> str | None:
    """``ip`` normalised, or ``None`` if it is malformed or cannot be located."""
    try:
        address = ipaddress.ip_address(str(ip).strip())
    except ValueError:
        logger.debug("GeoIP: %r is not an IP address", ip)
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        # Dual-stack sockets report IPv4 clients as ::ffff:a.b.c.d.
        address = address.ipv4_mapped
    if address.is_multicast or address.is_unspecified:
        return None
    return str(address)
