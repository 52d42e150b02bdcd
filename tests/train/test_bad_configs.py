"""Bad configs fail before Ray starts, with a message that names the field.

Run in a fresh interpreter: this session's Ray is already up, so only a new process can show that a bad
config never starts one.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import contextlib, io, json, os, sys
    import ray
    from convfm.cli.main import main
    from convfm.errors import ConfigError
    from train.driver import run_training

    market, tmp = sys.argv[1], sys.argv[2]
    bad_yaml = tmp + "/bad.yaml"
    open(bad_yaml, "w").write("train:\\n  num_workers: 1\\n  learning_rat: 0.01\\n")
    negative_yaml = tmp + "/negative.yaml"
    open(negative_yaml, "w").write("train:\\n  learning_rate: -0.1\\n")
    model_dir = tmp + "/model"  # a published model's directory: a run written in it made it unloadable
    os.makedirs(model_dir)
    open(model_dir + "/manifest.json", "w").write("{}")
    open(tmp + "/afile", "w").write("x")
    results = {}
    for name, argv in {
        "into_model": ["train", "--data", market, "--out", model_dir],
        "inside_model": ["train", "--data", market, "--out", model_dir + "/run"],
        "out_file": ["train", "--data", market, "--out", tmp + "/afile"],
        "zero_workers": ["train", "--data", market, "--workers", "0", "--out", tmp + "/a"],
        "negative_lr": ["train", "--config", negative_yaml, "--data", market, "--out", tmp + "/b"],
        "unknown_field": ["train", "--config", bad_yaml, "--data", market, "--out", tmp + "/c"],
    }.items():
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main(argv)
        results[name] = {"code": code, "message": err.getvalue(), "ray": ray.is_initialized()}
    try:  # the Python API validates plain dicts the same way, before Ray
        run_training({"path": market}, {}, {"num_workers": 0}, tmp + "/d")
    except ConfigError as exc:
        results["api_zero_workers"] = {"code": 2, "message": str(exc), "ray": ray.is_initialized()}
    print(json.dumps(results))
""")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_bad_configs_fail_before_ray_starts_naming_the_field(market_dir, tmp_path):
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(market_dir), str(tmp_path)],
                          capture_output=True, text=True, timeout=110)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.strip().splitlines()[-1])
    expected = {
        "zero_workers": "num_workers: must be an integer in [1, 1024], got 0",
        "negative_lr": "learning_rate: must be a number in (0, 1], got -0.1",
        "unknown_field": "unknown key(s) ['learning_rat'] for TrainConfig",
        "api_zero_workers": "num_workers: must be an integer in [1, 1024], got 0",
        "into_model": "/model: a model directory: a run written there would make the model unloadable",
        "inside_model": "/model/run: inside the model directory",
        "out_file": "/afile: a file, not a directory; choose another --out",  # a FileExistsError traceback
    }
    for name, fragment in expected.items():
        assert results[name]["code"] == 2 and fragment in results[name]["message"], results[name]
        assert results[name]["ray"] is False, name
    assert not list(tmp_path.glob("*/run.json"))  # no run directory was started either
