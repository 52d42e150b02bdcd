"""convfm.data.cells: list cells (Parquet list<string>) read as their items; other non-scalar cells refused."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from convfm.config import DataConfig
from convfm.data.loading import load_job_market
from convfm.errors import DataValidationError
from tests.convfm.test_data import INTERACTIONS, write_market

JOBS = pd.DataFrame({"job_id": ["j1", "j2", "j3"], "title": ["Backend Engineer", "Nurse", "Cook"],
                     "skills": [["python", "sql"], None, []], "tags": [["remote"], ["night", " shift "], None]})
USERS = pd.DataFrame({"user_id": ["u1", "u2"], "skills": [["python", "SQL"], ["patient care"]]})


def parquet_market(root: Path, jobs: pd.DataFrame = JOBS, users: pd.DataFrame = USERS) -> Path:
    write_market(root, jobs="", users=None, interactions=INTERACTIONS.replace("j2", "j1").replace("j3", "j1"))
    (root / "jobs.csv").unlink()
    jobs.to_parquet(root / "jobs.parquet")
    users.to_parquet(root / "users.parquet")
    return root


def test_parquet_list_cells_are_read_as_their_items(tmp_path: Path) -> None:
    """Spark/pandas/BigQuery write skills as list<string>: each cell is its skills, joined with ';' as in a CSV,
    not the numpy repr ("['python' 'sql']") that became one junk skill."""
    config = DataConfig(path=str(parquet_market(tmp_path)), extra_columns={"jobs": {"tags": "list"}})
    market = load_job_market(config)
    assert market.jobs["skills"].tolist() == ["python;sql", "", ""]
    assert market.jobs["tags"].tolist() == ["remote", "night;shift", ""]
    assert market.users["skills"].tolist() == ["python;SQL", "patient care"]


@pytest.mark.parametrize("table, column, cell, shown", [
    ("jobs", "title", ["Backend", "Engineer"], r'holds a list \(\["Backend", "Engineer"\]\); expected one value'),
    ("jobs", "job_id", ["j2", "j9"], r'holds a list \(\["j2", "j9"\]\); expected one value'),
    ("users", "location", ["Boston", "Denver", "Miami", "Austin"], r'holds a list \(\["Boston", "Denver", "Miami", '
                                                                   r'\.\.\.\]\)'),
])
def test_a_list_cell_in_a_column_of_one_value_is_refused(tmp_path: Path, table: str, column: str, cell: list,
                                                         shown: str) -> None:
    """A list<string> column where the schema reads one value (its first row empty): refused at its first list,
    naming the file, the column and the row, not read as the numpy repr."""
    frames = {"jobs": JOBS.copy(), "users": USERS.copy()}
    frame = frames[table]
    frame[column] = pd.Series([None] + [cell] * (len(frame) - 1), dtype=object)
    root = parquet_market(tmp_path, frames["jobs"], frames["users"])
    with pytest.raises(DataValidationError, match=rf"{table}.parquet: column '{column}', row 2: {shown}"):
        load_job_market(DataConfig(path=str(root)))


def test_an_interaction_cell_holding_a_list_is_refused(tmp_path: Path) -> None:
    root = parquet_market(tmp_path)
    (root / "interactions.csv").unlink()
    log = pd.DataFrame({"user_id": ["u1", "u2"], "job_id": pd.Series([None, ["j1", "j2"]], dtype=object)})
    log.to_parquet(root / "interactions.parquet")
    with pytest.raises(DataValidationError, match=r"interactions.parquet: column 'job_id', row 2: holds a list"):
        load_job_market(DataConfig(path=str(root)))


def test_skills_as_json_arrays_are_read_and_other_separators_warned(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """["python", "sql"] became one skill, the whole text; "python, sql" still is one (a comma can be part of a
    skill), but the file is named with what separates skills."""
    jobs = 'job_id,skills\nj1,"[""python"", ""SQL""]"\nj2,[remote]\nj3,"[]"\n'
    root = write_market(tmp_path / "j", jobs=jobs, users=None, interactions="user_id,job_id\nu1,j1\n")
    assert load_job_market(DataConfig(path=str(root))).jobs["skills"].tolist() == ["python;SQL", "[remote]", ""]
    commas = "user_id,skills\nu1,\"python, sql\"\nu2,\"patient care, bls\"\nu3,figma\n"
    root = write_market(tmp_path / "c", users=commas)
    with caplog.at_level("WARNING"):
        market = load_job_market(DataConfig(path=str(root)))
    assert market.users["skills"].tolist() == ["python, sql", "patient care, bls", "figma"]
    assert "users.csv: column 'skills': 67% of its values hold ',' and none ';'" in caplog.text
    assert "';' separates a list's values" in caplog.text
