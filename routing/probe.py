"""Measuring round-trip time to candidate edges, all at once.

Used by the SDK on the client's side; needs only ``httpx``.
"""

from __future__ import annotations

import asyncio
import logging
import time

import httpx

logger = logging.getLogger(__name__)


async def probe(
    urls: list[str],
    # The bound applies to each GET, not the call, so it is a parameter.
    timeout: float = 1.0,
    attempts: int = 2,
    local_address: str | None = None,
    client: httpx.AsyncClient | None = None,
) -> list[tuple[str, float | None]]:
    """Round-trip times in seconds to each URL, fastest first.

    Each URL gets ``attempts`` HTTP GETs in sequence, every one bounded by
    ``timeout`` seconds, and keeps the fastest; all URLs are probed in
    parallel, so the whole call takes at most ``attempts * timeout``. A URL
    that never answered with a 2xx status within the timeout comes last with
    ``None``; unreachable URLs keep their given order. Never raises for a
    bad or unreachable URL. ``local_address`` binds the probes' sockets to
    that address of this host (on a multi-homed host, the one the session
    will use). ``client``, if given, is used instead of a new one (and
    ``local_address`` is then the client's business): making an HTTP client
    costs milliseconds of CPU, which thousands of joins notice.
    """
    if not urls:
        return []
    attempts = max(1, attempts)
    # One client for every URL: the second GET to an edge reuses the
    # connection of the first, so the minimum excludes TCP and TLS setup.
    if client is not None:
        rtts = await asyncio.gather(
            *(_measure(client, url, timeout, attempts) for url in urls)
        )
    else:
        transport = httpx.AsyncHTTPTransport(local_address=local_address)
        async with httpx.AsyncClient(
            timeout=timeout, follow_redirects=False, transport=transport
        ) as http:
            rtts = await asyncio.gather(
                *(_measure(http, url, timeout, attempts) for url in urls)
            )
    results = list(zip(urls, rtts, strict=True))
    order = sorted(
        range(len(results)),
        key=lambda i: (results[i][1] is None, results[i][1] or 0.0, i),
    )
    return [results[i] for i in order]


async def _measure(
    http: httpx.AsyncClient, url: str, per_try_s: float, attempts: int
) -> float | None:
    """The fastest of ``attempts`` round trips to ``url``, or ``None``."""
    best: float | None = None
    for _ in range(attempts):
        start = time.perf_counter()
        try:
            async with asyncio.timeout(per_try_s):
                response = await http.get(url)
        except (TimeoutError, httpx.TimeoutException):
            # A slow edge already cost a full timeout; another try would
            # only delay the answer.
            logger.debug("probe %s: no answer within %.2fs", url, per_try_s)
            break
        except (httpx.HTTPError, ValueError) as exc:
            logger.debug("probe %s: %s", url, exc)
            continue
        elapsed = time.perf_counter() - start
        if not response.is_success:
            # A draining or failing edge answers 503; joining it would fail.
            logger.debug("probe %s: HTTP %d", url, response.status_code)
            continue
        best = elapsed if best is None else min(best, elapsed)
    return best
