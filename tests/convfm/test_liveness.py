"""convfm.data.liveness: a job is live at t when posted_at <= t < expires_at."""
import numpy as np
import pandas as pd

from convfm.data.liveness import ALWAYS, MICROS_PER_DAY, NEVER, job_windows

DAY = MICROS_PER_DAY
T0 = pd.Timestamp("2024-01-01").value // 1000  # microseconds


def _jobs() -> pd.DataFrame:
    return pd.DataFrame({
        "job_id": ["a", "b", "c", "d"],
        "posted_at": pd.to_datetime(["2024-01-01", "2024-01-10", None, "2024-01-05"]),
        "expires_at": pd.to_datetime(["2024-01-03", None, None, None]),
    })


def test_windows_use_expires_at_else_the_default_lifetime():
    windows = job_windows(_jobs(), default_lifetime_days=30)
    assert windows.start.tolist() == [T0, T0 + 9 * DAY, ALWAYS, T0 + 4 * DAY]
    assert windows.end.tolist() == [T0 + 2 * DAY, T0 + 39 * DAY, NEVER, T0 + 34 * DAY]
    assert job_windows(_jobs(), default_lifetime_days=None).end.tolist() == [T0 + 2 * DAY, NEVER, NEVER, NEVER]


def test_live_is_half_open_and_matches_live_count():
    windows = job_windows(_jobs(), default_lifetime_days=30)
    times = np.array([T0 - 1, T0, T0 + 2 * DAY - 1, T0 + 2 * DAY, T0 + 9 * DAY, T0 + 40 * DAY])
    live = windows.live(times)
    assert live.astype(int).tolist() == [
        [0, 0, 1, 0], [1, 0, 1, 0], [1, 0, 1, 0], [0, 0, 1, 0], [0, 1, 1, 1], [0, 0, 1, 0]]
    assert windows.live_count(times).tolist() == live.sum(axis=1).tolist()
    codes = np.array([[1, 3], [0, 2], [2, 2], [3, 0], [1, 1], [0, 3]])
    assert (windows.live(times, codes) == np.take_along_axis(live, codes, axis=1)).all()


def test_age_in_days_and_nan_without_posted_at():
    windows = job_windows(_jobs(), default_lifetime_days=30)
    age = windows.age_days(np.array([T0 + 10 * DAY]), np.array([[0, 1, 2]]))
    assert age[0, :2].tolist() == [10.0, 1.0] and np.isnan(age[0, 2])
