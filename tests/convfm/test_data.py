"""convfm.data.loading: reading, validation messages, column mapping (tables: test_data_tables.py; examples:
test_examples.py)."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from convfm.config import DataConfig
from convfm.data.loading import build_examples, load_job_market, read_frame
from convfm.data.date_columns import to_datetimes
from convfm.errors import ConfigError, DataValidationError

BAD = Path(__file__).resolve().parents[1] / "data" / "bad"

JOBS = """job_id,title,skills,location,salary_min,salary_max,posted_at
j1,Backend Engineer,python;sql,Boston,90000,120000,2024-01-05
j2,Nurse,patient care,Denver,,,2024-02-01
j3,Data Scientist,python;statistics,Boston,100000,140000,2024-03-10
j4,Cook,food safety,Miami,30000,35000,2024-03-11
j5,Designer,figma,Remote,70000,90000,2024-04-01
"""
USERS = """user_id,skills,location,experience_level
u1,python;sql,Boston,mid
u2,patient care,,entry
"""
INTERACTIONS = """user_id,job_id,event,timestamp
u1,j1,view,2024-05-01T10:00:00
u1,j1,apply,2024-05-01T11:00:00
u1,j2,dismiss,2024-05-02T09:00:00
u2,j2,save,2024-05-03T09:00:00
u2,j3,click,2024-05-03T10:00:00
u2,j3,view,2024-05-04T10:00:00
"""


def write_market(root: Path, jobs: str = JOBS, users: str | None = USERS, interactions: str = INTERACTIONS,
                 names: tuple[str, str, str] = ("jobs.csv", "users.csv", "interactions.csv")) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in zip(names, (jobs, users, interactions)):
        if text is not None:
            (root / name).write_text(text)
    return root


def with_fixture(root: Path, fixture: str, as_name: str) -> DataConfig:
    """A valid market in ``root`` whose ``as_name`` file is replaced by tests/data/bad/``fixture``."""
    write_market(root)
    shutil.copy(BAD / fixture, root / as_name)
    return DataConfig(path=str(root))


# ------------------------------------------------------------------------------------------ reading files
def test_read_frame_csv_parquet_and_suffixless(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("job_id,n\n 12 ,3\nj2,4\n")
    frame = read_frame(tmp_path / "a", id_columns=["job_id"])
    assert frame["job_id"].tolist() == ["12", "j2"]
    pd.DataFrame({"job_id": [12, 13], "n": [1.0, 2.0]}).to_parquet(tmp_path / "b.parquet")
    frame = read_frame(tmp_path / "b", id_columns=["job_id"])
    assert frame["job_id"].tolist() == ["12", "13"] and frame["n"].dtype == np.float64


def test_tab_and_semicolon_separated_files_are_read(tmp_path: Path) -> None:
    """Public CTR logs (Frappe) come tab-separated; European spreadsheets export semicolons, often as .csv."""
    (tmp_path / "t.tsv").write_text("label\tuser\titem\n1\tu1\ta, b\n0\tu2\tc\n")
    (tmp_path / "tabs.csv").write_text("label\tuser\n1\tu1\n")
    (tmp_path / "semi.csv").write_text("label;user\n1;u1\n")
    assert read_frame(tmp_path / "t").to_dict("list") == {"label": ["1", "0"], "user": ["u1", "u2"],
                                                          "item": ["a, b", "c"]}
    for name in ("tabs.csv", "semi.csv"):
        assert read_frame(tmp_path / name).to_dict("list") == {"label": ["1"], "user": ["u1"]}


def test_a_column_name_twice_in_a_header_is_refused(tmp_path: Path) -> None:
    """pandas would read the second as ``city.1`` and a spec naming ``city`` the first, without a word."""
    (tmp_path / "d.csv").write_text("label,city, city\n1,a,b\n")
    with pytest.raises(DataValidationError, match=r"d\.csv: column name\(s\) \['city'\] appear more than once"):
        read_frame(tmp_path / "d.csv")


def test_read_frame_missing_file_names_tried_paths(tmp_path: Path) -> None:
    tried = r"nothere: file not found \(tried .*nothere\.csv, .*nothere\.tsv and .*nothere\.parquet"
    with pytest.raises(DataValidationError, match=tried):
        read_frame(tmp_path / "nothere")
    with pytest.raises(DataValidationError, match=r"nothere\.csv: file not found"):
        read_frame(tmp_path / "nothere.csv")


@pytest.mark.parametrize("fixture, pattern", [
    ("jobs_empty.csv", r"jobs_empty\.csv: file is empty \(0 bytes\)"),
    ("jobs_header_only.csv", r"jobs_header_only\.csv: no data rows"),
    ("jobs_non_utf8.csv", r"jobs_non_utf8\.csv: not valid UTF-8: byte 0xe9 at byte offset 55 \(line 3\)"),
    ("jobs_truncated.csv", r"jobs_truncated\.csv: malformed CSV: quoted field opened on line 4 .*truncated"),
    ("jobs_truncated_last_line.csv", r"jobs_truncated_last_line\.csv: malformed CSV: line 3 has 3 of 4 fields"),
    ("jobs_malformed.csv", r"jobs_malformed\.csv: malformed CSV: line 3 has 4 fields but the header has 3"),
])
def test_unreadable_files_are_named(fixture: str, pattern: str) -> None:
    with pytest.raises(DataValidationError, match=pattern):
        read_frame(BAD / fixture)


# ------------------------------------------------------------------------------------------ validation
@pytest.mark.parametrize("fixture, as_name, pattern", [
    ("jobs_missing_job_id.csv", "jobs.csv",
     r"jobs\.csv: missing required column 'job_id'; columns in the file: \['title', 'location', 'company'\]"),
    ("jobs_duplicate_ids.csv", "jobs.csv", r"jobs\.csv: column 'job_id': duplicate id 'j1' in rows 1 and 3"),
    ("users_duplicate_ids.csv", "users.csv", r"users\.csv: column 'user_id': duplicate id 'u1' in rows 1 and 3"),
    ("jobs_bad_salary.csv", "jobs.csv", r"jobs\.csv: column 'salary_min', row 2: 'eighty thousand' is not a number"),
    ("interactions_nan_user.csv", "interactions.csv", r"interactions\.csv: column 'user_id', row 2: empty id"),
    ("interactions_unknown_event.csv", "interactions.csv",
     r"interactions\.csv: column 'event', row 3: unknown event 'applied'; allowed: \['view', 'click', 'save', "),
    ("interactions_bad_timestamp.csv", "interactions.csv",
     r"interactions\.csv: column 'timestamp', row 2: cannot parse 'yesterday' as a date/time"),
    ("jobs_expires_before_posted.csv", "jobs.csv", r"jobs\.csv: column 'expires_at', row 2: expires_at "
     r"2024-01-20 00:00:00 is not after posted_at 2024-02-01 00:00:00"),
    ("jobs_date_out_of_range.csv", "jobs.csv", r"jobs\.csv: column 'posted_at', row 3: '9999-03-01' is out of "
     r"range \(dates must be between 1970-01-01 and 2100-01-01\)"),
    ("jobs_empty.csv", "jobs.csv", r"jobs\.csv: file is empty"),
    ("jobs_truncated.csv", "jobs.csv", r"jobs\.csv: malformed CSV"),
])
def test_market_validation_errors_name_file_column_row(tmp_path: Path, fixture: str, as_name: str,
                                                       pattern: str) -> None:
    config = with_fixture(tmp_path, fixture, as_name)
    with pytest.raises(DataValidationError, match=pattern):
        load_job_market(config)


def test_missing_directory_and_bad_numeric_timestamp(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match="data directory not found"):
        load_job_market(DataConfig(path=str(tmp_path / "nope")))
    (tmp_path / "jobs.csv").write_text("job_id\nj1\n")  # --data jobs.csv: read as "data directory not found"
    with pytest.raises(DataValidationError, match=r"jobs\.csv: a file, not a data directory"):
        load_job_market(DataConfig(path=str(tmp_path / "jobs.csv")))
    write_market(tmp_path, interactions="user_id,job_id,timestamp\nu1,j1,5\nu1,j2,6\nu2,j1,late\n")
    with pytest.raises(DataValidationError, match=r"column 'timestamp', row 3: 'late' is not a number"):
        load_job_market(DataConfig(path=str(tmp_path)))


def test_bad_posted_at_empty_event_and_missing_mapped_column(tmp_path: Path) -> None:
    write_market(tmp_path / "a", jobs="job_id,posted_at\nj1,2024-01-01\nj2,soon\n")
    with pytest.raises(DataValidationError, match=r"jobs\.csv: column 'posted_at', row 2: cannot parse 'soon'"):
        load_job_market(DataConfig(path=str(tmp_path / "a")))
    write_market(tmp_path / "b", interactions="user_id,job_id,event\nu1,j1,view\nu1,j2, \n")
    with pytest.raises(DataValidationError, match=r"column 'event', row 2: empty event; allowed: \["):
        load_job_market(DataConfig(path=str(tmp_path / "b")))
    config = DataConfig(path=str(tmp_path / "b"), columns={"interactions": {"event": "action"}})
    missing = r"interactions\.csv: missing column 'action' \(canonical 'event'\)"
    with pytest.raises(DataValidationError, match=missing):
        load_job_market(config)


@pytest.mark.parametrize("table, text, pattern", [
    ("jobs", "job_id,posted_at\nj1,2024-01-01\nj2,0001-01-01\n", r"jobs\.csv: column 'posted_at', row 2: "
     r"'0001-01-01' is out of range \(dates must be between 1970-01-01 and 2100-01-01\)"),
    ("jobs", "job_id,posted_at\nj1,1704067200\nj2,1704067200000\n", r"column 'posted_at', row 2: "
     r"'1704067200000' is out of range: epoch seconds must be in \[0, 4102444800\]"),
    ("jobs", "job_id,posted_at,expires_at\nj1,2024-01-01,1969-12-31\n", r"column 'expires_at', row 1: "
     r"'1969-12-31' is out of range"),
    ("jobs", "job_id,posted_at,expires_at\nj1,2024-01-01,2024-01-01\n", r"column 'expires_at', row 1: expires_at "
     r"2024-01-01 00:00:00 is not after posted_at 2024-01-01 00:00:00"),
    ("interactions", "user_id,job_id,timestamp\nu1,j1,2024-05-01\nu1,j2,2150-01-01T10:00\n",
     r"interactions\.csv: column 'timestamp', row 2: '2150-01-01T10:00' is out of range"),
    ("interactions", "user_id,job_id,timestamp\nu1,j1,5\nu1,j2,1e300\n",
     r"column 'timestamp', row 2: '1e300' is out of range for a timestamp"),
    ("interactions", "user_id,job_id,timestamp\nu1,j1,5\nu1,j2,1e20\n",  # int64 would wrap to garbage
     r"interactions\.csv: column 'timestamp', row 2: '1e20' is out of range for a timestamp"),
    ("interactions", "user_id,job_id,timestamp\nu1,j1,5\nu2,j1,6\nu1,j2,inf\n",
     r"interactions\.csv: column 'timestamp', row 3: 'inf' is not a finite number"),
    ("interactions", "user_id,job_id,timestamp\nu1,j1,5\nu1,j2,-inf\n",
     r"interactions\.csv: column 'timestamp', row 2: '-inf' is not a finite number"),
    ("jobs", "job_id,posted_at\nj1,1704067200\nj2,inf\n", r"jobs\.csv: column 'posted_at', row 2: 'inf' is not "
     r"a finite number"),
    ("jobs", "job_id,posted_at\nj1,2024-01-01\nj2,2300-01-01\n", r"jobs\.csv: column 'posted_at', row 2: "
     r"'2300-01-01' is out of range"),  # past pandas' nanosecond limit (2262): no OutOfBoundsDatetime traceback
])
def test_out_of_range_dates_and_empty_windows_name_file_column_row(tmp_path: Path, table: str, text: str,
                                                                  pattern: str) -> None:
    write_market(tmp_path, **{table: text})
    with pytest.raises(DataValidationError, match=pattern):
        load_job_market(DataConfig(path=str(tmp_path)))


def test_expires_at_is_loaded_and_mapped(tmp_path: Path) -> None:
    jobs = "id,posted_at,ends\nj1,2024-01-01,2024-01-31T12:00:00\nj2,2024-02-01,\nj3,,2024-03-01\n"
    write_market(tmp_path, jobs=jobs)
    config = DataConfig(path=str(tmp_path), columns={"jobs": {"job_id": "id", "expires_at": "ends"}})
    market = load_job_market(config)
    assert market.jobs["expires_at"].tolist()[0] == pd.Timestamp("2024-01-31T12:00:00")
    assert market.jobs["expires_at"].isna().tolist() == [False, True, False]
    write_market(tmp_path, jobs="id,posted_at,ends\nj1,2024-03-01,2024-02-01\n")
    with pytest.raises(DataValidationError, match=r"column 'ends', row 1: expires_at 2024-02-01 00:00:00 is not "
                                                  r"after posted_at 2024-03-01 00:00:00"):
        load_job_market(config)


def test_day_first_dates_are_read_day_first_throughout(tmp_path: Path) -> None:
    """02/01 first looks month-first; 13/01 then proves the file day-first. Read row by row, the first would
    have been 1 February and the second 13 January: the log's order scrambled without a word."""
    log = "user_id,job_id,timestamp\nu1,j1,02/01/2025 10:00\nu1,j2,13/01/2025 09:30\n"
    market = load_job_market(DataConfig(path=str(write_market(tmp_path, interactions=log))))
    assert market.interactions["timestamp"].tolist() == [int(pd.Timestamp(t).value // 1000) for t in
                                                         ("2025-01-02T10:00", "2025-01-13T09:30")]
    path = Path("x.csv")
    mixed = to_datetimes(pd.Series(["02/01/2025", "13/01/2025 10:00"]), path, "t")  # two formats, one order
    assert mixed.tolist() == [pd.Timestamp("2025-01-02"), pd.Timestamp("2025-01-13T10:00")]
    assert to_datetimes(pd.Series(["02/01/2025", "12/25/2025"]), path, "t").tolist() == [
        pd.Timestamp("2025-02-01"), pd.Timestamp("2025-12-25")]  # month-first throughout
    with pytest.raises(DataValidationError, match=r"row 2: '01/25/2025' is month-first, while '13/01/2025' is "
                                                  r"day-first"):
        to_datetimes(pd.Series(["13/01/2025", "01/25/2025"]), path, "t")
    with pytest.raises(DataValidationError, match=r"row 3: cannot parse '2025-13-01'"):  # ISO is never day-first
        to_datetimes(pd.Series(["2025-01-02", "2025-03-04", "2025-13-01"]), path, "t")


def test_market_knows_whether_timestamps_are_dates(tmp_path: Path) -> None:
    assert load_job_market(DataConfig(path=str(write_market(tmp_path / "dates")))).calendar
    numbers = write_market(tmp_path / "numbers", interactions="user_id,job_id,timestamp\nu1,j1,5\nu2,j2,6\n")
    assert not load_job_market(DataConfig(path=str(numbers))).calendar
    rows = write_market(tmp_path / "rows", interactions="user_id,job_id\nu1,j1\nu2,j2\n")
    assert not load_job_market(DataConfig(path=str(rows))).calendar


def test_epoch_second_timestamps_are_dates_and_milliseconds_are_refused(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """A log exported as epoch seconds keeps its calendar (job liveness, ages); plain numbers stay order, with a
    warning that says what is lost; epoch milliseconds would pass as plain order, so they are refused."""
    seconds = write_market(tmp_path / "s",
                           interactions="user_id,job_id,timestamp\nu1,j1,1704103200\nu2,j2,1704189600\n")
    market = load_job_market(DataConfig(path=str(seconds)))
    assert market.calendar
    assert market.interactions["timestamp"].tolist() == [int(pd.Timestamp(t).value // 1000) for t in
                                                         ("2024-01-01T10:00:00", "2024-01-02T10:00:00")]
    numbers = write_market(tmp_path / "n", interactions="user_id,job_id,timestamp\nu1,j1,5\nu2,j2,1704189600\n")
    with caplog.at_level("WARNING"):
        assert not load_job_market(DataConfig(path=str(numbers))).calendar
    assert "no date/time timestamps (plain numbers)" in caplog.text and "job liveness and expiry" in caplog.text
    millis = write_market(tmp_path / "ms", interactions="user_id,job_id,timestamp\nu1,j1,1704103200000\n")
    with pytest.raises(DataValidationError, match=r"interactions.csv: column 'timestamp', row 1: '1704103200000' "
                                                  r"looks like epoch milliseconds: give epoch seconds or ISO"):
        load_job_market(DataConfig(path=str(millis)))


def test_a_click_logs_binary_label_gives_the_events(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A log of impressions with a 0/1 label (no event column): 1 a positive event, 0 an impression (view);
    every row counted as an apply, as before, made every impression a positive."""
    log = "user_id,job_id,clicked,timestamp\nu1,j1,1,2024-01-01\nu1,j2,0,2024-01-02\nu2,j1,-1,2024-01-03\n"
    root = write_market(tmp_path / "m", interactions=log)
    with caplog.at_level("WARNING"):
        market = load_job_market(DataConfig(path=str(root), columns={"interactions": {"label": "clicked"}}))
    assert market.interactions["event"].tolist() == ["apply", "view", "view"]
    assert "label" not in market.interactions.columns and "ignoring extra" not in caplog.text
    bad = write_market(tmp_path / "b", interactions="user_id,job_id,label\nu1,j1,1\nu1,j2,yes\n")
    with pytest.raises(DataValidationError, match=r"interactions\.csv: column 'label', row 2: label 'yes' is not "
                                                  r"binary"):
        load_job_market(DataConfig(path=str(bad)))
    clicks = DataConfig(path=str(root), columns={"interactions": {"label": "clicked"}}, positive_events=("click",),
                        negative_events=("view",))
    assert load_job_market(clicks).interactions["event"].tolist() == ["click", "view", "view"]  # still positives
    both = write_market(tmp_path / "e", interactions="user_id,job_id,event,label\nu1,j1,view,1\n")
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert load_job_market(DataConfig(path=str(both))).interactions["event"].tolist() == ["view"]  # events win
    assert "both an event and a label column: the event column decides each row, the label is ignored" in caplog.text


def test_job_ids_written_two_ways_are_refused(tmp_path: Path) -> None:
    """Not one interaction names a job of the jobs file: the ids are written differently ("00121" and "121"), and
    training would go on with no job features at all."""
    jobs = "job_id,title\n00121,Data Engineer\n00122,Nurse\n"
    root = write_market(tmp_path, jobs=jobs, users=None, interactions="user_id,job_id\nu1,121\nu2,122\n")
    with pytest.raises(DataValidationError, match=r"interactions.csv: column 'job_id': no interaction names a job_id "
                                                  r"of .*jobs.csv \(e.g. '121' there, '00121' in"):
        load_job_market(DataConfig(path=str(root)))


def test_user_ids_written_two_ways_are_refused(tmp_path: Path) -> None:
    """As for jobs: not one interaction's user in users.csv, the same ids written another way (``U-002`` against
    ``u2``), left every user feature unknown with a warning only."""
    users = "user_id,skills\nU-002,python\nU_0003,sql\n"
    root = write_market(tmp_path, users=users)
    with pytest.raises(DataValidationError, match=r"interactions.csv: column 'user_id': no interaction names a "
                                                  r"user_id of .*users.csv \(e.g. 'u2' there, 'U-002' in "
                                                  r".*users.csv\); the ids must be written the same way"):
        load_job_market(DataConfig(path=str(root)))


@pytest.mark.parametrize("ids", ["n00000\nn00001", "zzz"])
def test_a_users_file_of_new_sign_ups_only_loads_with_a_warning(tmp_path: Path, ids: str,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """A users file profiling users with no interactions yet (cold-start profiles) holds none of the log's users,
    yet its ids are not the log's written another way: it loads, saying every user feature is unknown."""
    users = "user_id,skills\n" + "".join(f"{i},python\n" for i in ids.split("\n"))
    with caplog.at_level(logging.WARNING):
        market = load_job_market(DataConfig(path=str(write_market(tmp_path, users=users))))
    assert market.users["user_id"].tolist() == ids.split("\n") and len(market.interactions) == 6
    assert ("not one user of the log has a profile in" in caplog.text and "users.csv (e.g. 'u1' there" in caplog.text
            and "so every user feature is unknown" in caplog.text)


def test_loaded_market_types(tmp_path: Path) -> None:
    market = load_job_market(DataConfig(path=str(write_market(tmp_path))))
    jobs = market.jobs
    assert jobs["salary_min"].dtype == np.float64 and np.isnan(jobs["salary_min"].iloc[1])
    assert str(jobs["posted_at"].dtype).startswith("datetime64")
    assert market.users is not None and market.users["location"].tolist() == ["Boston", ""]
    assert market.interactions["timestamp"].dtype == np.int64
    assert market.interactions["timestamp"].is_monotonic_increasing
    assert market.source["jobs"].endswith("jobs.csv")


def test_column_mapping(tmp_path: Path) -> None:
    write_market(tmp_path, jobs="id,name\nj1,Backend\nj2,Nurse\n", users=None,
                 interactions="uid,jid,action\nu1,j1,apply\nu1,j2,view\n")
    config = DataConfig(path=str(tmp_path), columns={"jobs": {"job_id": "id", "title": "name"},
                                                     "interactions": {"user_id": "uid", "job_id": "jid",
                                                                      "event": "action"}})
    market = load_job_market(config)
    assert list(market.jobs.columns) == ["job_id", "title"]
    assert list(market.interactions.columns) == ["user_id", "job_id", "event", "timestamp"]
    assert market.interactions["event"].tolist() == ["apply", "view"]
    broken = DataConfig(path=str(tmp_path), columns={"jobs": {"job_id": "identifier"}})
    with pytest.raises(DataValidationError, match=r"jobs\.csv: missing required column 'identifier' "
                                                  r"\(canonical 'job_id'\); columns in the file: \['id', 'name'\]"):
        load_job_market(broken)
    with pytest.raises(ConfigError, match=r"columns\.jobs: unknown canonical column\(s\) \['salary'\]"):
        load_job_market(DataConfig(path=str(tmp_path), columns={"jobs": {"salary": "pay"}}))


def test_extra_columns_kept_and_warned(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_market(tmp_path, jobs="job_id,title,internal_code\nj1,Nurse,X1\nj2,Cook,X2\nj3,Dev,X3\n")
    with caplog.at_level(logging.WARNING, logger="convfm.data.loading"):
        market = load_job_market(DataConfig(path=str(tmp_path)))
    assert "ignoring extra column(s) ['internal_code']" in caplog.text
    assert market.jobs["internal_code"].tolist() == ["X1", "X2", "X3"]


def test_a_missing_file_names_the_setting_that_points_elsewhere(tmp_path: Path) -> None:
    write_market(tmp_path, names=("jobs.csv", "users.csv", "apps.csv"))
    with pytest.raises(DataValidationError, match=r"interactions: file not found \(tried .csv, .tsv and .parquet\); "
                                                  r"data.interactions_file names another file of .* \(there: "
                                                  r"\['apps', 'jobs', 'users'\]\)"):
        load_job_market(DataConfig(path=str(tmp_path)))
    assert len(load_job_market(DataConfig(path=str(tmp_path), interactions_file="apps")).interactions) == 6


def test_minimal_files_work(tmp_path: Path) -> None:
    write_market(tmp_path, jobs="job_id\nj1\nj2\n", users=None, interactions="user_id,job_id\nu1,j2\nu2,j1\nu1,j1\n")
    config = DataConfig(path=str(tmp_path), default_event="save", negative_ratio=0)
    market = load_job_market(config)
    assert market.users is None and list(market.jobs.columns) == ["job_id"]
    assert market.interactions["event"].tolist() == ["save"] * 3
    assert market.interactions["timestamp"].tolist() == [0, 1, 2]
    examples = build_examples(market, config)
    assert examples["label"].tolist() == [1.0, 1.0, 1.0]
    assert examples[["user_id", "job_id"]].values.tolist() == [["u1", "j2"], ["u2", "j1"], ["u1", "j1"]]


def test_unknown_jobs_are_kept_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_market(tmp_path, interactions=INTERACTIONS + "u2,j99,apply,2024-06-01T00:00:00\n")
    with caplog.at_level(logging.WARNING, logger="convfm.data.loading"):
        market = load_job_market(DataConfig(path=str(tmp_path)))
    assert "1 interaction(s) name job_id(s) absent from" in caplog.text and "j99" in caplog.text
    examples = build_examples(market, DataConfig(path=str(tmp_path)))
    assert "j99" in set(examples["job_id"])


def test_parquet_market(tmp_path: Path) -> None:
    pd.DataFrame({"job_id": [1, 2, 3], "salary_min": [1.0, None, 3.0]}).to_parquet(tmp_path / "jobs.parquet")
    pd.DataFrame({"user_id": [7, 7, 8], "job_id": [1, 2, 3], "event": ["apply", "view", "Apply "],
                  "timestamp": [3, 1, 2]}).to_parquet(tmp_path / "interactions.parquet")
    market = load_job_market(DataConfig(path=str(tmp_path)))
    assert market.jobs["job_id"].tolist() == ["1", "2", "3"]
    assert market.interactions["user_id"].tolist() == ["7", "7", "8"]
    assert market.interactions["event"].tolist() == ["apply", "view", "apply"]


@pytest.mark.parametrize("table, column, frame, row", [
    ("interactions", "timestamp", {"user_id": ["u1", "u2"], "job_id": ["j1", "j2"], "timestamp": [True, False]}, 1),
    ("jobs", "posted_at", {"job_id": ["j1", "j2"], "posted_at": [True, False]}, 1),
    ("jobs", "expires_at", {"job_id": ["j1", "j2"], "expires_at": [None, True]}, 2),  # nulls: an object column
])
def test_boolean_time_columns_are_refused(tmp_path: Path, table: str, column: str, frame: dict, row: int) -> None:
    """A typed (parquet) boolean column would pass as 1/0: the epoch's first second, or order keys 1 and 0."""
    write_market(tmp_path, **{table: None})
    pd.DataFrame(frame).to_parquet(tmp_path / f"{table}.parquet")
    with pytest.raises(DataValidationError, match=rf"{table}\.parquet: column '{column}', row {row}: "
                                                  rf"booleans are not (timestamps|dates)"):
        load_job_market(DataConfig(path=str(tmp_path)))
