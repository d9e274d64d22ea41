"""The benchmarks run end to end in quick mode: the fan-out finds no loss,
the reconciliation poll is exact."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_quick_run_against_bare_asyncio_and_the_edge(tmp_path: Path) -> None:
    out = tmp_path / "fanout.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.fanout",
            "--servers",
            "asyncio,edge",
            "--clients",
            "200",
            "--seconds",
            "2",
            "--phases",
            "join,broadcast,chat",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=80,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]

    header = next(
        line for line in proc.stdout.splitlines() if line.startswith("server")
    )
    assert "bcast del/s" in header and "chat del/s" in header
    rows = {line.split()[0] for line in proc.stdout.splitlines() if line.strip()}
    assert {"asyncio", "edge"} <= rows

    results = json.loads(out.read_text())["servers"]
    for name in ("asyncio", "edge"):
        result = results[name]
        assert result["join"]["joined"] == 200, result["join"]
        for phase in ("broadcast", "chat"):
            assert result[phase]["delivered_per_s"] > 0, (name, result[phase])
            assert result[phase]["lost"] == 0, (name, result[phase])
            # Sampled clients read the kernel's receive time: never after the
            # generator read the data, and never before it was sent.
            measured = result[phase]
            assert 0 < measured["p50_ms"] <= measured["read_p50_ms"], measured
            assert measured["p99_ms"] <= measured["read_p99_ms"], measured
    assert results["edge"]["broadcast"]["seq_gaps"] == 0
    assert results["edge"]["chat"]["refused_rate_limited"] == 0


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="needs the redis-server binary"
)
def test_reconcile_quick_run_is_exact(tmp_path: Path) -> None:
    # SQLite and a Redis of the run's own: only servers the run starts.
    out = tmp_path / "reconcile.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.reconcile",
            "--students",
            "60",
            "--vote-seconds",
            "1",
            "--database-url",
            f"sqlite+aiosqlite:///{tmp_path}/origin.db",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=80,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert "origin messages per vote" in proc.stdout

    result = json.loads(out.read_text())
    poll = result["poll"]
    assert poll["joined"] == 60 and poll["moved"] == 6, poll
    assert poll["votes_sent"] == 80 and poll["changed"] == 20, poll
    assert poll["results_received"] == 60 and poll["results_exact"], poll
    assert poll["seq_gaps"] == 0 and poll["errors"] == 0, poll
    assert result["origin_stored"]["counts"] == poll["expected"]
    assert result["goals"]["exact"]
    # Every vote reached the log in a batch; the origin read each entry.
    assert result["log"]["votes_in_batches"] == poll["votes_sent"]
    assert result["origin"]["entries_read"] == result["log"]["entries"]
    assert result["origin"]["replies"] > 0
