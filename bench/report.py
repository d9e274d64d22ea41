"""The benchmark's table: figures per server, then each as a ratio to the edge."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Getter = Callable[[dict[str, Any]], float | None]

COLUMNS: list[tuple[str, Getter]] = [
    ("joins/s", lambda r: _get(r, "join", "joins_per_s")),
    ("KB/conn", lambda r: _get(r, "idle", "kb_per_connection")),
    ("bcast del/s", lambda r: _get(r, "broadcast", "delivered_per_s")),
    ("p50 ms", lambda r: _get(r, "broadcast", "p50_ms")),
    ("p99 ms", lambda r: _get(r, "broadcast", "p99_ms")),
    ("lost", lambda r: _get(r, "broadcast", "lost")),
    ("chat del/s", lambda r: _get(r, "chat", "delivered_per_s")),
    ("p50 ms", lambda r: _get(r, "chat", "p50_ms")),
    ("p99 ms", lambda r: _get(r, "chat", "p99_ms")),
    ("lost", lambda r: _get(r, "chat", "lost")),
    ("slow p99", lambda r: _get(r, "slow", "p99_ms")),
    ("slow closed", lambda r: _get(r, "slow", "slow_closed")),
    ("srv CPU s", lambda r: r.get("server_cpu_s")),
]
"""Table columns: heading and how to read the figure from a server's result."""


def _get(result: dict[str, Any], phase: str, key: str) -> float | None:
    value = result.get(phase, {}).get(key)
    return float(value) if isinstance(value, int | float) else None


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 10_000:
        return f"{value / 1000:.1f}k"
    if value == int(value):
        return f"{int(value)}"
    return f"{value:.1f}"


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or base is None:
        return "-"
    if base == 0:
        return "=" if value == 0 else "inf"
    return f"{value / base:.2f}x"


def render(rows: list[list[str]]) -> str:
    """Rows of cells as aligned text: the first column to the left, the others
    to the right, a rule under the first row (the heading)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])]
        cells += [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def percentile_ms(sorted_ns: list[int], q: float) -> float | None:
    """The ``q`` quantile (0 to 1) of sorted nanoseconds, in milliseconds to
    one decimal; None when there are none."""
    if not sorted_ns:
        return None
    at = min(len(sorted_ns) - 1, int(q * len(sorted_ns)))
    return round(sorted_ns[at] / 1e6, 1)


def slow_codes(result: dict[str, Any]) -> str:
    """How the slow readers were closed, e.g. ``4009: 500``."""
    codes = result.get("slow", {}).get("slow_close_codes") or {}
    return ", ".join(f"{code}: {n}" for code, n in codes.items()) or "none"


def table(
    results: dict[str, dict[str, Any]], legend: str = "", base: str = "edge"
) -> str:
    """The figures table, and the ratio table when ``base`` was measured;
    ``legend`` goes above them."""
    head = ["server", *(name for name, _ in COLUMNS)]
    rows = [head]
    for server, result in results.items():
        if "error" in result:
            rows.append([server, *(["-"] * len(COLUMNS))])
            continue
        rows.append([server, *(_fmt(get(result)) for _, get in COLUMNS)])
    out = [legend, "", render(rows)] if legend else [render(rows)]

    if base in results and "error" not in results[base]:
        ratio_rows = [[f"ratio to {base}", *head[1:]]]
        for server, result in results.items():
            if "error" in result:
                continue
            ratio_rows.append(
                [
                    server,
                    *(_ratio(get(result), get(results[base])) for _, get in COLUMNS),
                ]
            )
        out += ["", render(ratio_rows)]

    out += ["", "slow readers closed (close code: count); generator CPU % per phase:"]
    for server, result in results.items():
        if "error" in result:
            out.append(f"  {server}: failed: {result['error']}")
            continue
        gen = ", ".join(
            f"{phase} {result[phase]['generator_cpu_pct']}%"
            for phase in ("join", "broadcast", "chat", "slow")
            if phase in result
        )
        out.append(f"  {server}: closed {slow_codes(result)}; generator {gen}")

    out += ["", "p50/p99 ms to the moment the generator read it (its own pass over"]
    out += ["every socket included):"]
    for server, result in results.items():
        read = ", ".join(
            f"{phase} {result[phase].get('read_p50_ms')}/"
            f"{result[phase].get('read_p99_ms')}"
            for phase in ("broadcast", "chat", "slow")
            if phase in result
        )
        if read:
            out.append(f"  {server}: {read}")
    return "\n".join(out)
