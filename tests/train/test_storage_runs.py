"""A run directory on object storage is used once: a new run refuses an ``s3://`` URI that holds one (the
whole run on S3, with a lost worker, evaluate and resume, is tests/train/test_fault_tolerance.py's)."""
from __future__ import annotations

import pytest

from convfm.store import storage


def test_a_new_run_refuses_a_uri_that_holds_one(make_configs, s3_bucket):
    from convfm.errors import ConfigError
    from train.driver import run_training

    uri = s3_bucket("runs/taken")
    storage.write_text(storage.join(uri, "run.json"), "{}")
    with pytest.raises(ConfigError, match=r"^s3://convfm-test/runs/taken\?.* already holds a run; pass --resume"):
        run_training(*make_configs(num_workers=1), uri)
