"""benchmarks/serve_load.py's in-process timings (benchmarks/serve_inprocess.py) on the session's tiny model (the
script's HTTP load needs its own Ray and Serve and runs only in the benchmark): the 100k-catalog user row must carry
every user-side field, history included, or the fast path fails, and its top-10 must equal the full forward's;
the open-jobs timing must count the jobs open now and time both scans."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "serve_inprocess.py"

pytestmark = pytest.mark.timeout(120)


def timings():
    spec = importlib.util.spec_from_file_location("serve_inprocess", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_catalog_timing_ranks_a_tiled_catalog_exactly(tiny):
    timing = timings().catalog_timing(str(tiny.entry), 3_000, repeats=2)
    assert timing["jobs"] == 3_000 and timing["same_top10"], timing
    assert timing["max_abs_diff"] < 1e-4 and timing["fast_s"] > 0 and timing["full_s"] > 0, timing


def test_open_timing_counts_the_open_jobs_and_times_both_scans(tiny):
    from serve.scorer import Scorer

    users = list(tiny.data.frames["train"]["user_id"].unique()[:4])
    timing = timings().open_timing(str(tiny.entry), users)
    assert timing["jobs"] == Scorer.load(tiny.entry / "v0001").n_jobs - 1
    assert 0 < timing["open"] < timing["jobs"] and timing["open_ms"] > 0 and timing["whole_ms"] > 0, timing
