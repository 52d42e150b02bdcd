"""How a market's files are found and their headers read (convfm.data.readers, convfm.data.schema_tables):
canonical columns in another case, gzip-compressed text, formats that are not read."""
from __future__ import annotations

import gzip
import io
from pathlib import Path

import pandas as pd
import pyarrow.csv as pacsv
import pytest
from pandas._libs.parsers import STR_NA_VALUES

from convfm.config import DataConfig
from convfm.data.loading import load_job_market
from convfm.data.market_parts import check_interaction_schemas, file_columns, interaction_files, log_columns
from convfm.data.readers import arrow_csv_options, pandas_csv_options
from convfm.errors import DataValidationError
from tests.convfm.test_data import INTERACTIONS, JOBS, USERS, write_market


@pytest.mark.parametrize("table, header", [
    ("interactions", "User_ID,JOB_ID,Event,Timestamp"),
    ("jobs", "Job_ID,Title,Skills,Posted_At"),
])
def test_a_canonical_column_in_another_case_is_read_as_that_column(tmp_path: Path, table: str, header: str) -> None:
    """``Event``/``Timestamp`` ignored as extra made every row the default event (a positive) in row order;
    ``Posted_At`` ignored lost the jobs' liveness: a header equal to a canonical name apart from case is it."""
    body = INTERACTIONS.split("\n", 1)[1] if table == "interactions" else (
        "j1,Backend Engineer,python;sql,2024-01-05\nj2,Nurse,patient care,2024-02-01\nj3,Cook,,2024-03-11\n")
    root = write_market(tmp_path / "m", **{table: " {} \n{}".format(header.replace(",", " , "), body)})
    market = load_job_market(DataConfig(path=str(root)))
    exact = load_job_market(DataConfig(path=str(write_market(tmp_path / "x", **{table: f"{header.lower()}\n{body}"}))))
    frame, expected = getattr(market, table), getattr(exact, table)
    pd.testing.assert_frame_equal(frame, expected)
    if table == "interactions":
        assert frame["event"].tolist() == ["view", "apply", "dismiss", "save", "click", "view"] and market.calendar
    else:
        assert frame["posted_at"].tolist() == [pd.Timestamp(d) for d in ("2024-01-05", "2024-02-01", "2024-03-11")]


def test_a_binary_label_in_another_case_and_two_spellings_of_one_column(tmp_path: Path) -> None:
    root = write_market(tmp_path / "l", interactions="user_id,job_id,Label\nu1,j1,1\nu2,j2,0\n")
    assert load_job_market(DataConfig(path=str(root))).interactions["event"].tolist() == ["apply", "view"]
    both = write_market(tmp_path / "b", interactions="user_id,job_id,Event,EVENT\nu1,j1,view,apply\n")
    with pytest.raises(DataValidationError, match=r"interactions.csv: columns \['Event', 'EVENT'\] are one name apart "
                                                  r"from case \('event'\); keep one"):
        load_job_market(DataConfig(path=str(both)))


def test_the_exact_name_wins_over_another_spelling(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A jobs file with ``title`` and a display copy ``Title`` loaded before case-folding (``Title`` ignored); it
    was then refused as two spellings. The exact name is read, the other left to the extra-column warning, on
    both preparation paths' header checks."""
    jobs = "job_id,title,Title\nj1,Backend Engineer,BACKEND\nj2,Nurse,NURSE\nj3,Data Scientist,DS\n"
    jobs += "j4,Cook,COOK\nj5,Designer,DESIGNER\n"
    root = write_market(tmp_path / "t", jobs=jobs)
    with caplog.at_level("WARNING"):
        market = load_job_market(DataConfig(path=str(root)))
    assert market.jobs["title"].tolist()[:2] == ["Backend Engineer", "Nurse"]
    assert "ignoring extra column(s) ['Title']" in caplog.text
    log = write_market(tmp_path / "l", interactions="user_id,job_id,event,Event,timestamp\n"
                       "u1,j1,view,apply,2024-05-01\nu2,j2,save,view,2024-05-02\n")
    assert load_job_market(DataConfig(path=str(log))).interactions["event"].tolist() == ["view", "save"]
    files = [log / "interactions.csv"]
    assert check_interaction_schemas(files, DataConfig(path=str(log))) == ["user_id", "job_id", "event", "timestamp"]
    assert log_columns(DataConfig(path=str(log)), file_columns(files[0]), files[0])["event"] == "event"


def test_a_column_declared_extra_is_not_read_as_a_canonical_one(tmp_path: Path) -> None:
    """``extra_columns: {jobs: {Company: category}}`` (how a capitalised header was made a feature before
    case-folding) made ``Company`` both the canonical ``company`` and the extra column: one column, two features."""
    lines = JOBS.replace("job_id,title,", "job_id,Company,title,").splitlines()
    jobs = "\n".join([lines[0]] + [line.replace(",", ",Acme,", 1) for line in lines[1:]]) + "\n"
    root = write_market(tmp_path, jobs=jobs)
    config = DataConfig(path=str(root), extra_columns={"jobs": {"Company": "category"}})
    jobs_read = load_job_market(config).jobs
    assert "company" not in jobs_read.columns and jobs_read["Company"].tolist() == ["Acme"] * 5


def test_gzip_compressed_text_is_read_and_other_formats_are_named(tmp_path: Path) -> None:
    """Exports often come as interactions.csv.gz: read as the CSV it holds. A .jsonl there was hidden behind
    "file not found"; it is now named, with what to do."""
    root = write_market(tmp_path / "gz", users=None, interactions="")
    (root / "interactions.csv").unlink()
    (root / "interactions.csv.gz").write_bytes(gzip.compress(INTERACTIONS.replace(",", "\t").encode()))
    (root / "interactions.csv.gz").rename(root / "interactions.tsv.gz")
    (root / "jobs.csv.gz").write_bytes(gzip.compress(JOBS.encode()))
    (root / "jobs.csv").unlink()
    market = load_job_market(DataConfig(path=str(root)))
    assert market.interactions["event"].tolist() == ["view", "apply", "dismiss", "save", "click", "view"]
    assert market.jobs["skills"].tolist()[0] == "python;sql" and market.source["jobs"].endswith("jobs.csv.gz")
    (root / "interactions.tsv.gz").write_bytes(gzip.compress(INTERACTIONS.encode())[:40])
    with pytest.raises(DataValidationError, match=r"interactions.tsv.gz: cannot decompress .*looks truncated"):
        load_job_market(DataConfig(path=str(root)))
    (root / "interactions.tsv.gz").unlink()
    (root / "interactions.jsonl").write_text('{"user_id": "u1", "job_id": "j1"}\n')
    with pytest.raises(DataValidationError, match=r"interactions: file not found \(tried .*\); "
                                                  r"\['interactions.jsonl'\] is there, in a format not read: "
                                                  r"write it as .csv, .tsv or .parquet"):
        load_job_market(DataConfig(path=str(root)))


def test_a_blank_number_in_parquet_text_is_missing_as_in_csv(tmp_path: Path) -> None:
    """A Parquet text column holding "" (a database export's empty salary) was refused ("'' is not a number")
    where the same file as CSV read the cell as missing."""
    root = write_market(tmp_path, users=None)
    (root / "jobs.csv").unlink()
    pd.DataFrame({"job_id": ["j1", "j2", "j3"], "salary_min": ["50000", "", " "]}).to_parquet(root / "jobs.parquet")
    salaries = load_job_market(DataConfig(path=str(root))).jobs["salary_min"]
    assert salaries.iloc[0] == 50000 and salaries.iloc[1:].isna().all()
    pd.DataFrame({"job_id": ["j1", "j2"], "salary_min": ["50000", "50k"]}).to_parquet(root / "jobs.parquet")
    with pytest.raises(DataValidationError, match=r"jobs\.parquet: column 'salary_min', row 2: '50k' is not a number"):
        load_job_market(DataConfig(path=str(root)))


def excel_csv(text: str, sep: str) -> str:
    """``text`` (a CSV) as Excel saves it for a locale whose separator is ``sep``: its ``sep=`` line first."""
    return f"sep={sep}\n" + pd.read_csv(io.StringIO(text), dtype=str).to_csv(sep=sep, index=False)


@pytest.mark.parametrize("sep", [";", ",", "\t", "|"])
def test_an_excel_sep_line_names_the_separator(tmp_path: Path, sep: str) -> None:
    """Excel's ``sep=;`` first line was read as the header ("missing required column 'user_id'; columns in the
    file: ['sep=', 'Unnamed: 1']"): it is skipped and its separator used, gzip-compressed too."""
    root = write_market(tmp_path / "excel", users=None, interactions="\ufeff" + excel_csv(INTERACTIONS, sep))
    (root / "jobs.csv").unlink()
    (root / "jobs.csv.gz").write_bytes(gzip.compress(excel_csv(JOBS, sep).encode()))
    market = load_job_market(DataConfig(path=str(root)))
    plain = load_job_market(DataConfig(path=str(write_market(tmp_path / "plain", users=None))))
    pd.testing.assert_frame_equal(market.jobs, plain.jobs)
    pd.testing.assert_frame_equal(market.interactions, plain.interactions)
    assert file_columns(root / "interactions.csv") == ["user_id", "job_id", "event", "timestamp"]
    options = arrow_csv_options([root / "interactions.csv", root / "jobs.csv.gz"], ["job_id"])
    assert pacsv.read_csv(root / "jobs.csv.gz", **options).column("job_id").to_pylist() == plain.jobs["job_id"].tolist()


@pytest.mark.parametrize("line", ["SEP=;", "sep=; ", '"sep=;"', "sep=;;;", "Sep=;;"])
def test_a_sep_line_as_other_tools_write_it(tmp_path: Path, line: str) -> None:
    """Upper case, quoted, padded with the separator (a file Excel saved again) or with a trailing space: each
    was read as the header ("missing required column ... ['sep=', '']")."""
    root = write_market(tmp_path / "m", users=None, interactions=excel_csv(INTERACTIONS, ";").replace("sep=;", line))
    plain = load_job_market(DataConfig(path=str(write_market(tmp_path / "plain", users=None))))
    pd.testing.assert_frame_equal(load_job_market(DataConfig(path=str(root))).interactions, plain.interactions)


def test_a_sep_line_naming_another_separator_than_the_headers_is_named(tmp_path: Path) -> None:
    """``sep=,`` above a header written with ``;`` read the file as one column named like the whole header."""
    root = write_market(tmp_path / "m", users=None, interactions="sep=,\n" + INTERACTIONS.replace(",", ";"))
    with pytest.raises(DataValidationError, match=r"interactions\.csv: line 1 \('sep=,'\) names the separator ',', "
                                                  r"but the header on line 2 holds none and holds ';'; fix or "
                                                  r"remove line 1"):
        load_job_market(DataConfig(path=str(root)))


def test_files_read_together_must_agree_on_a_sep_line(tmp_path: Path) -> None:
    """Ray Data parses every file of a split with one set of options: a part file without the ``sep=`` line
    of the others would lose its header (or keep theirs as data), so it is refused, naming both files."""
    (tmp_path / "a.csv").write_text(excel_csv(INTERACTIONS, ";"))
    (tmp_path / "b.csv").write_text(INTERACTIONS.replace(",", ";"))
    with pytest.raises(DataValidationError, match=r"b\.csv: line 1 is the header, while .*a\.csv starts with a "
                                                  r"'sep=;' line; write every file of one table one way"):
        arrow_csv_options([tmp_path / "a.csv", tmp_path / "b.csv"], ["user_id"])


def test_a_mysql_null_marker_is_a_missing_cell(tmp_path: Path) -> None:
    """MySQL's exports write NULL as ``\\N``: a location read as the category ``\\n``, a salary was refused as no
    number. A whole cell ``\\N`` is missing, as an empty one is, in every column (TSV too, and on Ray Data's
    reading); inside longer text it stays text."""
    row, users = "j2,Nurse,patient care,Denver,,,2024-02-01", USERS.replace(",", "\t")
    null = write_market(tmp_path / "null", jobs=JOBS.replace(row, r"j2,Nurse \N shift,\N,\N,\N,\N,\N"),
                        users=users.replace("\tentry", "\t\\N"), names=("jobs.csv", "users.tsv", "interactions.csv"))
    empty = write_market(tmp_path / "empty", jobs=JOBS.replace(row, r"j2,Nurse \N shift,,,,,"),
                         users=users.replace("\tentry", "\t"), names=("jobs.csv", "users.tsv", "interactions.csv"))
    market, expected = (load_job_market(DataConfig(path=str(root))) for root in (null, empty))
    pd.testing.assert_frame_equal(market.jobs, expected.jobs)
    pd.testing.assert_frame_equal(market.users, expected.users)
    assert market.jobs["title"].iloc[1] == r"Nurse \N shift" and market.jobs["location"].iloc[1] == ""
    options = arrow_csv_options([null / "jobs.csv"], ["title", "location", "salary_min"])
    cells = pacsv.read_csv(null / "jobs.csv", **options).slice(1, 1).to_pylist()[0]
    assert cells == {"title": r"Nurse \N shift", "location": None, "salary_min": None}


def test_both_readers_take_the_same_cells_as_missing(tmp_path: Path) -> None:
    """pyarrow's default null spellings (Ray Data's reading) lack pandas' ``None`` and ``<NA>``: a ``None`` cell
    was the category "none" on the distributed path and missing in memory. Both readers take one list: every
    spelling pandas reads as missing, and ``\\N``, is missing on both; another case or longer text stays text."""
    spellings, kept = [*sorted(STR_NA_VALUES), "\\N"], ["none", "NONE", "None of these", "n.a.", "Nan"]
    cells, path = spellings + kept, tmp_path / "cells.csv"
    path.write_text("row,value\n" + "".join(f"{row},{cell}\n" for row, cell in enumerate(cells)))
    in_memory = pd.read_csv(path, **pandas_csv_options(path))["value"]
    distributed = pacsv.read_csv(path, **arrow_csv_options([path], ["value"])).column("value").to_pylist()
    assert dict(zip(cells, in_memory.isna())) == dict(zip(cells, [cell is None for cell in distributed]))
    assert in_memory.isna().tolist() == [True] * len(spellings) + [False] * len(kept)
    assert distributed[len(spellings):] == kept == in_memory.iloc[len(spellings):].tolist()


def test_a_suffix_in_another_case_is_found(tmp_path: Path) -> None:
    """Windows tools write ``interactions.CSV``, ``jobs.CSV.GZ``, ``users.Parquet``: each was "file not found"
    (or "in a format not read"). A suffix is matched in any case, on both paths; two files one case apart are
    refused, naming both."""
    root = write_market(tmp_path / "upper", users=None, names=("jobs.csv", "users.csv", "interactions.CSV"))
    (root / "jobs.CSV.GZ").write_bytes(gzip.compress((root / "jobs.csv").read_bytes()))
    (root / "jobs.csv").unlink()
    pd.read_csv(io.StringIO(USERS), dtype=str).to_parquet(root / "users.Parquet")
    market = load_job_market(DataConfig(path=str(root)))
    plain = load_job_market(DataConfig(path=str(write_market(tmp_path / "plain"))))
    for table in ("jobs", "users", "interactions"):
        pd.testing.assert_frame_equal(getattr(market, table), getattr(plain, table))
    assert [Path(market.source[t]).name for t in ("jobs", "users")] == ["jobs.CSV.GZ", "users.Parquet"]
    assert interaction_files(DataConfig(path=str(root))) == [root / "interactions.CSV"]
    capital = write_market(tmp_path / "capital", names=("Jobs.csv", "USERS.csv", "Interactions.Csv"))
    for table in ("jobs", "users", "interactions"):  # the whole name in any case, as macOS and Windows find it
        pd.testing.assert_frame_equal(getattr(load_job_market(DataConfig(path=str(capital))), table),
                                      getattr(plain, table))
    (root / "interactions.csv").write_text(INTERACTIONS)
    with pytest.raises(DataValidationError, match=r"upper/interactions: files \['interactions.CSV', "
                                                  r"'interactions.csv'\] differ only in case; keep one"):
        load_job_market(DataConfig(path=str(root)))


def test_a_salary_min_above_its_max_is_refused(tmp_path: Path) -> None:
    """A job's ``salary_min`` above its ``salary_max`` (columns swapped in the export, or mapped the wrong way
    round) was read as a range, silently; it is refused, naming the row and both values. One of the two alone,
    or both equal, stays valid."""
    swapped = write_market(tmp_path / "swapped", jobs=JOBS.replace("Miami,30000,35000", "Miami,35000,30000.5"))
    with pytest.raises(DataValidationError, match=r"jobs\.csv: column 'salary_min', row 4: salary_min 35000 is above "
                                                  r"salary_max 30000\.5; are the two columns swapped, or is an "
                                                  r"unknown salary written as 0 \(leave it empty\)\?"):
        load_job_market(DataConfig(path=str(swapped)))
    mapped = write_market(tmp_path / "mapped", jobs=JOBS.replace("salary_min,salary_max", "pay_to,pay_from"))
    with pytest.raises(DataValidationError, match=r"column 'pay_from', row 1: pay_from 120000 is above pay_to 90000"):
        load_job_market(DataConfig(path=str(mapped), columns={"jobs": {"salary_min": "pay_from",
                                                                       "salary_max": "pay_to"}}))
    one = JOBS.replace("Denver,,,", "Denver,60000,,").replace("Remote,70000,90000", "Remote,,90000")
    one = write_market(tmp_path / "one", jobs=one.replace("35000", "30000"))
    jobs = load_job_market(DataConfig(path=str(one))).jobs
    assert jobs["salary_min"].tolist()[1:4] == [60000, 100000, 30000] and jobs["salary_max"].iloc[3] == 30000


def test_parquet_view_types_are_read_as_plain_text_and_a_file_without_them_as_it_is():
    import pyarrow as pa

    from convfm.data.readers import plain_schema

    viewed = pa.schema([("user_id", pa.string_view()), ("n", pa.int32()), ("blob", pa.binary_view())])
    plain = pa.schema([("user_id", pa.string()), ("n", pa.int64()), ("blob", pa.binary())])
    assert plain_schema([plain], ["user_id", "n"]) is None
    assert plain_schema([plain, viewed], ["user_id", "n", "blob"]) == pa.schema(
        [("user_id", pa.large_string()), ("n", pa.int64()), ("blob", pa.large_binary())])
