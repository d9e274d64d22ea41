"""The fan-out benchmark runs end to end in quick mode and finds no loss."""

from __future__ import annotations

import json
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
    assert results["edge"]["broadcast"]["seq_gaps"] == 0
    assert results["edge"]["chat"]["refused_rate_limited"] == 0
