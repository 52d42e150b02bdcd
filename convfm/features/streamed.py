"""``JobFeatureExtractor``'s compact examples for distributed preparation: what the Ray Data stage streams to the
training workers (catalog rows and the history as job rows, ~116 bytes an example), and the ``ExampleSet`` each
worker rebuilds from them, the same tables and rows ``JobFeatureExtractor.example_set`` builds in memory."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from convfm.data.batching import ExampleSet
from convfm.features.base import concat_rows
from convfm.features.context import example_times, now_micros


class StreamedExamples:
    """``streamed_columns``/``streamed_set`` for ``JobFeatureExtractor`` (its base class)."""

    def streamed_columns(self, examples_df: pd.DataFrame, recent: np.ndarray, counts: np.ndarray
                         ) -> dict[str, np.ndarray]:
        """Examples as the compact columns distributed preparation streams to the workers (``streamed_set``
        rebuilds their ExampleSet): the user's and the job's catalog rows, the recency row, and the history given
        as job ids ``recent`` (n, history_length), most recent first ("" padding), kept as job-catalog rows (-1:
        none), with its positives before t ``counts`` (n,). ~116 bytes an example, where encoded rows repeat
        each history's lists (~2.6 KB)."""
        users, jobs = self._catalog_rows(examples_df, "examples")
        columns = {"user_row": users, "job_row": jobs}
        if self._recency is not None:
            times = example_times(examples_df, "examples")
            columns["recency_row"] = self._recency.rows(jobs, now_micros() if times is None else times)
        if self._history is not None:
            recent = np.asarray(recent, dtype=object).reshape(len(examples_df), self.history_length)
            columns.update(history_rows=self._history_rows(recent).astype(np.int32),
                           history_count=np.asarray(counts, dtype=np.int64))
        return columns

    def streamed_set(self, batches: Sequence[Mapping[str, np.ndarray]], labels: np.ndarray) -> ExampleSet:
        """The ExampleSet of ``streamed_columns`` batches: the tables ``example_set`` builds, each batch's distinct
        history states (recent jobs, positives before t) encoded once (per batch, so the keys stay small; a
        user's examples sit together in their bucket's batches)."""
        column = {name: np.concatenate([b[name] for b in batches]) for name in ("user_row", "job_row", "recency_row")
                  if name in batches[0]}
        tables, rows = [self.user_catalog], [column["user_row"]]
        if self._history is not None:
            states, encoded, offset = [], [], 0
            for batch in batches:
                key = np.concatenate([batch["history_rows"].astype(np.int64), batch["history_count"][:, None]], axis=1)
                distinct, state = np.unique(key, axis=0, return_inverse=True)
                encoded.append(self._history.encode(self.job_catalog, distinct[:, :-1], distinct[:, -1]))
                states.append(state.reshape(-1) + offset)
                offset += len(distinct)
            tables.append(concat_rows(encoded))
            rows.append(np.concatenate(states))
        tables.append(self.job_catalog)
        rows.append(column["job_row"])
        if self._recency is not None:
            tables.append(self._recency.table)
            rows.append(column["recency_row"])
        return ExampleSet(tables, np.stack(rows, axis=1).astype(np.int64), labels)
