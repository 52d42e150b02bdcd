"""benchmarks/overfitting.py runs end to end, tiny: a table per dataset, a row per setting, consistent numbers."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "overfitting.py"


def test_tiny_run_prints_a_row_per_setting_for_each_dataset():
    done = subprocess.run([sys.executable, str(SCRIPT), "--users", "200", "--jobs", "100", "--interactions", "2000",
                           "--datasets", "table,market,apps", "--apps-uses", "3000", "--epochs", "2",
                           "--eval-max-events", "10",
                           "--settings", "default;embedding_l2=0.01,early_stopping_metric=roc_auc"],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    titles = [line for line in lines if line and not line.startswith("|")]
    assert titles[0].startswith("table example (table_example.yaml)") and titles[1].startswith("synthetic market, 200")
    assert titles[2].startswith("app-usage log (benchmarks/app_usage.py, 3000 uses; the truth over all rows: ROC-AUC 0.")
    rows = [line.strip("| ").split(" | ") for line in lines if line.startswith("| ") and "---" not in line]
    assert [r[0] for r in rows] == ["setting", "default", "embedding_l2=0.01,early_stopping_metric=roc_auc"] * 3
    for r in (r for r in rows if r[0] != "setting"):
        epochs, best_epoch, best, last, rise, kept_epoch = int(r[1]), int(r[2]), float(r[3]), float(r[4]), r[5], int(r[7])
        assert epochs == 2 and 1 <= best_epoch <= epochs and 1 <= kept_epoch <= epochs
        expected = 0.0 if best_epoch == epochs else (last / best - 1) * 100  # 2 epochs: the later one is the last
        assert 0 < best <= last and abs(float(rise.rstrip("%")) - expected) < 0.11
        assert 0.0 <= float(r[6]) <= 1.0 and 0.0 <= float(r[9]) <= 1.0  # best and kept AUC
        assert r[10] == "5"  # the weight decay applied: every training set here is below weight_decay_examples


def test_settings_keep_the_commas_of_yaml_lists_and_name_a_malformed_one():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from overfitting import parse_settings
    finally:
        sys.path.remove(str(SCRIPT.parent))
    assert parse_settings("default; hidden_dims=[64,32],patience=3 ;id_dropout=0.8") == [
        ("default", {}), ("hidden_dims=[64,32],patience=3", {"hidden_dims": [64, 32], "patience": 3}),
        ("id_dropout=0.8", {"id_dropout": 0.8})]
    with pytest.raises(SystemExit, match="'patience' is not 'default'"):
        parse_settings("patience")
