"""Every file of tests/data/bad/ through the real command line: ``convfm train`` (and ``convfm evaluate``) exit
with status 2 and ONE stderr line naming the file, the column or key, and the row or line; nothing is left
behind: no run directory (``--out``), no ``runs/`` or ``models/`` in the working directory, no report.

All command lines run in one fresh interpreter (see conftest.py: ``ray.init`` refuses there, so a bad input
that got past validation fails the test instead of training); three also run as real processes.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(300)
BAD = Path(__file__).resolve().parents[1] / "data" / "bad"

# A valid market whose ids the bad files use (u1, u2, j1..j5); each case swaps one file for a bad one.
MARKET = {
    "jobs.csv": "job_id,title,skills,location,salary_min,salary_max\nj1,Backend Engineer,python;sql,Boston,90000,"
                "120000\nj2,Nurse,patient care,Denver,,\nj3,Data Scientist,python,Boston,100000,140000\n"
                "j4,Cook,food safety,Miami,30000,35000\nj5,Designer,figma,Remote,70000,90000\n",
    "users.csv": "user_id,skills,location,experience_level\nu1,python;sql,Boston,mid\nu2,patient care,,entry\n",
    "interactions.csv": "user_id,job_id,event,timestamp\nu1,j1,view,2024-05-01T10:00:00\nu1,j1,apply,"
                        "2024-05-01T11:00:00\nu1,j2,dismiss,2024-05-02T09:00:00\nu2,j2,save,2024-05-03T09:00:00\n"
                        "u2,j3,click,2024-05-03T10:00:00\n",
}

# bad file -> (the market file it replaces, fragments the one error line must hold: file, column, row)
FILES = {
    "jobs_missing_job_id.csv": ("jobs.csv", ["jobs.csv", "missing required column 'job_id'"]),
    "jobs_duplicate_ids.csv": ("jobs.csv", ["jobs.csv", "column 'job_id'", "duplicate id 'j1' in rows 1 and 3"]),
    "jobs_bad_salary.csv": ("jobs.csv", ["jobs.csv", "column 'salary_min', row 2", "'eighty thousand'"]),
    "jobs_empty.csv": ("jobs.csv", ["jobs.csv", "file is empty"]),
    "jobs_header_only.csv": ("jobs.csv", ["jobs.csv", "no data rows"]),
    "jobs_non_utf8.csv": ("jobs.csv", ["jobs.csv", "not valid UTF-8", "(line 3)"]),
    "jobs_truncated.csv": ("jobs.csv", ["jobs.csv", "malformed CSV", "line 4"]),
    "jobs_truncated_last_line.csv": ("jobs.csv", ["jobs.csv", "malformed CSV", "line 3 has 3 of 4 fields"]),
    "jobs_malformed.csv": ("jobs.csv", ["jobs.csv", "malformed CSV", "line 3 has 4 fields"]),
    "jobs_expires_before_posted.csv": ("jobs.csv", ["jobs.csv", "column 'expires_at', row 2",
                                                    "2024-01-20 00:00:00 is not after posted_at 2024-02-01"]),
    "jobs_date_out_of_range.csv": ("jobs.csv", ["jobs.csv", "column 'posted_at', row 3", "'9999-03-01' is out of "
                                                "range"]),
    "users_duplicate_ids.csv": ("users.csv", ["users.csv", "column 'user_id'", "duplicate id 'u1' in rows 1 and 3"]),
    "users_missing_user_id.csv": ("users.csv", ["users.csv", "missing required column 'user_id'"]),
    "users_truncated.csv": ("users.csv", ["users.csv", "malformed CSV", "line 3"]),
    "interactions_nan_user.csv": ("interactions.csv", ["interactions.csv", "column 'user_id', row 2", "empty id"]),
    "interactions_nan_job.csv": ("interactions.csv", ["interactions.csv", "column 'job_id', row 3"]),
    "interactions_missing_job_id.csv": ("interactions.csv", ["interactions.csv", "missing required column 'job_id'"]),
    "interactions_unknown_event.csv": ("interactions.csv", ["interactions.csv", "column 'event', row 3",
                                                            "unknown event 'applied'"]),
    "interactions_bad_timestamp.csv": ("interactions.csv", ["interactions.csv", "column 'timestamp', row 2",
                                                            "'yesterday'"]),
}
# config file (with a valid --data market) -> fragments: file, section, line, key
CONFIGS = {
    "config_unknown_key.yaml": ["config_unknown_key.yaml [train] line 4", "unknown key(s) ['learning_rat']"],
    "config_unknown_section.yaml": ["config_unknown_section.yaml line 4", "unknown section(s) ['trian']"],
    "config_out_of_range.yaml": ["config_out_of_range.yaml [model] line 3", "dropout_rate: must be a number in [0, 1)"],
    "config_wrong_type.yaml": ["config_wrong_type.yaml [train] line 3", "batch_size: must be an integer"],
    "config_invalid_yaml.yaml": ["config_invalid_yaml.yaml: not valid YAML", "line 4"],
}
# table spec (--table) -> fragments
TABLES = {
    "table_spec_missing_column.yaml": ["table_bad_label.csv", "missing field column(s) ['tags']"],
    "table_spec_unknown_key.yaml": ["table_spec_unknown_key.yaml line 2", "unknown key(s) ['lable']"],
    "table_spec_out_of_range.yaml": ["table_spec_out_of_range.yaml [data] line 5",
                                     "valid_fraction: must be a number in [0, 0.5)"],
    "table_spec_bad_label.yaml": ["table_bad_label.csv", "column 'label', row 3", "label '2' is not binary"],
    "table_spec_bad_numeric.yaml": ["table_bad_numeric.csv", "column 'price', row 2", "'cheap' is not a number"],
}
# bad market file -> fragments, evaluated by a trained model (its extractor encodes the data)
EVALUATE = {
    "jobs_bad_salary.csv": ["jobs.csv", "column 'salary_min', row 2"],
    "interactions_unknown_event.csv": ["interactions.csv", "column 'event', row 3"],
    "users_duplicate_ids.csv": ["users.csv", "column 'user_id'", "rows 1 and 3"],
}
PROCESSES = ["jobs_non_utf8.csv", "config_unknown_section.yaml", "table_spec_missing_column.yaml"]


def market(root: Path, bad: str | None = None, replaces: str | None = None) -> Path:
    root.mkdir(parents=True)
    for name, text in MARKET.items():
        (root / name).write_text(text)
    if bad is not None:
        shutil.copy(BAD / bad, root / replaces)
    return root


def train_argv(name: str, case: Path) -> list[str]:
    """``convfm train`` arguments for one bad input; the run directory would be ``case/run``."""
    out = ["--out", str(case / "run"), "--epochs", "1"]
    if name in FILES:
        return ["train", "--data", str(market(case / "market", name, FILES[name][0])), *out]
    if name in CONFIGS:
        return ["train", "--config", str(BAD / name), "--data", str(market(case / "market")), *out]
    return ["train", "--table", str(BAD / name), *out]


@pytest.fixture(scope="module")
def results(tmp_path_factory, tiny, cli_runner):
    """Every case through ``convfm.cli.main.main`` in one child process; each case has its own working directory."""
    root = tmp_path_factory.mktemp("bad_inputs")
    cases = []
    for name in [*FILES, *CONFIGS, *TABLES]:
        case = root / name
        case.mkdir()
        cases.append({"id": f"train:{name}", "argv": train_argv(name, case), "cwd": str(case)})
    for name in EVALUATE:
        case = root / f"evaluate-{name}"
        case.mkdir()
        data = market(case / "market", name, FILES[name][0])
        cases.append({"id": f"evaluate:{name}", "cwd": str(case), "argv": [
            "evaluate", "--model", str(tiny.model_dir), "--data", str(data), "--out", str(case / "report.json")]})
    return root, cli_runner(cases, root)


def assert_nothing_left(case: Path) -> None:
    leftovers = sorted(p.name for p in case.iterdir() if p.name not in ("market",))
    assert leftovers == [], f"left behind in {case}: {leftovers}"


@pytest.mark.parametrize("name", [*FILES, *CONFIGS, *TABLES])
def test_train_refuses_bad_input_in_one_line(results, one_line_error, name):
    root, outcome = results
    fragments = FILES[name][1] if name in FILES else CONFIGS.get(name) or TABLES[name]
    one_line_error(outcome[f"train:{name}"], "train", fragments)
    assert_nothing_left(root / name)  # no run/ (--out), no runs/, no models/


@pytest.mark.parametrize("name", list(EVALUATE))
def test_evaluate_refuses_bad_data_in_one_line(results, one_line_error, tiny, name):
    root, outcome = results
    one_line_error(outcome[f"evaluate:{name}"], "evaluate", EVALUATE[name])
    assert_nothing_left(root / f"evaluate-{name}")  # no report.json
    assert not list(Path(tiny.model_dir).parent.glob(f"{Path(tiny.model_dir).name}.eval_*.json"))  # nor beside it


def test_corpus_is_fully_covered():
    """Every file under tests/data/bad is exercised here (a new bad file needs a case)."""
    tables = {"table_bad_label.csv", "table_bad_numeric.csv"}  # read through the table specs
    assert {p.name for p in BAD.iterdir()} == set(FILES) | set(CONFIGS) | set(TABLES) | tables


@pytest.mark.parametrize("name", PROCESSES)
def test_real_process_exit_status_and_stderr(tmp_path, one_line_error, name):
    """The console entry point as its own process: exit status 2, one stderr line, no traceback."""
    done = subprocess.run([sys.executable, "-m", "convfm.cli.main", *train_argv(name, tmp_path)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    fragments = FILES[name][1] if name in FILES else CONFIGS.get(name) or TABLES[name]
    one_line_error({"code": done.returncode, "stderr": done.stderr}, "train", fragments)
    assert_nothing_left(tmp_path)
