"""Model directories and the registry: exact round trips, tamper detection, atomic publishing."""
import json
import shutil

import numpy as np
import pytest
import torch

from convfm.store.artifacts import load_model_dir, save_model_dir
from convfm.store.checksums import sha256_file
from convfm.config import DataConfig, ModelConfig
from convfm.errors import ArtifactError
from convfm.model.network import ConvFM
from convfm.data.prepare import prepare_data
from convfm.store.registry import live_location, publish, resolve, versions
from convfm.training.epoch import predict_proba


@pytest.fixture(scope="module")
def saved(market_dir, tmp_path_factory):
    data = prepare_data(DataConfig(path=str(market_dir)))
    torch.manual_seed(0)
    model = ConvFM(ModelConfig(embedding_dim=8, conv_filters=4, hidden_dims=(8,)), data.extractor.feature_map).eval()
    out = save_model_dir(tmp_path_factory.mktemp("art") / "model", model, data.extractor, metrics={"val_roc_auc": 0.5},
                         extra_json={"train_config": {"seed": 0}})
    return data, model, out


def test_round_trip_gives_identical_scores(saved):
    data, model, out = saved
    loaded = load_model_dir(out)
    before = predict_proba(model, data.sets["valid"], 512, torch.device("cpu"))
    # past examples read the data's history: a saved extractor keeps only each user's latest positives
    reloaded_set = loaded.extractor.example_set(data.frames["valid"], history=data.extractor.history)
    after = predict_proba(loaded.model, reloaded_set, 512, torch.device("cpu"))
    assert np.array_equal(before, after)
    assert loaded.metrics == {"val_roc_auc": 0.5} and loaded.extra["train_config"] == {"seed": 0}


def test_no_pickle_in_model_dir(saved):
    _, _, out = saved
    for path in out.iterdir():
        if path.suffix != ".pt":  # weights.pt is torch's zip format, loaded with weights_only=True
            assert not path.read_bytes().startswith(b"\x80"), path


def copy_dir(src, dst):
    import shutil
    shutil.copytree(src, dst)
    return dst


def test_truncated_weights_are_refused(saved, tmp_path):
    bad = copy_dir(saved[2], tmp_path / "m")
    weights = bad / "weights.pt"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ArtifactError, match="weights.pt: checksum mismatch"):
        load_model_dir(bad)


def test_tampered_config_is_refused(saved, tmp_path):
    bad = copy_dir(saved[2], tmp_path / "m")
    config = json.loads((bad / "model_config.json").read_text())
    config["embedding_dim"] = 16
    (bad / "model_config.json").write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match="model_config.json: checksum mismatch"):
        load_model_dir(bad)


def relist(model_dir, drop=(), add=()):
    """Rewrite the manifest to list the directory's files minus ``drop`` plus ``add``, each with its hash."""
    manifest = json.loads((model_dir / "manifest.json").read_text())
    names = [n for n in manifest["files"] if n not in drop] + list(add)
    manifest["files"] = {n: sha256_file(model_dir / n) if (model_dir / n).is_file() else "0" * 64 for n in names}
    (model_dir / "manifest.json").write_text(json.dumps(manifest))


def test_a_file_the_manifest_does_not_list_is_refused(saved, tmp_path):
    bad = copy_dir(saved[2], tmp_path / "m")
    (bad / "notes.json").write_text("{}")  # would be read into LoadedModel.extra
    with pytest.raises(ArtifactError, match=r"m/notes\.json: present but not listed in the manifest"):
        load_model_dir(bad)


def test_an_unlisted_metrics_json_symlinked_elsewhere_is_refused(saved, tmp_path):
    """The review's case: metrics.json dropped from the manifest and linked to any JSON file on the node."""
    bad = copy_dir(saved[2], tmp_path / "m")
    secret = tmp_path / "secret.json"
    secret.write_text('{"token": "s3cret"}')
    (bad / "metrics.json").unlink()
    (bad / "metrics.json").symlink_to(secret)
    relist(bad, drop=("metrics.json",))
    with pytest.raises(ArtifactError, match=r"manifest\.json: core file 'metrics\.json' is not listed"):
        load_model_dir(bad)
    relist(bad, add=("metrics.json",))  # listed, with the linked file's checksum
    with pytest.raises(ArtifactError, match=r"m/metrics\.json: a symlink, not a regular file"):
        load_model_dir(bad)
    (bad / "metrics.json").unlink()
    shutil.copy(secret, bad / "metrics.json")
    relist(bad)
    (bad / "train_config.json").unlink()
    (bad / "train_config.json").symlink_to(secret)  # an extra JSON, unlisted
    relist(bad, drop=("train_config.json",))
    with pytest.raises(ArtifactError, match=r"m/train_config\.json: a symlink, not a regular file"):
        load_model_dir(bad)


def test_subfolders_and_subpaths_are_refused(saved, tmp_path):
    bad = copy_dir(saved[2], tmp_path / "m")
    (bad / "sub").mkdir()
    (bad / "sub" / "x.json").write_text("{}")
    with pytest.raises(ArtifactError, match=r"m/sub: a directory, not a regular file"):
        load_model_dir(bad)
    relist(bad, add=("sub/x.json",))
    with pytest.raises(ArtifactError, match=r"entry 'sub/x\.json' is not a plain file name"):
        load_model_dir(bad)


@pytest.mark.parametrize("core", ["weights.pt", "model_config.json", "feature_map.json", "extractor.json",
                                  "extractor.npz", "metrics.json"])
def test_every_core_file_must_be_listed(saved, tmp_path, core):
    bad = copy_dir(saved[2], tmp_path / "m")
    (bad / core).unlink()
    relist(bad, drop=(core,))
    with pytest.raises(ArtifactError, match=f"manifest.json: core file {core!r} is not listed"):
        load_model_dir(bad)


def test_missing_manifest_is_refused(saved, tmp_path):
    bad = copy_dir(saved[2], tmp_path / "m")
    (bad / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="manifest.json: missing"):
        load_model_dir(bad)


@pytest.mark.parametrize("name, expected", [
    ("metrics.json", r"metrics\.json: metrics file is not valid JSON"),
    ("model_config.json", r"model_config\.json: ModelConfig file is not valid JSON"),
    ("train_config.json", r"train_config\.json: train_config file is not valid JSON"),
])
def test_corrupt_json_names_its_file(saved, tmp_path, name, expected):
    """A file that passes the manifest (written corrupt, then signed) is still refused, naming itself."""
    bad = copy_dir(saved[2], tmp_path / "m")
    (bad / name).write_text('{"val_roc_auc": 0.5,')
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["files"][name] = sha256_file(bad / name)
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=expected):
        load_model_dir(bad)


def test_registry_publishes_versions_and_latest(saved, tmp_path):
    _, _, out = saved
    first = publish(out, tmp_path / "models", "jobs")
    second = publish(out, tmp_path / "models", "jobs")
    assert (first.name, second.name) == ("v0001", "v0002")
    assert versions(tmp_path / "models" / "jobs") == ["v0001", "v0002"]
    assert resolve(tmp_path / "models" / "jobs") == second
    assert load_model_dir(resolve(tmp_path / "models" / "jobs")).metrics == {"val_roc_auc": 0.5}


def test_live_state_sits_in_the_registry_entry_for_every_version(saved, tmp_path):
    _, _, out = saved
    first = publish(out, tmp_path / "models", "jobs")
    entry = tmp_path / "models" / "jobs"
    assert live_location(entry) == live_location(first) == entry / "live"
    assert live_location(out) == out.parent / f"{out.name}.live"  # never inside a model directory


def test_registry_refuses_dangling_latest_and_partial_models(saved, tmp_path):
    _, _, out = saved
    root = tmp_path / "models" / "jobs"
    publish(out, tmp_path / "models", "jobs")
    (root / "latest").write_text("v0009\n")
    with pytest.raises(ArtifactError, match="points to version 'v0009', which does not exist"):
        resolve(root)
    partial = copy_dir(out, tmp_path / "partial")
    (partial / "weights.pt").unlink()
    with pytest.raises(ArtifactError, match="weights.pt: listed in the manifest but missing"):
        publish(partial, tmp_path / "models", "jobs")
    assert versions(root) == ["v0001"]
    with pytest.raises(ArtifactError, match="model name"):
        publish(out, tmp_path / "models", "../evil")
