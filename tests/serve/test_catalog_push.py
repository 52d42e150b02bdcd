"""`convfm catalog push`: a jobs file posted in chunks to a real HTTP service (uvicorn over a LocalBackend, no
Ray); errors name the file, row and column, whether the file or the service refuses the row."""
from __future__ import annotations

import hashlib
import socket
import threading
import time

import pandas as pd
import pytest
import requests
import uvicorn

from convfm.cli.main import main
from serve.http import LocalBackend, build_http_app
from serve.model_slot import ModelSlot

pytestmark = pytest.mark.timeout(300)
KEY = "push-key-0123456789"


@pytest.fixture()
def url(tiny, tmp_path, monkeypatch):
    slot = ModelSlot(tiny.entry)
    assert slot.load()["ok"]
    app = build_http_app(LocalBackend(slot, tmp_path / "live"),
                         api_key_digest=hashlib.sha256(KEY.encode()).hexdigest())
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    monkeypatch.setenv("CONVFM_TEST_PUSH_KEY", KEY)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def jobs_file(path, rows: int = 5, cells: dict = {}) -> str:  # noqa: B006 - read only
    frame = pd.DataFrame({"job_id": [f"p{i}" for i in range(rows)], "title": [f"Diver {i}" for i in range(rows)],
                          "skills": ["python; sql"] * rows, "location": ["Atlantis"] * rows,
                          "salary_min": ["50000"] * rows, "posted_at": ["2026-12-01T09:00:00"] * rows})
    for (column, row), value in cells.items():
        frame.loc[row, column] = value
    frame.to_csv(path, index=False)
    return str(path)


def push(path: str, url: str, *extra: str) -> int:
    return main(["catalog", "push", path, "--url", url, "--api-key-env", "CONVFM_TEST_PUSH_KEY", *extra])


def test_push_posts_the_file_in_chunks(url, tmp_path, capsys):
    assert push(jobs_file(tmp_path / "jobs.csv"), url, "--chunk", "2") == 0
    out = capsys.readouterr().out
    assert "rows 1-2 of 5: catalog version 1" in out and "rows 5-5 of 5: catalog version 3" in out
    job = requests.get(f"{url}/jobs/p4", timeout=10).json()
    assert job["title"] == "Diver 4" and job["location"] == "Atlantis" and job["catalog_version"] == 3


def test_a_bad_cell_in_the_file_names_file_row_and_column_before_anything_is_sent(url, tmp_path, capsys):
    path = jobs_file(tmp_path / "jobs.csv", cells={("salary_min", 2): "lots"})
    assert push(path, url) == 2
    assert "jobs.csv: column 'salary_min', row 3: 'lots' is not a number" in capsys.readouterr().err
    assert requests.get(f"{url}/jobs/p0", timeout=10).status_code == 404


def test_a_posting_the_service_would_refuse_is_named_before_anything_is_sent(url, tmp_path, capsys):
    ahead = (pd.Timestamp.now() + pd.Timedelta(days=20)).strftime("%Y-%m-%dT%H:%M:%S")
    assert push(jobs_file(tmp_path / "jobs.csv", cells={("posted_at", 3): ahead}), url) == 2
    err = capsys.readouterr().err
    assert "jobs.csv: column 'posted_at', row 4: posted_at " in err and "more than a day ahead" in err
    assert requests.get(f"{url}/jobs/p0", timeout=10).status_code == 404


def test_a_row_the_service_refuses_is_named_and_earlier_chunks_are_reported(url, tmp_path, capsys):
    path = jobs_file(tmp_path / "jobs.csv", cells={("title", 3): "x" * 600})
    assert push(path, url, "--chunk", "2") == 2
    err = capsys.readouterr().err
    assert "jobs.csv: row 4, column 'title': String should have at most 500 characters" in err
    assert "rows 1-2 were pushed before it" in err


def test_push_needs_the_key_variable(url, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CONVFM_TEST_PUSH_KEY")
    assert push(jobs_file(tmp_path / "jobs.csv"), url) == 2
    assert "environment variable CONVFM_TEST_PUSH_KEY is not set" in capsys.readouterr().err
