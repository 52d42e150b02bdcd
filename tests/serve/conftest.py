"""A tiny trained job-market model (2 epochs, small dims), exported and published once per session."""
from __future__ import annotations

import shutil
import types
from pathlib import Path

import pytest

from convfm.artifacts import save_model_dir
from convfm.config import DataConfig, ModelConfig, TrainConfig
from convfm.prepare import prepare_data
from convfm.registry import publish
from convfm.serving import serving_extra_json
from convfm.trainer import fit_in_process

TINY_MODEL = ModelConfig(embedding_dim=8, conv_filters=8, hidden_dims=(16, 8), dropout_rate=0.1)
TINY_TRAIN = TrainConfig(num_epochs=2, batch_size=512, eval_negatives=20, use_amp=False, patience=2)


@pytest.fixture(scope="session")
def tiny(market_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> types.SimpleNamespace:
    """data, model, model_dir (an export) and registry entry ``registry/tiny`` holding v0001."""
    data = prepare_data(DataConfig(path=str(market_dir)))
    model, history = fit_in_process(data, TINY_MODEL, TINY_TRAIN)
    root = tmp_path_factory.mktemp("serve_models")
    model_dir = save_model_dir(root / "export", model, data.extractor, metrics=history[-1],
                               extra_json={**serving_extra_json(data), "train_config": TINY_TRAIN.to_dict()})
    publish(model_dir, root / "registry", "tiny")
    return types.SimpleNamespace(data=data, model=model, model_dir=model_dir, registry=root / "registry",
                                 entry=root / "registry" / "tiny", root=root)


def publish_broken(entry: Path, kind: str = "truncated") -> str:
    """Publish a copy of the latest version, then break it on disk; returns the new version name."""
    from convfm.registry import resolve

    latest = resolve(entry)
    staging = entry.parent.parent / f"broken-{kind}"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(latest, staging)
    version = publish(staging, entry.parent, entry.name).name
    (entry / "latest").write_text(latest.name + "\n")  # keep `latest` on the good version
    weights = entry / version / "weights.pt"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return version


@pytest.fixture(scope="session")
def break_version():
    """``break_version(entry) -> version``: a published copy of the latest version with truncated weights."""
    return publish_broken
