"""One small search shared by the tests of tune/: 3 trials, at most 3 epochs, 2 at a time, run once per session
through the `convfm tune` command (a search costs ~1 minute on a 2-core box)."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

# Tiny models. One learning rate is far too small to learn anything in an epoch, so ASHA has a trial to stop:
# with seed 2 the searcher proposes lr 0.03, 0.03, 1e-5, and the third trial can only start after one of
# the first two finished, i.e. after a much better epoch-1 AUC is on ASHA's first rung.
TINY_SPACE: dict[str, Any] = {
    "embedding_dim": {"type": "choice", "values": [8, 16]},
    "conv_filters": 8,
    "conv_kernel_size": {"type": "choice", "values": [1, 3]},
    "hidden_dims": {"type": "choice", "values": [[16], [32, 16]]},
    "dropout_rate": {"type": "uniform", "low": 0.0, "high": 0.3},
    "learning_rate": {"type": "choice", "values": [0.03, 1.0e-5]},
    "batch_size": 256,
    "weight_decay": 0.0,
    "embedding_l2": 0.0,  # fixed, like weight_decay: more searched fields would change the proposals above
    "id_dropout": 0.5,
    "early_stopping_metric": "log_loss",
    "ema_decay": 0.99,
}
TINY_TUNE: dict[str, Any] = {"num_samples": 3, "max_concurrent": 2, "search_alg": "optuna", "seed": 2,
                             "max_t": 3, "grace_period": 1, "reduction_factor": 2, "name": "tiny"}


def write_config(path: Path, registry: Path, space: dict[str, Any] | None = None, **tune: Any) -> Path:
    document = {"model": {}, "train": {"patience": 10},
                "tune": {**TINY_TUNE, "registry": str(registry), **tune},
                "space": TINY_SPACE if space is None else space}
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def search(ray_local, market_dir, tmp_path_factory) -> dict[str, Any]:
    """Runs `convfm tune` in this process (it joins the session's Ray); returns paths, output and files."""
    from convfm.cli.main import main

    root = tmp_path_factory.mktemp("tune")
    config = write_config(root / "tune.yaml", root / "models")
    out_dir = root / "tune-tiny"
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        code = main(["tune", "--config", str(config), "--data", str(market_dir), "--out", str(out_dir)])
    assert code == 0, output.getvalue()
    return {"config": config, "out_dir": out_dir, "registry": root / "models", "output": output.getvalue(),
            "summary": json.loads((out_dir / "summary.json").read_text()), "max_t": TINY_TUNE["max_t"]}


@pytest.fixture(scope="session")
def tiny_space() -> dict[str, Any]:
    return dict(TINY_SPACE)


@pytest.fixture(scope="session")
def tiny_tune() -> dict[str, Any]:
    return dict(TINY_TUNE)


@pytest.fixture(scope="session")
def tune_yaml():
    """write_config(path, registry, space=None, **tune) -> path of a tune YAML for the tiny search."""
    return write_config
