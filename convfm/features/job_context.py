"""``JobFeatureExtractor``'s context at a time (its base class ``TimeContext``): the users' histories (their
positives strictly before each example's or request's time) and the jobs' recent positives (popularity)."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import pandas as pd

from convfm.features.base import UNKNOWN_ROW
from convfm.features.context import UserHistory, history_states
from convfm.features.fields import EncodedTable
from convfm.features.recency import JobPopularity, RecencyEncoder
from convfm.features.text import column_strings


class TimeContext:
    """History and popularity for ``JobFeatureExtractor`` (its base class): what an example reads at its time."""

    def history_table(self, user_ids: np.ndarray, times: Optional[np.ndarray],
                      history: Optional[UserHistory] = None) -> tuple[np.ndarray, EncodedTable]:
        """(state row of each query (n,), encoded history states): each user's positives strictly before t."""
        history = self.history if history is None else history
        state, start, count, total = history_states(history, user_ids, times)
        return state, self.encode_history(history.recent(start, count, self.history_length), total)

    def encode_history(self, recent: np.ndarray, counts: np.ndarray) -> EncodedTable:
        """History fields of job-id lists ``recent`` (R, history_length), most recent first ("" padding), and
        each row's positives before t ``counts`` (R,)."""
        return self._history.encode(self.job_catalog, self._history_rows(recent), np.asarray(counts))

    def _history_rows(self, recent: np.ndarray) -> np.ndarray:
        """Job-id lists (R, history_length) -> their job-catalog rows, -1 for padding ("")."""
        rows = self._job_index.rows(recent.ravel()).reshape(recent.shape)
        return np.where(recent == "", -1, rows)

    def user_side(self, static: EncodedTable, user_ids: np.ndarray, times: Optional[np.ndarray] = None,
                  recent: Optional[np.ndarray] = None) -> EncodedTable:
        """Every user-side field: ``static`` rows (catalog rows or ``transform_users``) joined with the history
        of ``user_ids`` at ``times`` (None: after every known event), or of the given ``recent`` job-id lists
        (R, history_length), most recent first ("" padding), for users the history does not know."""
        if self._history is None:
            return static
        if recent is None:
            state, table = self.history_table(np.asarray(user_ids), times)
            return static.join(table.take(state))
        return static.join(self.encode_history(recent, (recent != "").sum(axis=1)))

    def set_positives(self, positives: pd.DataFrame) -> None:
        """What the context features read at a time: (user_id, job_id, timestamp) of every positive, all splits
        (an example sees only those strictly before its time): the users' histories and the jobs' popularity."""
        self.history = UserHistory.from_frame(positives)
        popularity = self.popularity
        if popularity is not None:
            rows = self._job_index.rows(column_strings(positives, "job_id"))
            known = rows != UNKNOWN_ROW  # a job outside the catalog is never ranked: its count is not kept
            popularity.set(rows[known], positives["timestamp"].to_numpy(np.int64)[known])

    def add_positives(self, job_ids: Sequence[str], times: np.ndarray) -> None:
        """Count logged positives (serving's live events; ``times`` int64 microseconds) in the jobs' popularity
        (the users' histories take them from the live overlay, ``serve.events``). Events at or before the
        training data's last positive are left out: a model trained with the event log counts them already."""
        if self.popularity is not None and len(job_ids):
            rows, times = self._job_index.rows(np.asarray(job_ids, dtype=object)), np.asarray(times, np.int64)
            kept = (rows != UNKNOWN_ROW) & (times > self.popularity.end)
            self.popularity.add(rows[kept], times[kept])

    @property
    def popularity(self) -> Optional[JobPopularity]:
        """The jobs' recent positives, or None without a ``job_popularity`` field."""
        return None if self._recency is None else self._recency.popularity

    @property
    def recency_encoder(self) -> Optional[RecencyEncoder]:
        """Job age buckets at a time, or None without recency fields (ranking builds the job side with it)."""
        return self._recency
