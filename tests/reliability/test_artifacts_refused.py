"""Broken model artifacts are refused with a clear error, by ``convfm evaluate --model``, by ``convfm serve``
(before Ray starts) and by the serving scorer (``ModelSlot``: first load -> 503 "failed"; reload -> the old
version keeps serving); loading never unpickles anything.

The "hard" cases re-hash the manifest after breaking a file, so only the check named in the case can catch
them: a crafted pickle in weights.pt, truncated weights, another extractor format_version, a pickled object
array in extractor.npz.
"""
from __future__ import annotations

import hashlib
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from convfm.store.artifacts import load_model_dir
from convfm.features.jobs import load_extractor
from convfm.store.registry import resolve
from serve.model_slot import ModelSlot

pytestmark = pytest.mark.timeout(240)
MARKER = "UNPICKLED-MARKER"  # a crafted pickle creates this file when (and only when) it is unpickled


class Payload:
    """Unpickling this calls ``open(path, "w")``: proof that a loader ran pickle on it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def rehash(model_dir: Path) -> None:
    """Make the manifest (and the extractor's npz hash) match the files again: only content checks remain."""
    meta = json.loads((model_dir / "extractor.json").read_text())
    meta["npz_sha256"] = hashlib.sha256((model_dir / "extractor.npz").read_bytes()).hexdigest()
    (model_dir / "extractor.json").write_text(json.dumps(meta))
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["files"] = {name: hashlib.sha256((model_dir / name).read_bytes()).hexdigest()
                         for name in manifest["files"]}
    (model_dir / "manifest.json").write_text(json.dumps(manifest))


def truncate_weights(d: Path) -> None:
    weights = d / "weights.pt"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def tamper_config(d: Path) -> None:
    config = json.loads((d / "model_config.json").read_text())
    (d / "model_config.json").write_text(json.dumps({**config, "embedding_dim": config["embedding_dim"] * 2}))


def crafted_pickle_weights(d: Path) -> None:
    torch.save({"state": Payload(str(d.parent / MARKER))}, d / "weights.pt")
    rehash(d)


def truncated_weights_rehashed(d: Path) -> None:
    truncate_weights(d)
    rehash(d)


def extractor_version(d: Path) -> None:
    meta = json.loads((d / "extractor.json").read_text())
    (d / "extractor.json").write_text(json.dumps({**meta, "format_version": 999}))
    rehash(d)


def pickled_npz(d: Path) -> None:
    with np.load(d / "extractor.npz", allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    evil = np.empty(1, dtype=object)
    evil[0] = Payload(str(d.parent / MARKER))
    np.savez(d / "extractor.npz", **arrays, evil=evil)
    rehash(d)


# case -> (how to break a copy of a good version, what the error must say)
CASES = {
    "truncated_weights": (truncate_weights, "weights.pt: checksum mismatch (truncated or modified after export)"),
    "tampered_config": (tamper_config, "model_config.json: checksum mismatch"),
    "truncated_weights_rehashed": (truncated_weights_rehashed, "weights.pt: cannot load weights"),
    "crafted_pickle_weights": (crafted_pickle_weights,
                               "weights.pt: cannot load weights (not a plain tensor state_dict"),
    "extractor_version": (extractor_version, "extractor.json: extractor format_version 999, this convfm reads 1"),
    "pickled_npz": (pickled_npz, "extractor.npz: unreadable extractor arrays"),
}
DANGLING = "latest: points to version 'v0009', which does not exist"


@pytest.fixture(scope="module")
def broken(tiny, tmp_path_factory):
    """A registry copy: ``tiny`` holds v0001 (good, latest) and one broken version per case; ``dangling``
    is an entry whose ``latest`` names a version that is not there."""
    root = tmp_path_factory.mktemp("broken_artifacts")
    shutil.copytree(tiny.registry, root / "registry")
    entry = root / "registry" / "tiny"
    versions = {}
    for i, (case, (breaker, _)) in enumerate(CASES.items(), start=2):
        version = f"v{i:04d}"
        shutil.copytree(entry / "v0001", entry / version)
        breaker(entry / version)
        versions[case] = version
    dangling = root / "registry" / "dangling"
    shutil.copytree(entry, dangling)
    (dangling / "latest").write_text("v0009\n")
    assert resolve(entry).name == "v0001"
    return entry, versions, dangling


@pytest.fixture(scope="module")
def evaluated(broken, tiny, cli_runner, tmp_path_factory):
    """``convfm evaluate --model`` on every broken version and on the dangling entry, in one child process."""
    entry, versions, dangling = broken
    work = tmp_path_factory.mktemp("evaluate_broken")
    models = {case: entry / version for case, version in versions.items()} | {"dangling": dangling}
    cases = [{"id": case, "cwd": str(work), "argv": ["evaluate", "--model", str(model), "--data", str(tiny.market),
                                                     "--out", str(work / f"{case}.json")]}
             for case, model in models.items()]
    cases += [{"id": f"serve:{case}", "cwd": str(work), "argv": ["serve", "--model", str(model)]}
              for case, model in models.items()]  # the child's ray.init raises: Ray must not start
    return work, cli_runner(cases, work)


@pytest.mark.parametrize("case", [*CASES, "dangling"])
def test_evaluate_refuses_a_broken_model(evaluated, one_line_error, case):
    work, results = evaluated
    one_line_error(results[case], "evaluate", [CASES[case][1] if case in CASES else DANGLING])
    assert not (work / f"{case}.json").exists()


@pytest.mark.parametrize("case", [*CASES, "dangling"])
def test_serve_refuses_a_broken_local_model_before_ray_starts(evaluated, one_line_error, case):
    _, results = evaluated
    one_line_error(results[f"serve:{case}"], "serve", [CASES[case][1] if case in CASES else DANGLING])


@pytest.mark.parametrize("case", list(CASES))
def test_scorer_first_load_fails_clearly_and_reload_keeps_the_old_model(broken, case):
    entry, versions, _ = broken
    expected = CASES[case][1]
    first = ModelSlot(entry / versions[case])
    report = first.load()
    assert not report["ok"] and expected in report["error"]
    status, health = first.health()
    assert status == 503 and health["status"] == "failed" and expected in first.error

    slot = ModelSlot(entry)
    assert slot.load()["ok"] and slot.current.version == "v0001"
    report = slot.load(versions[case])
    assert not report["ok"] and expected in report["error"] and report["version"] == "v0001"
    assert slot.current.version == "v0001" and slot.health()[0] == 200
    assert not (entry / MARKER).exists(), "a crafted pickle was unpickled"


def test_scorer_refuses_a_dangling_latest(broken):
    _, _, dangling = broken
    slot = ModelSlot(dangling)
    report = slot.load()
    assert not report["ok"] and DANGLING in report["error"]
    assert slot.health()[0] == 503 and slot.health()[1]["status"] == "failed"


def test_loading_never_unpickles(tiny, monkeypatch):
    """With pickle's entry points raising and torch.load refusing anything but weights_only=True, a model
    directory, its extractor and a serving slot still load."""
    def refuse(*args, **kwargs):
        raise AssertionError("pickle used while loading a model")

    real_torch_load, loads = torch.load, []

    def weights_only_load(*args, **kwargs):
        if kwargs.get("weights_only") is not True:
            raise AssertionError(f"torch.load without weights_only=True: {kwargs}")
        loads.append(args[0])
        return real_torch_load(*args, **kwargs)

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", weights_only_load)
    with pytest.raises(AssertionError):  # the patches are live
        pickle.loads(b"\x80\x04K\x01.")

    loaded = load_model_dir(tiny.model_dir)
    assert loaded.extractor.feature_map == loaded.model.feature_map
    assert load_extractor(tiny.model_dir).job_ids == loaded.extractor.job_ids
    slot = ModelSlot(tiny.entry)
    assert slot.load()["ok"], slot.last_reload
    assert [Path(p).name for p in loads] == ["weights.pt", "weights.pt"]
