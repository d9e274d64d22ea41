"""The address a request came from, seen through trusted proxies."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(cidrs: Sequence[str]) -> list[Network]:
    """The networks of ``cidrs``. Raises ValueError on a malformed one."""
    return [ipaddress.ip_network(cidr, strict=False) for cidr in cidrs]


def _trusted(address: str, proxies: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in proxies)


def client_address(
    remote: str | None, forwarded_for: str | None, proxies: Sequence[Network]
) -> str:
    """The client's address.

    ``X-Forwarded-For`` is believed only when the peer (``remote``) is a
    trusted proxy. Each proxy appends the address it received from, so the
    list is read from the right: trusted proxies are skipped and the first
    untrusted address is the client; everything left of it could have been
    written by the client itself. A malformed entry ends the walk at the
    last good address.
    """
    address = remote or ""
    if not forwarded_for or not _trusted(address, proxies):
        return address
    for entry in reversed(forwarded_for.split(",")):
        candidate = entry.strip()
        try:
            ipaddress.ip_address(candidate)
        except ValueError:
            return address
        address = candidate
        if not _trusted(candidate, proxies):
            return candidate
    # Every hop was a trusted proxy: the left-most is as close as we get.
    return address
