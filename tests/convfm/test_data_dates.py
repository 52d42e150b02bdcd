"""Dates as exports write them (convfm.data.readers, convfm.data.date_formats): numbers that are no epoch
seconds, and numeric dates' day-first or month-first order decided once per market."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from convfm.config import DataConfig
from convfm.data.loading import load_job_market
from convfm.errors import DataValidationError
from tests.convfm.test_data import write_market


@pytest.mark.parametrize("text, pattern", [
    ("j1,1704067200\nj2,20240302\n", r"jobs\.csv: column 'posted_at', row 2: '20240302' is no date: as epoch seconds "
     r"it is before 1973-03-03; it looks like a YYYYMMDD date \(2024-03-02\); write ISO dates \(2024-03-02\)"),
    ("j1,45353.1179\nj2,45354\n", r"jobs\.csv: column 'posted_at', row 1: '45353.1179' is no date: as epoch seconds "
     r"it is before 1973-03-03; it looks like an Excel serial day count \(2024-03-02\); write ISO dates"),
    ("j1,1704067200\nj2,0\n", r"jobs\.csv: column 'posted_at', row 2: '0' is no date: as epoch seconds it is "
     r"before 1973-03-03; write ISO dates"),
])
def test_job_dates_as_numbers_before_1973_are_refused_with_a_guess(tmp_path: Path, text: str, pattern: str) -> None:
    """20240302 read as epoch seconds was 1970-08-23, an Excel serial 45353 was 1970-01-01 12:35: every job
    expired before the first interaction, and training went on without a sampled negative."""
    root = write_market(tmp_path, jobs=f"job_id,posted_at\n{text}")
    with pytest.raises(DataValidationError, match=pattern):
        load_job_market(DataConfig(path=str(root)))


def test_job_dates_as_epoch_seconds_and_typed_numbers(tmp_path: Path) -> None:
    root = write_market(tmp_path / "s", jobs="job_id,posted_at\nj1,1704067200\nj2,1706745600.5\n")
    assert load_job_market(DataConfig(path=str(root))).jobs["posted_at"].tolist() == [
        pd.Timestamp("2024-01-01"), pd.Timestamp("2024-02-01T00:00:00.5")]
    typed = write_market(tmp_path / "p", jobs="")
    (typed / "jobs.csv").unlink()
    pd.DataFrame({"job_id": ["j1"], "expires_at": [20240302]}).to_parquet(typed / "jobs.parquet")
    with pytest.raises(DataValidationError, match=r"jobs\.parquet: column 'expires_at', row 1: '20240302' is no "
                                                  r"date.*YYYYMMDD date \(2024-03-02\)"):
        load_job_market(DataConfig(path=str(typed)))
