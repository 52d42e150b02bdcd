"""Split examples into train/valid/test: per user in time ("time"), at two global times ("global_time") or at
random ("random"). No (user, job) pair lands in two splits.

"global_time" is the split a live market needs: every split sees the market as it was then, so test
positives on jobs posted after training are counted as the model would meet them (issue 12).
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Mapping, Optional, Protocol, Sequence

import numpy as np
import pandas as pd

from convfm.config import DataConfig
from convfm.errors import ConfigError

logger = logging.getLogger(__name__)

TRAIN_ONLY = "train_only"  # examples column: a negative kept beside training examples only (train_negative_ratio)


@dataclasses.dataclass(frozen=True, eq=False)
class Splits:
    """Train/valid/test frames of examples (or table rows), each with a float32 ``label`` column.

    ``starts``: for split "global_time", the order keys (microseconds since the epoch with a calendar) at which
    valid and test begin: train < starts[0] <= valid < starts[1] <= test. ``train_only``: which training rows
    are ``train_negative_ratio``'s extra negatives (None: there are none)."""

    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    starts: Optional[tuple[int, int]] = None
    train_only: Optional[np.ndarray] = None


def random_parts(n: int, valid_fraction: float, test_fraction: float, seed: int) -> np.ndarray:
    """0 train / 1 valid / 2 test per row, seeded; exact counts round(n * fraction)."""
    perm = np.random.default_rng(seed).permutation(n)
    n_test, n_valid = int(round(n * test_fraction)), int(round(n * valid_fraction))
    parts = np.zeros(n, dtype=np.int8)
    parts[perm[:n_test]] = 2
    parts[perm[n_test:n_test + n_valid]] = 1
    return parts


def split_examples(examples: pd.DataFrame, config: DataConfig, calendar: bool = True) -> Splits:
    """Split examples by ``config.split``.

    "time": per user in timestamp order, the last ``test_fraction`` of the user's moments (distinct timestamps:
    all rows at one time go together) go to test and the ``valid_fraction`` before them to valid (at least one
    each, at least one left in train); users with fewer than 3 moments stay in train. "global_time": see
    ``global_starts``. "random": a seeded split of the pairs. ``calendar``: the timestamps are date/times (needed
    for ``valid_start``/``test_start``).

    Rows marked ``TRAIN_ONLY`` (``build_examples`` with ``train_negative_ratio``) take no part in the split, so
    it is the one without them; each is kept, in train, when its user has a training example at its time (its
    positive's), else dropped.
    """
    train_only = None
    if TRAIN_ONLY in examples:
        train_only = examples[TRAIN_ONLY].to_numpy(bool)
        examples = examples.drop(columns=TRAIN_ONLY)
    user_codes, _ = pd.factorize(examples["user_id"])
    job_codes, job_names = pd.factorize(examples["job_id"])
    keys = user_codes.astype(np.int64) * max(len(job_names), 1) + job_codes
    duplicated = pd.Series(keys).duplicated(keep="last").to_numpy()
    if duplicated.any():  # only hand-made examples can repeat a pair; keep the last row of each
        logger.warning("split_examples: dropping %d repeated (user_id, job_id) row(s)", int(duplicated.sum()))
        examples, user_codes = examples[~duplicated], user_codes[~duplicated]
        train_only = None if train_only is None else train_only[~duplicated]
    all_times = examples["timestamp"].to_numpy(np.int64)
    base = np.ones(len(examples), bool) if train_only is None else ~train_only
    times, codes, starts = all_times[base], user_codes[base], None
    if config.split == "random":
        parts = random_parts(len(times), config.valid_fraction, config.test_fraction, config.seed)
    elif config.split == "global_time":
        starts = global_starts(times, config, calendar)
        parts = np.searchsorted(np.asarray(starts), times, side="right").astype(np.int8)
    else:
        parts = per_user_parts(times, codes, config)
    if train_only is None:
        return Splits(*(examples[parts == k].reset_index(drop=True) for k in range(3)), starts=starts)
    parts = with_train_only(parts, user_codes, all_times, train_only)
    return Splits(*(examples[parts == k].reset_index(drop=True) for k in range(3)), starts=starts,
                  train_only=train_only[parts == 0])


def with_train_only(base_parts: np.ndarray, user_codes: np.ndarray, times: np.ndarray,
                    train_only: np.ndarray) -> np.ndarray:
    """Parts of all rows from those of the rows not ``train_only`` (``base_parts``, in order): a ``train_only``
    row is 0 (train) when its user has a training row at its time (its positive's), else -1 (dropped)."""
    parts = np.full(len(times), -1, np.int8)
    parts[~train_only] = base_parts
    trained = parts == 0
    at = pd.MultiIndex.from_arrays([user_codes[train_only], times[train_only]])
    parts[train_only] = np.where(at.isin(pd.MultiIndex.from_arrays([user_codes[trained], times[trained]])), 0, -1)
    return parts


def per_user_parts(times: np.ndarray, user_codes: np.ndarray, config: DataConfig) -> np.ndarray:
    """Split "time": 0 train / 1 valid / 2 test per row, from each user's rows alone (``split_examples``).

    The unit is a user's moment (a distinct timestamp), not a row: a positive and the negatives sampled at its
    time are one event and go to one split. Split by rows, a user with a single apply had it in one split and its
    two negatives in the others, so most validation and test positives had no negative of their own."""
    n = len(times)
    order = np.lexsort((times, user_codes))
    users, at = user_codes[order], times[order]
    new = np.ones(n, dtype=bool)
    new[1:] = (users[1:] != users[:-1]) | (at[1:] != at[:-1])
    moment = np.empty(n, dtype=np.int64)
    moment[order] = np.cumsum(new) - 1  # each row's moment; moments numbered by user, then time
    moment_user = users[new]
    sizes = np.bincount(moment_user, minlength=1) if n else np.zeros(0, np.int64)  # moments per user
    rank = np.arange(len(moment_user)) - (np.cumsum(sizes) - sizes)[moment_user]  # a moment's place in its user's
    n_test = np.where(sizes >= 3, _split_counts(sizes, config.test_fraction, sizes - 1), 0)
    n_valid = np.where(sizes >= 3, _split_counts(sizes, config.valid_fraction, sizes - 1 - n_test), 0)
    size, test, valid = sizes[moment_user], n_test[moment_user], n_valid[moment_user]
    parts = np.where(rank >= size - test, 2, np.where(rank >= size - test - valid, 1, 0))
    return parts[moment]


def _split_counts(sizes: np.ndarray, fraction: float, room: np.ndarray) -> np.ndarray:
    if fraction <= 0:
        return np.zeros_like(sizes)
    counts = np.maximum(1, np.floor(sizes * fraction + 0.5).astype(np.int64))
    return np.minimum(counts, room)


class TimeOrder(Protocol):
    """The examples' times as order statistics: all that ``global_starts`` reads (in memory: ``SortedTimes``;
    on the cluster: ``train.prepare_market.DatasetTimes``)."""

    n: int

    def at(self, j: int) -> int:
        """The j-th smallest time (0-based)."""

    def below(self, t: int) -> int:
        """How many times are earlier than ``t``."""


class SortedTimes:
    """``TimeOrder`` of times held in memory."""

    def __init__(self, times: np.ndarray) -> None:
        self.times = np.sort(np.asarray(times, dtype=np.int64))
        self.n = len(self.times)

    def at(self, j: int) -> int:
        return int(self.times[j])

    def below(self, t: int) -> int:
        return int(np.searchsorted(self.times, t, side="left"))


def global_starts(times: np.ndarray | TimeOrder, config: DataConfig, calendar: bool = True) -> tuple[int, int]:
    """(T1, T2) for split "global_time": train before T1, valid in [T1, T2), test at or after T2.

    ``config.test_start``/``valid_start`` fix them; otherwise T2 is the earliest time that leaves
    round(n * test_fraction) of the n examples (``times`` (n,), or their ``TimeOrder``) at or after it (at least
    1 when the fraction is positive; ties at T2 all go to test), and T1 likewise for ``valid_fraction`` among the
    examples before T2. A split left empty (valid or test only when its fraction is 0 and no date is given) is a
    ConfigError.
    """
    order = times if hasattr(times, "below") else SortedTimes(times)
    for name in ("valid_start", "test_start"):
        if getattr(config, name) is not None and not calendar:
            raise ConfigError(f"{name}: needs date/time interaction timestamps; these are plain numbers or row "
                              f"order (use valid_fraction/test_fraction)", field=name)
    n = order.n
    if not n:
        raise ConfigError("split: global_time: no examples to split", field="split")
    t2 = iso_micros(config.test_start) if config.test_start else _start_leaving(order, n, config.test_fraction, n)
    if config.valid_start is None:
        t1 = _start_leaving(order, order.below(t2), config.valid_fraction, n, empty=t2)
    else:
        t1 = iso_micros(config.valid_start)
        if t2 <= t1:
            raise ConfigError(f"test_start: the test period would start at {_show(t2, calendar)}, not after "
                              f"valid_start {config.valid_start}; set test_start", field="test_start")
    before_t1, before_t2 = order.below(t1), order.below(t2)
    counts = (before_t1, before_t2 - before_t1, n - before_t2)
    wanted = (True, config.valid_fraction > 0 or config.valid_start is not None,
              config.test_fraction > 0 or config.test_start is not None)
    periods = (f"before {_show(t1, calendar)}", f"in [{_show(t1, calendar)}, {_show(t2, calendar)})",
               f"at or after {_show(t2, calendar)}")
    for name, count, want, period in zip(("train", "valid", "test"), counts, wanted, periods):
        if want and count == 0:
            span = f"the examples run from {_show(order.at(0), calendar)} to {_show(order.at(n - 1), calendar)}"
            raise ConfigError(f"split: global_time: the {name} split is empty (no examples {period}); {span}",
                              field="split")
    logger.info("%s", describe_periods(split_periods((t1, t2), counts, calendar)))
    return int(t1), int(t2)


def split_periods(starts: tuple[int, int], counts: Sequence[int], calendar: bool = True) -> dict[str, Any]:
    """The global_time split's periods as data (``run.json``): where valid and test start (ISO, or the order
    key's number without a calendar; train is everything before ``valid_from``) and each split's examples."""
    t1, t2 = (_show(t, calendar) for t in starts)
    return {"valid_from": t1, "test_from": t2, "examples": dict(zip(("train", "valid", "test"), map(int, counts)))}


def describe_periods(periods: Mapping[str, Any]) -> str:
    """``split_periods`` as one line for people; ``convfm train`` prints it, as a real log's test period is what
    its figures mean."""
    t1, t2, n = periods["valid_from"], periods["test_from"], periods["examples"]
    return (f"global_time split: train before {t1}, valid from {t1}, test from {t2} "
            f"({n['train']:,} / {n['valid']:,} / {n['test']:,} examples)")


def _start_leaving(order: TimeOrder, count: int, fraction: float, n: int, empty: Optional[int] = None) -> int:
    """The earliest time with round(n * fraction) (>= 1 if fraction > 0) of the ``count`` smallest times at or
    after it; past the last of them when the fraction is 0 (``empty`` when ``count`` is 0)."""
    if not count:
        return int(empty if empty is not None else 0)
    k = 0 if fraction <= 0 else max(1, int(round(n * fraction)))
    if k == 0:
        return order.at(count - 1) + 1
    return order.at(max(count - k, 0))


def iso_micros(iso: str) -> int:
    return int(np.datetime64(iso, "us").astype(np.int64))


def micros_iso(micros: int) -> str:
    """``iso_micros``' inverse for people and JSON: microseconds since the epoch -> ISO-8601 UTC with its zone."""
    return pd.Timestamp(int(micros), unit="us", tz="UTC").isoformat()


def _show(key: int, calendar: bool) -> str:
    """An order key as an ISO date/time when it is one, else the number."""
    return pd.Timestamp(int(key), unit="us").isoformat() if calendar else str(int(key))
