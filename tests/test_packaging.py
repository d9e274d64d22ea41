"""The distribution's shape: one ``liveclass`` package, parts beneath it."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PARTS = {"sdk", "edge_node", "origin", "routing", "cli"}


@pytest.mark.slow
def test_wheel_installs_every_part_under_liveclass_only(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp_path, ROOT],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("liveclass-*.whl")
    names = zipfile.ZipFile(wheel).namelist()

    tops = {name.split("/")[0] for name in names}
    assert {t for t in tops if not t.endswith((".dist-info", ".data"))} == {"liveclass"}
    subpackages = {n.split("/")[1] for n in names if n.startswith("liveclass/")}
    assert subpackages >= PARTS
    assert "liveclass/origin/migrations/env.py" in names
    assert "liveclass/sdk/py.typed" in names


def test_sdk_imports_no_server_dependency() -> None:
    code = (
        "import sys, liveclass.sdk, liveclass.routing.ranking, "
        "liveclass.routing.probe\n"
        "bad = {'aiohttp', 'sqlalchemy', 'redis', 'geoip2', 'aiortc', 'av'}\n"
        "print(sorted(bad & set(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    )
    assert out.stdout.strip() == "[]"
