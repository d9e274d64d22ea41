"""The SDK's choice among probed candidates."""

from __future__ import annotations

from liveclass.sdk.route import Candidate, rank_by_rtt


def _candidates(*names: str) -> list[Candidate]:
    return [
        Candidate(
            edge_id=n,
            url=f"http://{n}",
            ws_url=f"ws://{n}/v1/ws",
            ping_url=f"http://{n}/v1/ping",
        )
        for n in names
    ]


def test_about_equal_times_keep_the_origins_ranking() -> None:
    near, far = _candidates("near", "far")
    assert rank_by_rtt([near, far], [0.0012, 0.0009]) == [near, far]


def test_a_clearly_faster_edge_goes_first() -> None:
    near, far = _candidates("near", "far")
    assert rank_by_rtt([near, far], [0.080, 0.020]) == [far, near]


def test_unanswered_candidates_come_last_in_origin_order() -> None:
    a, b, c = _candidates("a", "b", "c")
    assert rank_by_rtt([a, b, c], [None, None, 0.05]) == [c, a, b]
    assert rank_by_rtt([a, b, c], [None, None, None]) == [a, b, c]
