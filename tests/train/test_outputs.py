"""train.outputs.export_model (Ray-free): the servable best/ that train and tune write, swapped in whole."""
from __future__ import annotations

import json

import pytest

from convfm.store.artifacts import load_model_dir, verify_model_dir
from train.outputs import export_model

pytestmark = pytest.mark.timeout(120)


def test_export_adds_serving_and_extra_json_to_the_manifest(tiny, tmp_path):
    best = export_model(tiny.model_dir, tmp_path / "run" / "best", tiny.data, {"tune": {"trial_id": "t1"}})
    files = json.loads((best / "manifest.json").read_text())["files"]
    assert {"serving.json", "tune.json", "train_config.json", "weights.pt"} <= set(files)
    assert load_model_dir(best).extra["tune"] == {"trial_id": "t1"}


def test_a_failed_export_leaves_no_temp_dir_and_keeps_the_previous_best(tiny, tmp_path, monkeypatch):
    run = tmp_path / "run"
    best = export_model(tiny.model_dir, run / "best", tiny.data)
    manifest = (best / "manifest.json").read_text()

    staged = []

    def interrupted(extractor, directory):  # Ctrl-C mid-export: weights.pt already in the staging directory
        staged.append(sorted(p.name for p in directory.iterdir()))
        raise KeyboardInterrupt

    monkeypatch.setattr(type(tiny.data.extractor), "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_model(tiny.model_dir, run / "best", tiny.data, {"tune": {"trial_id": "t2"}})
    assert staged and "weights.pt" in staged[0]
    assert sorted(p.name for p in run.iterdir()) == ["best"]  # no .best.* staging directory left behind
    monkeypatch.undo()
    assert (best / "manifest.json").read_text() == manifest and verify_model_dir(best)
