"""The demo's cast: where the edges stand, where students come from, and
what each student's link can carry."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Region:
    """A demo region: one edge and the loopback range its students use.

    Students bind their sockets to addresses in ``network`` (all of
    127.0.0.0/8 is this machine), and the demo's GeoIP database places that
    range at the region's coordinates, so the origin's routing sees real,
    different client addresses.
    """

    name: str
    edge_id: str
    latitude: float
    longitude: float
    network: str
    student_latitude: float
    student_longitude: float


REGIONS = (
    Region("europe", "edge-eu", 50.11, 8.68, "127.10.0.0/16", 48.86, 2.35),
    Region("americas", "edge-us", 38.95, -77.45, "127.20.0.0/16", 40.71, -74.0),
)


@dataclass
class DemoOptions:
    """What ``liveclass demo`` was asked to run."""

    students: int = 200
    duration_s: float = 60.0
    report: Path | None = None
    redis_url: str | None = None
    database_url: str | None = None
    data_dir: Path = field(default_factory=lambda: Path("liveclass-data/demo"))
    seed: int = 7
    tick_s: float = 5.0


@dataclass(frozen=True)
class StudentPlan:
    """One simulated student."""

    index: int
    user_id: str
    name: str
    address: str
    region: str
    link_share: float
    """Where the student's link sits between the slowest and fastest: 0..1."""
    chat_at: tuple[float, ...]
    raises_hand: bool
    changes_vote: bool


def student_address(region: Region, index: int) -> str:
    """A loopback address inside the region's range, unique per student."""
    base = region.network.split(".")
    return f"{base[0]}.{base[1]}.{index // 250}.{index % 250 + 2}"


def link_bps(share: float, lowest_bps: int, highest_bps: int) -> int:
    """A link speed for ``share`` (0..1) of the way up the HLS ladder.

    Speeds run from just above the lowest rendition (1.5 times its declared
    peak bandwidth, so it still plays without stalls) to well above the
    highest, on a log scale, so every rendition gets viewers.
    """
    low, high = lowest_bps * 1.5, max(highest_bps * 2.5, lowest_bps * 3.0)
    return int(low * (high / low) ** share)


def plan_students(count: int, duration_s: float, seed: int) -> list[StudentPlan]:
    """Spread ``count`` students over the regions and the link speeds."""
    rng = random.Random(seed)
    chat_window = (duration_s * 0.15, duration_s * 0.85)
    plans = []
    for i in range(count):
        region = REGIONS[i % len(REGIONS)]
        plans.append(
            StudentPlan(
                index=i,
                user_id=f"student-{i:05d}",
                name=f"Student {i}",
                address=student_address(region, i // len(REGIONS)),
                region=region.name,
                link_share=i / max(1, count - 1),
                chat_at=tuple(sorted(rng.uniform(*chat_window) for _ in range(2))),
                raises_hand=rng.random() < 0.1,
                changes_vote=rng.random() < 1 / 3,
            )
        )
    return plans
