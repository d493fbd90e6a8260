"""bench's memory figure is the whole process tree: a build and its engine child count together."""

from __future__ import annotations

import sys

from bench.measure import measure

HOLD = 150 << 20  # bytes each process keeps resident


def test_peak_memory_adds_up_the_parent_and_its_child():
    child = f"b = b'\\x01' * {HOLD}; import time; time.sleep(1.5)"
    parent = (
        "import subprocess, sys, time\n"
        f"a = b'\\x01' * {HOLD}\n"
        f"subprocess.run([sys.executable, '-c', {child!r}], check=True)\n"
    )
    m = measure([sys.executable, "-c", parent])
    # Each process alone holds about 150 MB (+ the interpreter); only their sum is over 300 MB.
    assert m["peak_rss_mb"] >= 2 * HOLD / 2**20, m["peak_rss_mb"]
