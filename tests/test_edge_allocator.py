"""The C allocator is tuned for a server where it can be (glibc)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from liveclass.edge_node.allocator import tune_malloc

GLIBC = platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_freed_memory_stays_in_the_process_after_tuning() -> None:
    # Without tuning, glibc hands a freed 8 MiB heap top back to the kernel;
    # tuned, the process keeps it, and its resident size says so.
    script = """
import sys
from liveclass.edge_node.allocator import tune_malloc
if sys.argv[1] == "tuned":
    assert tune_malloc()

def rss_kb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS"))

# Small blocks, so that they come from the heap even untuned.
blocks = [bytearray(64 * 1024) for _ in range(128)]
before = rss_kb()
del blocks
print(before - rss_kb())
"""
    freed = {}
    for mode in ("default", "tuned"):
        done = subprocess.run(
            [sys.executable, "-c", script, mode],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        freed[mode] = int(done.stdout.strip())
    assert freed["default"] > 4 * 1024  # KiB given back
    assert freed["tuned"] < 1024


def test_tuning_says_whether_it_took() -> None:
    assert tune_malloc() is GLIBC
