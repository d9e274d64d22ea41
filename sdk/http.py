"""HTTP clients for the SDK, cheap to make by the thousand.

An ``httpx`` client builds a TLS context when it is made, which costs tens
of milliseconds of CPU: a process that opens many sessions (a load test, a
kiosk, a proxy) would spend seconds on it. Every client made here shares one
context per process.
"""

from __future__ import annotations

import functools
import ssl

import httpx


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The process's default TLS context, made once."""
    return ssl.create_default_context()


def http_client(
    local_address: str | None = None, timeout_s: float = 10.0
) -> httpx.AsyncClient:
    """A new async HTTP client on the shared TLS context.

    ``local_address`` binds its sockets to that address of this host.
    """
    transport = httpx.AsyncHTTPTransport(
        verify=tls_context(), local_address=local_address
    )
    return httpx.AsyncClient(timeout=timeout_s, transport=transport)
