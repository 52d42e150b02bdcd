"""`convfm predict`: a table model scores the rows of a file (labelled or not) as evaluation scores them; wrong
models, missing columns and existing outputs are refused in one line."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from convfm.cli.main import main
from convfm.config import DataConfig, ModelConfig, TrainConfig
from convfm.data.prepare import prepare_data
from convfm.store.artifacts import load_model_dir, save_model_dir
from convfm.training.epoch import predict_proba
from convfm.training.in_process import fit_in_process

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def table_model(tmp_path_factory):
    """A table model trained one epoch on train/valid/test files, its prepared data, and the test file."""
    root = tmp_path_factory.mktemp("table")
    rng = np.random.default_rng(0)
    for name in ("train", "valid", "test"):
        n = 400 if name == "train" else 120
        color = rng.choice(["red", "blue", "green"], n)
        price = rng.uniform(1, 9, n).round(2)
        label = ((color == "red") ^ (rng.random(n) < 0.2)).astype(int)
        pd.DataFrame({"color": color, "tags": rng.choice(["a;b", "b", ""], n), "price": price,
                      "label": label}).to_csv(root / f"{name}.csv", index=False)
    config = DataConfig(kind="table", split="random", path=str(root), categorical=("color",),
                        multi_valued=("tags",), numeric=("price",))
    data = prepare_data(config)
    model, history = fit_in_process(data, ModelConfig(embedding_dim=8, conv_filters=8, hidden_dims=(8,)),
                                    TrainConfig(num_epochs=1, batch_size=64, use_amp=False))
    model_dir = save_model_dir(root / "model", model, data.extractor, metrics=history[-1])
    return Path(model_dir), data, root / "test.csv"


def test_scores_equal_the_models_on_the_evaluated_split(table_model, tmp_path, capsys):
    model_dir, data, test = table_model
    unlabelled = tmp_path / "rows.csv"
    pd.read_csv(test).drop(columns="label").to_csv(unlabelled, index=False)
    out = tmp_path / "scored.parquet"
    assert main(["predict", "--model", str(model_dir), "--input", str(unlabelled), "--out", str(out)]) == 0
    scored = pd.read_parquet(out)
    loaded = load_model_dir(model_dir)  # the reference: evaluation's path (load_table, then the split's set)
    expected = predict_proba(loaded.model, data.sets["test"], 64, torch.device("cpu"))
    assert list(scored.columns) == ["color", "tags", "price", "score"] and len(scored) == 120
    np.testing.assert_allclose(scored["score"].to_numpy(), expected, rtol=0, atol=1e-6)
    assert "scored 120 rows" in capsys.readouterr().out


def test_missing_fields_job_market_models_and_existing_outputs_are_refused(table_model, tiny, tmp_path, capsys):
    model_dir, _, test = table_model
    pd.read_csv(test).drop(columns="price").to_csv(tmp_path / "no_price.csv", index=False)
    assert main(["predict", "--model", str(model_dir), "--input", str(tmp_path / "no_price.csv"),
                 "--out", str(tmp_path / "a.csv")]) == 2
    assert "no_price.csv: missing field column(s) ['price']" in capsys.readouterr().err
    assert not (tmp_path / "a.csv").exists()
    assert main(["predict", "--model", str(tiny.model_dir), "--input", str(test),
                 "--out", str(tmp_path / "b.csv")]) == 2
    assert "a job-market model ranks catalogs" in capsys.readouterr().err
    (tmp_path / "c.csv").write_text("kept\n")
    assert main(["predict", "--model", str(model_dir), "--input", str(test), "--out", str(tmp_path / "c.csv")]) == 2
    assert "already exists" in capsys.readouterr().err and (tmp_path / "c.csv").read_text() == "kept\n"
