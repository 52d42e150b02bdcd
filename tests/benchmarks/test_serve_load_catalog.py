"""benchmarks/serve_load.py's 100k-catalog timing, in process on the session's tiny model (the script's HTTP load
needs its own Ray and Serve and runs only in the benchmark): the user row it ranks must carry every user-side
field, history included, or the fast path fails; the top-10 must equal the full forward's."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "serve_load.py"

pytestmark = pytest.mark.timeout(120)


def test_catalog_timing_ranks_a_tiled_catalog_exactly(tiny):
    spec = importlib.util.spec_from_file_location("serve_load", SCRIPT)
    serve_load = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(serve_load)
    timing = serve_load.catalog_timing(str(tiny.entry), 3_000, repeats=2)
    assert timing["jobs"] == 3_000 and timing["same_top10"], timing
    assert timing["max_abs_diff"] < 1e-4 and timing["fast_s"] > 0 and timing["full_s"] > 0, timing
