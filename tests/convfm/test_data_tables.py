"""convfm.data.loading of a generic table (``kind: table``): one file or a directory, labels in any binary
spelling, ids through float columns, and the errors naming the file and column."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from convfm.config import DataConfig
from convfm.data.labelled import load_table
from convfm.errors import ConfigError, DataValidationError

BAD = Path(__file__).resolve().parents[1] / "data" / "bad"
TABLE = "color,size,price,tags,label\nred,S,1.5,a;b,1\n,M,2.0,,0\nblue,L,3.5,c,true\nred,M,1.0,a,False\n"


def table_config(path: Path, **overrides: object) -> DataConfig:
    values = dict(kind="table", path=str(path), categorical=("color", "size"), multi_valued=("tags",),
                  numeric=("price",), valid_fraction=0.25, test_fraction=0.25)
    values.update(overrides)
    return DataConfig(**values)


def test_table_single_file(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text(TABLE)
    splits = load_table(table_config(tmp_path / "t.csv"))
    frames = pd.concat([splits.train, splits.valid, splits.test])
    assert [len(splits.train), len(splits.valid), len(splits.test)] == [2, 1, 1]
    assert list(frames.columns) == ["color", "size", "tags", "price", "label"]
    assert frames["label"].dtype == np.float32 and sorted(frames["label"]) == [0, 0, 1, 1]
    assert "" in set(frames["color"]) and "" in set(frames["tags"])  # NaN categorical -> missing value


def test_table_directory_and_renamed_label(tmp_path: Path) -> None:
    for name in ("train.csv", "valid.csv", "test.csv"):
        (tmp_path / name).write_text(TABLE.replace("label", "clicked"))
    splits = load_table(table_config(tmp_path, label="clicked"))
    assert len(splits.train) == len(splits.valid) == len(splits.test) == 4
    assert splits.test["label"].tolist() == [1.0, 0.0, 1.0, 0.0]
    (tmp_path / "valid.csv").unlink()
    with pytest.raises(DataValidationError, match=r"valid: file not found"):
        load_table(table_config(tmp_path, label="clicked"))


def test_table_errors(tmp_path: Path) -> None:
    config = table_config(BAD / "table_bad_label.csv", multi_valued=())
    with pytest.raises(DataValidationError, match=r"table_bad_label\.csv: column 'label', row 3: label '2' "
                                                  r"is not binary; expected 0/1, -1/1 or true/false"):
        load_table(config)
    with pytest.raises(DataValidationError, match=r"table_bad_label\.csv: missing field column\(s\) \['tags'\]"):
        load_table(table_config(BAD / "table_bad_label.csv"))
    with pytest.raises(DataValidationError, match=r"table_bad_label\.csv: missing label column 'y'"):
        load_table(table_config(BAD / "table_bad_label.csv", multi_valued=(), label="y"))
    with pytest.raises(DataValidationError, match=r"table_bad_numeric\.csv: column 'price', row 2: 'cheap' is "
                                                  r"not a number"):
        load_table(table_config(BAD / "table_bad_numeric.csv", multi_valued=()))
    (tmp_path / "t.csv").write_text("color,price,label\nred,1,1\nblue,,0\n")
    with pytest.raises(DataValidationError, match=r"t\.csv: column 'price', row 2: missing value"):
        load_table(table_config(tmp_path / "t.csv", categorical=("color",), multi_valued=()))
    (tmp_path / "t.csv").write_text("color,price,label\nred,1,1\nblue,inf,0\n")
    with pytest.raises(DataValidationError, match=r"t\.csv: column 'price', row 2: 'inf' is not a finite number"):
        load_table(table_config(tmp_path / "t.csv", categorical=("color",), multi_valued=()))


def test_table_labels_in_every_binary_spelling(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("label,color\n1,a\n-1,b\n1.00,a\n0.0,b\n TRUE ,a\nfalse,b\n")
    splits = load_table(table_config(tmp_path / "t.csv", categorical=("color",), multi_valued=(), numeric=(),
                                     valid_fraction=0.0, test_fraction=0.0))
    assert splits.train["label"].tolist() == [1, 0, 1, 0, 1, 0]
    pd.DataFrame({"label": np.array([1, -1, 2]), "color": ["a", "b", "c"]}).to_parquet(tmp_path / "t.parquet")
    with pytest.raises(DataValidationError, match=r"t\.parquet: column 'label', row 3: label '2' is not binary"):
        load_table(table_config(tmp_path / "t.parquet", categorical=("color",), multi_valued=(), numeric=()))


def test_table_ids_through_a_nan_holding_float_column_match_the_integer_ones(tmp_path: Path) -> None:
    """One missing id makes pandas write the column as floats (184.0): those are still id 184."""
    clean = pd.DataFrame({"item": [184, 7, 7, 184], "label": [1, 0, 1, 0]})
    for name in ("train", "valid"):
        clean.to_parquet(tmp_path / f"{name}.parquet")
    pd.DataFrame({"item": [184.0, np.nan, 7.0], "label": [1, 0, 0]}).to_parquet(tmp_path / "test.parquet")
    splits = load_table(table_config(tmp_path, categorical=("item",), multi_valued=(), numeric=()))
    assert splits.train["item"].tolist() == ["184", "7", "7", "184"]
    assert splits.test["item"].tolist() == ["184", "", "7"]


def test_a_table_read_for_a_fitted_extractor_must_list_its_fields(tmp_path: Path) -> None:
    """Evaluating a model on a spec without one of its fields would encode that field as missing everywhere."""
    from convfm.data.prepare import prepare_data

    header, body = TABLE.split("\n", 1)
    (tmp_path / "t.csv").write_text(header + "\n" + body * 3)
    fitted = prepare_data(table_config(tmp_path / "t.csv")).extractor
    again = prepare_data(table_config(tmp_path / "t.csv", categorical=("size", "color")), extractor=fitted)
    assert len(again.frames["train"]) > 0  # the same fields in another order
    with pytest.raises(ConfigError, match=r"categorical: the model was trained on categorical fields \['color', "
                                          r"'size'\]; the table spec lists \['size'\] \(missing \['color'\], not in "
                                          r"the model \[\]\)"):
        prepare_data(table_config(tmp_path / "t.csv", categorical=("size",)), extractor=fitted)
