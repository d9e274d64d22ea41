"""Which local addresses WebRTC advertises as ICE host candidates.

aioice gathers host candidates from every interface except loopback: its
``get_host_addresses`` skips 127.0.0.1. liveclass wants the opposite by
default: only loopback, so that tests and the demo never send a packet off
the machine, and an operator's explicit list of interfaces otherwise. aioice
looks the function up in its module on every gathering, so
:func:`install` replaces it there with one that reads the current
:func:`advertise` setting.

The setting is a context variable: aiortc gathers inside
``RTCPeerConnection.setLocalDescription``, in the caller's task, so one
process (an edge and a publisher in a test) can use different lists for
different connections.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Iterator, Sequence
from contextvars import ContextVar

import aioice.ice
import ifaddr

LOOPBACK = ("127.0.0.1",)

_addresses: ContextVar[tuple[str, ...]] = ContextVar("ice_addresses", default=LOOPBACK)


def host_addresses(interfaces: Sequence[str]) -> tuple[str, ...]:
    """The IPv4 addresses named by ``interfaces``: addresses or interface names.

    An empty list means loopback only. Raises :class:`ValueError` for a name
    that is neither a local interface nor an IP address.
    """
    if not interfaces:
        return LOOPBACK
    adapters = {a.nice_name: a for a in ifaddr.get_adapters()}
    addresses: list[str] = []
    for name in interfaces:
        adapter = adapters.get(name)
        if adapter is not None:
            addresses += [ip.ip for ip in adapter.ips if isinstance(ip.ip, str)]
            continue
        try:
            addresses.append(str(ipaddress.ip_address(name)))
        except ValueError:
            raise ValueError(
                f"ICE interface {name!r} is neither a local interface "
                f"({', '.join(sorted(adapters))}) nor an IP address"
            ) from None
    return tuple(dict.fromkeys(addresses))


@contextlib.contextmanager
def advertise(addresses: Sequence[str]) -> Iterator[None]:
    """Within the block, ICE gathering offers host candidates on ``addresses``."""
    install()
    token = _addresses.set(tuple(addresses))
    try:
        yield
    finally:
        _addresses.reset(token)


def _gather(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    return [
        address
        for address in _addresses.get()
        if (use_ipv6 if ":" in address else use_ipv4)
    ]


def install() -> None:
    """Route aioice's host address lookup through :func:`advertise`.

    Idempotent. Outside an :func:`advertise` block, gathering offers loopback
    only.
    """
    aioice.ice.get_host_addresses = _gather


def public_candidates(sdp: str, public_ip: str) -> str:
    """``sdp`` with each host candidate's address replaced by ``public_ip``.

    For an edge behind a one-to-one NAT: it binds to its private address and
    tells peers the public one, which the NAT forwards to it.
    """
    lines = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:") and " typ host" in line:
            parts = line.split(" ")
            parts[4] = public_ip  # foundation component transport priority ADDRESS
            line = " ".join(parts)
        elif line.startswith("c=IN IP4 "):
            line = f"c=IN IP4 {public_ip}"  # the default candidate's address
        lines.append(line)
    return "\r\n".join(lines) + "\r\n"
