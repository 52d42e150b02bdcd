"""Dates as exports write them (convfm.data.readers, convfm.data.date_formats): numbers that are no epoch
seconds, and numeric dates' day-first or month-first order decided once per market."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from convfm.config import DataConfig
from convfm.data.loading import load_job_market
from convfm.data.date_columns import order_key
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


def test_numeric_dates_are_read_one_way_across_the_market(tmp_path: Path) -> None:
    """Jobs prove day-first (a day above 12); the log's days are all up to 12. Decided per column, the log read
    month-first: 08/03/2024 became 3 August, the timeline months long and no job live at its interactions."""
    jobs = "job_id,posted_at\nj1,25/02/2024\nj2,02/03/2024\n"
    log = "user_id,job_id,timestamp\nu1,j1,08/03/2024 22:29\nu2,j2,03/04/2024 10:00\n"
    market = load_job_market(DataConfig(path=str(write_market(tmp_path / "m", jobs=jobs, users=None,
                                                              interactions=log))))
    assert market.jobs["posted_at"].tolist() == [pd.Timestamp("2024-02-25"), pd.Timestamp("2024-03-02")]
    assert market.interactions["timestamp"].tolist() == [pd.Timestamp(t).value // 1000 for t in
                                                         ("2024-03-08T22:29", "2024-04-03T10:00")]
    us = "user_id,job_id,timestamp\nu1,j1,03/25/2024 22:29\nu2,j2,04/03/2024 10:00\n"
    root = write_market(tmp_path / "x", jobs=jobs, users=None, interactions=us)
    with pytest.raises(DataValidationError, match=r"jobs\.csv: column 'posted_at', row 1: '25/02/2024' is day-first, "
                                                  r"while .*interactions\.csv: column 'timestamp', row 1: "
                                                  r"'03/25/2024 22:29' is month-first; write the dates one way"):
        load_job_market(DataConfig(path=str(root)))


def test_numeric_dates_in_a_column_of_several_arrow_chunks(tmp_path: Path) -> None:
    """A Parquet file of several row groups (as part files concatenated, or a CSV past ~262k rows) gives pandas a
    column of several arrow chunks: reading its day and month numbers crashed with a bare AttributeError."""
    root = write_market(tmp_path, users=None, interactions="")
    (root / "interactions.csv").unlink()
    pd.DataFrame({"user_id": ["u1"] * 4, "job_id": ["j1", "j2"] * 2,
                  "timestamp": ["13/03/2024 10:00", "02/03/2024 10:00", "14/03/2024 10:00", "05/03/2024 10:00"]}
                 ).to_parquet(root / "interactions.parquet", row_group_size=2)
    market = load_job_market(DataConfig(path=str(root)))
    assert market.day_first and market.interactions["timestamp"].tolist() == [pd.Timestamp(t).value // 1000 for t in (
        "2024-03-13T10:00", "2024-03-02T10:00", "2024-03-14T10:00", "2024-03-05T10:00")]


def test_numeric_dates_among_iso_ones_are_read_as_all_of_them_prove(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """An ISO first value used to skip the check: pandas then read 02/01 month-first and 13/01 day-first, and
    ``dayfirst`` would have turned ISO's 2024-03-02 into 3 February. Each row is read as its form says."""
    log = ("user_id,job_id,timestamp\nu1,j1,2024-03-02 10:00\nu1,j2,02/01/2024 10:00:00\n"
           "u2,j1,13/01/2024 09:00:00\nu2,j2,2024-01-05T08:00\n")
    market = load_job_market(DataConfig(path=str(write_market(tmp_path / "m", users=None, interactions=log))))
    assert market.interactions["timestamp"].tolist() == [pd.Timestamp(t).value // 1000 for t in (
        "2024-03-02T10:00", "2024-01-02T10:00", "2024-01-13T09:00", "2024-01-05T08:00")]
    ambiguous = "user_id,job_id,timestamp\nu1,j1,2024-03-02\nu1,j2,02/01/2024\n"
    with caplog.at_level("WARNING"):
        market = load_job_market(DataConfig(path=str(write_market(tmp_path / "a", users=None,
                                                                  interactions=ambiguous))))
    assert market.interactions["timestamp"].tolist()[1] == pd.Timestamp("2024-02-01").value // 1000
    assert "no numeric date has a day above 12" in caplog.text and "interactions.csv: column 'timestamp'" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):  # a frame scored at request time: read the same way, without a warning a call
        assert order_key(pd.Series(["02/01/2024"]), Path("request"), "timestamp")[0] == market.interactions[
            "timestamp"].tolist()[1]
    assert "day above 12" not in caplog.text


def test_a_few_numbers_outside_epoch_seconds_are_named_when_the_calendar_is_lost(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A 0 placeholder in an epoch-seconds log makes it plain order (no liveness, ages, dates): the warning
    now names the row and the value that did it, not the column alone."""
    log = "user_id,job_id,timestamp\nu1,j1,1704103200\nu2,j2,0\nu1,j2,1704189600\n"
    with caplog.at_level("WARNING"):
        market = load_job_market(DataConfig(path=str(write_market(tmp_path, interactions=log))))
    assert not market.calendar
    assert ("interactions.csv: column 'timestamp', row 2: '0' is not epoch seconds (from 1973-03-03 to 2100-01-01), "
            "while 2 of the 3 values are: the column is read as plain order numbers") in caplog.text
