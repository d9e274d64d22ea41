"""Asking the origin where to go, and ordering the answer by measured latency.

The origin's answer is parsed with the SDK's own small models rather than
the origin's, because the SDK never imports server code; unknown fields are
ignored so that the origin can add some.
"""

from __future__ import annotations

import logging

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError

from liveclass.routing.probe import probe
from liveclass.sdk.errors import (
    BadToken,
    ClassEnded,
    JoinRefused,
    OriginUnavailable,
    TokenExpired,
)
from liveclass.sdk.protocol import CloseCode

logger = logging.getLogger(__name__)


class Candidate(BaseModel):
    """One edge the origin proposes, best first by its ranking."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    edge_id: str
    url: str = ""
    ws_url: str
    ping_url: str
    distance_km: float = 0.0
    load: float = 0.0
    serves_class: bool = False
    score: float = 0.0


class Route(BaseModel):
    """The origin's answer to ``GET /v1/route``."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    class_id: str
    client_ip: str = ""
    candidates: list[Candidate]


async def fetch_route(http: httpx.AsyncClient, origin_url: str, token: str) -> Route:
    """Ask the origin which edges to try.

    Raises :class:`BadToken`, :class:`TokenExpired` or :class:`ClassEnded`
    when the origin refuses the token, :class:`JoinRefused` for another 4xx
    answer and :class:`OriginUnavailable` when it cannot answer.
    """
    url = origin_url.rstrip("/") + "/v1/route"
    try:
        response = await http.get(url, headers={"Authorization": f"Bearer {token}"})
    except httpx.HTTPError as exc:
        raise OriginUnavailable(
            f"cannot reach the origin at {url} ({exc!r}); "
            "check the URL and the network, then retry"
        ) from None
    if response.status_code >= 500:
        raise OriginUnavailable(
            f"the origin answered HTTP {response.status_code}; retry in a few seconds"
        )
    if response.status_code >= 400:
        raise _refusal(response)
    try:
        return Route.model_validate_json(response.content)
    except ValidationError as exc:
        raise OriginUnavailable(
            f"the origin's route answer is malformed ({exc.error_count()} errors); "
            "the origin and SDK versions may not match"
        ) from None


def _refusal(response: httpx.Response) -> JoinRefused:
    reason = response.text[:200]
    if response.status_code == 401:
        if "expired" in reason.lower():
            return TokenExpired(CloseCode.TOKEN_EXPIRED, reason)
        return BadToken(CloseCode.BAD_TOKEN, reason)
    if response.status_code in (409, 410):  # the origin answers 409 for ended
        return ClassEnded(CloseCode.CLASS_ENDED, reason)
    return JoinRefused(response.status_code, reason)


RTT_TOLERANCE_S = 0.005
"""Round-trip times closer than this (or than 20% of the faster) count as
equal: the origin's ranking (distance, load, class affinity) then decides,
so measurement noise never sends a member to a farther, busier edge."""


async def order_by_latency(
    candidates: list[Candidate],
    probe_timeout: float,
    client: httpx.AsyncClient | None = None,
) -> list[Candidate]:
    """The candidates fastest first; those that did not answer keep the
    origin's order, after the others (their WebSocket may still work).

    Candidates whose round-trip times are about equal (see
    :data:`RTT_TOLERANCE_S`) keep the origin's order among themselves.
    """
    if len(candidates) <= 1:
        return list(candidates)
    results = await probe(
        [c.ping_url for c in candidates],
        timeout=probe_timeout,
        client=client,
    )
    rtt = dict(results)
    logger.debug(
        "probed %s", ", ".join(f"{c.edge_id}={rtt[c.ping_url]}" for c in candidates)
    )
    return rank_by_rtt(candidates, [rtt[c.ping_url] for c in candidates])


def rank_by_rtt(
    candidates: list[Candidate], rtts: list[float | None]
) -> list[Candidate]:
    """Order candidates (given in the origin's order) by measured ``rtts``.

    The first is the origin's best among those within the tolerance of the
    fastest; the others follow by round-trip time, unanswered ones last.
    """
    answered = [(r, i) for i, r in enumerate(rtts) if r is not None]
    if not answered:
        return list(candidates)
    fastest = min(r for r, _ in answered)
    slack = max(RTT_TOLERANCE_S, fastest * 0.2)
    first = min(i for r, i in answered if r <= fastest + slack)
    rest = sorted((r, i) for r, i in answered if i != first)
    order = [first, *(i for _, i in rest)]
    order += [i for i, r in enumerate(rtts) if r is None]
    return [candidates[i] for i in order]
