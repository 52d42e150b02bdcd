"""benchmarks/event_log.py runs end to end on a small log: the bundles are written and every row is printed (no
timing assertions)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "event_log.py"


def test_tiny_run_prints_a_row_per_reading_and_the_ratios():
    done = subprocess.run([sys.executable, str(SCRIPT), "--segments", "2100", "--events", "2", "--delay-ms", "1",
                           "--repeats", "1"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert "2,100 segments of 2 event(s) written" in lines[0] and "2 bundles of 1000 written" in lines[0]
    rows = [line.split("|")[1:3] for line in lines if line.startswith(("| local disk", "| +1 ms"))]
    assert [(a.strip(), b.strip()) for a, b in rows] == [("local disk", "bundles"), ("local disk", "segments alone"),
                                                         ("+1 ms each", "bundles"), ("+1 ms each", "segments alone")]
    assert sum(line.startswith(("local disk: open", "+1 ms: open")) for line in lines) == 2
    overlays = [line.split("|")[1:4] for line in lines if line.startswith(("| every event", "| cut at"))]
    assert [(a.strip(), int(c.replace(",", ""))) for a, _, c in overlays] == [  # 4,200 events; the last 10% held
        ("every event", 4200), ("cut at segment 1,890", 420)]
    assert any(line.startswith("cut overlay: start") for line in lines)
