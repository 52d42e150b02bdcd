"""Feature extraction: DataFrames -> encoded side tables (``EncodedTable``) and ``ExampleSet``s.

``JobFeatureExtractor`` encodes the job market (a user side and a job side). It is fitted on training data
only and keeps encoded catalogs of the fitted users and jobs, so an example is two row indices. Row 0 of each
catalog is the *unknown* row (id = unknown index 1, every other field padding/missing): an id that was not
fitted maps to it, so encoding never fails on new ids. ``TableFeatureExtractor`` encodes one generic table.

Both save as JSON + NPZ (see ``convfm.features.base``; the job extractor's files: ``job_artifact``) and
``load_extractor`` returns the right class.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from convfm.data.batching import ExampleSet
from convfm.errors import ArtifactError, ConfigError, ConvFMError
from convfm.features.extra_fields import ExtraFields, check_extra_columns, matching_column
from convfm.features.base import (
    UNKNOWN_ROW, RowIndex, concat_rows, encode_fields, labels_of, read_artifact, require_frame, with_room,
)
from convfm.data.liveness import ALWAYS, NEVER, JobWindows
from convfm.features.context import (
    RECENCY_FIELDS, HistoryEncoder, UserHistory, example_times, is_history_field, now_micros,
)
from convfm.features.recency import JobPopularity, RecencyEncoder
from convfm.features.job_fields import (
    CATEGORICAL, FREE_TEXT_COLUMNS, ID_FIELDS, JOB_FIELDS, USER_FIELDS, fit_vocabularies, salary_features,
    names_skills, salary_stats, text_skill_sides,
)
from convfm.features.job_artifact import JobArtifact
from convfm.features.job_context import TimeContext
from convfm.features.streamed import StreamedExamples
from convfm.features.fields import PAD, UNK, EncodedTable, FeatureMap, FieldSpec, Vocabulary
from convfm.features.table import TableFeatureExtractor
from convfm.features.text import (
    SkillMatcher, TextEncoder, category_values, column_strings, joined_text, split_lists,
)
from convfm.validate import check_bool, check_int, check_number

__all__ = ["JobFeatureExtractor", "TableFeatureExtractor", "RowIndex", "load_extractor", "UNKNOWN_ROW"]

class JobFeatureExtractor(JobArtifact, StreamedExamples, TimeContext):
    """Users x jobs features; see the module docstring for the catalogs and their unknown row 0.

    Vocabularies: ``user``, ``job`` (the ids with a training example, ``min_freq`` does not apply to ids),
    ``skill`` (user and job skills), ``location`` and ``experience_level`` (shared by both sides), ``company``,
    ``job_type``, and ``extra_<slug>`` per declared extra column (``convfm.features.extra_fields``).
    Categories and skills are lower-cased with single spaces. A job's skills are its ``skills`` column then the
    known skills found in title + description; unknown skills go last and the list is cut at ``max_skills``.
    """

    kind = "jobs"

    def __init__(
        self,
        max_skills: int = 50,
        min_freq: int = 1,
        text_dim: int = 16,
        max_text_features: int = 5000,
        skills_from_text: bool = True,
        seed: int = 0,
        history_length: int = 20,
        recency: bool = True,
        popularity_days: Optional[float] = None,
        extra_columns: Optional[Mapping[str, Mapping[str, str]]] = None,
    ) -> None:
        self.max_skills, self.min_freq = check_int(max_skills, "max_skills", 1), check_int(min_freq, "min_freq", 1)
        self.text_dim = check_int(text_dim, "text_dim", 0)
        self.max_text_features = check_int(max_text_features, "max_text_features", 1)
        self.seed = check_int(seed, "seed", 0)
        self.skills_from_text = check_bool(skills_from_text, "skills_from_text")
        self.history_length = check_int(history_length, "history_length", 0, 200)
        self.recency = check_bool(recency, "recency")
        self.popularity_days = None if popularity_days is None else \
            check_number(popularity_days, "popularity_days", 0, 365, low_open=True)
        self.extra_columns = check_extra_columns(extra_columns)
        self._extra = ExtraFields(self.extra_columns, self.max_skills)
        # The positives that history features read (set by prepare_data; saved as each user's latest).
        self.history = UserHistory.empty()
        self._history: Optional[HistoryEncoder] = None
        self._recency: Optional[RecencyEncoder] = None
        self.vocabs: dict[str, Vocabulary] = {}
        self.job_catalog: Optional[EncodedTable] = None
        self._job_room: Optional[EncodedTable] = None  # put_jobs's buffer: job_catalog is a view of it
        self.user_catalog: Optional[EncodedTable] = None
        self.job_ids: list[str] = []  # aligned with job_catalog rows; job_ids[0] == "" (the unknown row)
        self.user_ids: list[str] = []
        self._feature_map: Optional[FeatureMap] = None
        self._text_columns: tuple[str, ...] = ()
        self._salary: Optional[dict[str, list[float]]] = None  # {"mean": [min, max], "std": [min, max]}
        self._text: Optional[TextEncoder] = None
        self._matcher: Optional[SkillMatcher] = None
        self._job_index = self._user_index = RowIndex([])

    def get_config(self) -> dict[str, Any]:
        return {"max_skills": self.max_skills, "min_freq": self.min_freq, "text_dim": self.text_dim,
                "max_text_features": self.max_text_features, "skills_from_text": self.skills_from_text,
                "seed": self.seed, "history_length": self.history_length, "recency": self.recency,
                "popularity_days": self.popularity_days, "extra_columns": self.extra_columns}

    @property
    def feature_map(self) -> FeatureMap:
        self._check_fitted()
        return self._feature_map

    def _check_fitted(self) -> None:
        if self._feature_map is None:
            raise ConvFMError("JobFeatureExtractor is not fitted: call fit() or load() first")

    @property
    def job_rows(self) -> dict[str, int]:
        """job id -> job_catalog row (first occurrence); ids not in it use row ``UNKNOWN_ROW``."""
        return self._job_index.mapping

    @property
    def user_rows(self) -> dict[str, int]:
        """user id -> user_catalog row; ids not in it use row ``UNKNOWN_ROW``."""
        return self._user_index.mapping

    # ----------------------------------------------------------------------------------------------- fit
    def fit(
        self,
        jobs_df: pd.DataFrame,
        interactions_df: Optional[pd.DataFrame] = None,
        users_df: Optional[pd.DataFrame] = None,
        windows: Optional[JobWindows] = None,
        base: Optional["JobFeatureExtractor"] = None,
    ) -> "JobFeatureExtractor":
        """Fit on training data only: vocabularies, salary statistics, text model, catalogs.

        ``windows`` (the jobs' live windows, in ``jobs_df`` order; ``convfm.data.liveness``) enables the recency
        fields when ``recency`` is on and some job has a ``posted_at``: without a calendar a job has no age.
        ``base``, a published extractor of the same config (a warm start), keeps its salary statistics and text
        model (so the published dense weights keep their meaning; new values outside the old range just scale
        further) and extends its vocabularies (``fit_vocabularies``); the fields must come out the same."""
        require_frame(jobs_df, "jobs", ["job_id"])
        if interactions_df is not None:
            require_frame(interactions_df, "interactions", ["user_id", "job_id"])
        if users_df is not None:
            require_frame(users_df, "users", ["user_id"])
        if base is not None and base.get_config() != self.get_config():
            raise ConfigError(f"warm start: extractor config {self.get_config()} differs from the published "
                              f"{base.get_config()}")
        has_job = jobs_df.columns.__contains__
        has_user = (lambda c: False) if users_df is None else users_df.columns.__contains__
        self._text_columns = base._text_columns if base is not None else (
            *(c for c in FREE_TEXT_COLUMNS if has_job(c)), *self._extra.text_columns["jobs"])
        text_skills, user_text_skills = text_skill_sides(self.skills_from_text, self._text_columns,
                                                         self._extra.text_columns["users"],
                                                         names_skills(jobs_df) or names_skills(users_df))
        extra = self._extra.fit_vocabularies({"jobs": jobs_df, "users": users_df}, self.min_freq)
        if base is None:
            self._extra.fit_stats({"jobs": jobs_df, "users": users_df})
        else:  # as the salary statistics: the published dense weights keep their meaning
            self._extra.stats = dict(base._extra.stats)
        self.vocabs = fit_vocabularies(jobs_df, interactions_df, users_df, text_skills or user_text_skills,
                                       self.min_freq, None if base is None else base.vocabs, extra)
        self._salary, self._text = (base._salary, base._text) if base is not None else (salary_stats(jobs_df), None)
        if base is None and self._text_columns and self.text_dim > 0:
            texts = self._texts(jobs_df, self._text_columns)
            self._text = TextEncoder.fit(texts, self.text_dim, self.max_text_features, self.seed)
        present = {
            "user_id": True, "user_skills": has_user("skills") or user_text_skills,
            "user_location": has_user("location"),
            "user_experience": has_user("experience_level"), "job_id": True,
            "job_skills": has_job("skills") or text_skills, "job_location": has_job("location"),
            "company": has_job("company"), "job_type": has_job("job_type"),
            "job_experience": has_job("experience_level"),
            "salary": self._salary is not None, "text": self._text is not None,
            **self._extra.present({"jobs": jobs_df, "users": users_df}),
        }
        user = [self._spec(n) for n in self._field_names("user") if present[n]]
        job = [self._spec(n) for n in self._field_names("job") if present[n]]
        self._set_context(job, windows, "expires_at" in jobs_df.columns and jobs_df["expires_at"].notna().any())
        self._feature_map = FeatureMap(tuple(user + self._history_fields() + job + self._recency_fields()))
        if base is not None:
            self._feature_map.check_grown_from(base.feature_map, "warm start")
        self._matcher = SkillMatcher(self.vocabs["skill"].values) if text_skills or user_text_skills else None
        self._fit_catalogs(jobs_df, interactions_df, users_df)
        return self

    def _field_names(self, side: str) -> list[str]:
        """The static fields ``side`` may have, in feature-map order: the built-in ones, then the extra ones."""
        return [*(USER_FIELDS if side == "user" else JOB_FIELDS), *self._extra.names(side)]

    def _spec(self, name: str) -> FieldSpec:
        if name in self._extra.by_field:
            return self._extra.spec(name, self.vocabs)
        side = "user" if name in USER_FIELDS else "job"
        if name in CATEGORICAL:
            vocab = CATEGORICAL[name][1]
            return FieldSpec(name, "categorical", side, vocab, len(self.vocabs[vocab]))
        if name in ("user_skills", "job_skills"):
            return FieldSpec(name, "multi", side, "skill", len(self.vocabs["skill"]), max_len=self.max_skills)
        if name == "salary" and self._salary is not None:
            return FieldSpec(name, "dense", side, width=3)
        if name == "text" and self._text is not None:
            return FieldSpec(name, "dense", side, width=self._text.width)
        raise ValueError(f"unknown or unavailable field {name!r}")

    def _set_context(self, job_fields: list[FieldSpec], windows: Optional[JobWindows], expiry: bool) -> None:
        """The history and recency encoders (None when off); ``windows`` in catalog order after row 0."""
        self._history = HistoryEncoder(self.history_length, job_fields) if self.history_length else None
        self._recency = None
        if self.recency and windows is not None and (windows.start != ALWAYS).any():
            popularity = None if self.popularity_days is None else JobPopularity(self.popularity_days)
            self._recency = RecencyEncoder(np.concatenate([[ALWAYS], windows.start]),
                                           np.concatenate([[NEVER], windows.end]), bool(expiry), popularity)

    def _history_fields(self) -> list[FieldSpec]:
        return [] if self._history is None else self._history.fields()

    def _recency_fields(self) -> list[FieldSpec]:
        return [] if self._recency is None else self._recency.fields()

    def _static_fields(self, side: str) -> tuple[FieldSpec, ...]:
        """The fields of ``side`` that describe the user or job alone (not history or recency at a time)."""
        return tuple(f for f in self.feature_map.of_side(side).fields
                     if not is_history_field(f.name) and f.name not in RECENCY_FIELDS)

    def _fit_catalogs(
        self, jobs_df: pd.DataFrame, interactions_df: Optional[pd.DataFrame], users_df: Optional[pd.DataFrame]
    ) -> None:
        unknown = self.transform_jobs(pd.DataFrame({"job_id": [""]}))
        self.job_catalog = concat_rows([unknown, self.transform_jobs(jobs_df)])
        self.job_ids = [""] + column_strings(jobs_df, "job_id").tolist()
        profiles = column_strings(users_df, "user_id").tolist()
        known = set(profiles)
        extra = [u for u in dict.fromkeys(column_strings(interactions_df, "user_id")) if u and u not in known]
        tables = [self.transform_users(pd.DataFrame({"user_id": [""]}))]
        if users_df is not None:
            tables.append(self.transform_users(users_df))
        tables.append(self.transform_users(pd.DataFrame({"user_id": pd.Series(extra, dtype=object)})))
        self.user_catalog = concat_rows(tables)
        self.user_ids = [""] + profiles + extra
        self._index_catalogs()

    def _index_catalogs(self) -> None:
        self._job_index, self._user_index = RowIndex(self.job_ids), RowIndex(self.user_ids)

    def extra_summary(self) -> dict[str, dict[str, Any]]:
        """What the fitted catalogs hold of the declared extra columns (``ExtraFields.summary``)."""
        return self._extra.summary({side: (self._static_fields(side), getattr(self, f"{side}_catalog"))
                                    for side in ("user", "job")}, self.vocabs)

    def job_extra_values(self, row: int) -> dict[str, Any]:
        """What the model reads of job catalog ``row``'s extra columns (``ExtraFields.decode``)."""
        return self._extra.decode(self._static_fields("job"), self.job_catalog, row, self.vocabs)

    # ------------------------------------------------------------------------------------------ transform
    def transform_jobs(self, jobs_df: pd.DataFrame) -> EncodedTable:
        """Job-side fields of each row; unseen values -> unknown (1), missing values/columns -> padding (0)."""
        return self._encode_side("job", jobs_df)

    def put_jobs(self, jobs_df: pd.DataFrame, posted: np.ndarray, expires: np.ndarray) -> np.ndarray:
        """Add or replace catalog jobs while a model serves (the live catalog): rows encoded as
        ``transform_jobs`` does (an id outside the vocabulary reads the unknown slot, its content fields count),
        written over the id's catalog row or appended; ``posted``/``expires`` (n,) int64 microseconds set the
        recency windows. Returns the rows (n,). The catalog grows in a buffer that doubles when full."""
        table, ids = self.transform_jobs(jobs_df), column_strings(jobs_df, "job_id").tolist()
        start = len(self.job_ids)
        new = [i for i in dict.fromkeys(ids) if i not in self.job_rows]
        self._job_index.add(new, start)
        rows, end = self._job_index.rows(np.array(ids, dtype=object)), start + len(new)
        room = self._job_room if self._job_room is not None and self.job_catalog.cat.base is self._job_room.cat \
            else self.job_catalog
        room = EncodedTable(*(with_room(a, end) for a in room.arrays().values()))
        for buffer, values in zip(room.arrays().values(), table.arrays().values()):
            buffer[rows] = values
        self._job_room, self.job_catalog, self.job_ids = room, room.take(slice(0, end)), self.job_ids + new
        if self._recency is not None:
            self._recency.put(rows, posted, expires)
        return rows

    def transform_users(self, users_df: pd.DataFrame) -> EncodedTable:
        """User-side fields of each row, from the row itself (the cold-start path: profile, unknown id ok)."""
        return self._encode_side("user", users_df)

    def transform_interactions(self, interactions_df: pd.DataFrame) -> EncodedTable:
        """Full rows (user fields, then job fields) looked up from the catalogs by ``user_id``/``job_id``, with
        history and recency at each row's ``timestamp`` (see ``example_set``)."""
        tables, rows = self._example_tables(interactions_df, "interactions", None)
        parts = [table.take(rows[:, s]) for s, table in enumerate(tables)]
        return functools.reduce(EncodedTable.join, parts)

    def example_set(self, examples_df: pd.DataFrame, label: str = "label",
                    history: Optional[UserHistory] = None) -> ExampleSet:
        """Examples as rows of [user_catalog, history states, job_catalog, recency buckets] (the context tables
        only when those fields exist), labels from ``label``. History and recency are read at each example's
        ``timestamp`` (int64 order key; without the column: after every known event, and now) from ``history``
        (default ``self.history``)."""
        tables, rows = self._example_tables(examples_df, "examples", history)
        return ExampleSet(tables, rows, labels_of(examples_df, label, "examples"))

    def _example_tables(self, df: pd.DataFrame, what: str, history: Optional[UserHistory]
                        ) -> tuple[list[EncodedTable], np.ndarray]:
        users, jobs = self._catalog_rows(df, what)
        times = example_times(df, what)
        tables, rows = [self.user_catalog], [users]
        if self._history is not None:
            state, table = self.history_table(column_strings(df, "user_id"), times, history)
            tables.append(table)
            rows.append(state)
        tables.append(self.job_catalog)
        rows.append(jobs)
        if self._recency is not None:
            tables.append(self._recency.table)
            rows.append(self._recency.rows(jobs, now_micros() if times is None else times))
        return tables, np.stack(rows, axis=1)

    def _catalog_rows(self, df: pd.DataFrame, what: str) -> tuple[np.ndarray, np.ndarray]:
        require_frame(df, what, ["user_id", "job_id"])
        self._check_fitted()
        return (self._user_index.rows(column_strings(df, "user_id")),
                self._job_index.rows(column_strings(df, "job_id")))

    def _encode_side(self, side: str, df: pd.DataFrame) -> EncodedTable:
        require_frame(df, f"{side}s")
        fields = self._static_fields(side)
        return encode_fields(fields, {f.name: self._encode_field(f, df) for f in fields}, len(df))

    def _encode_field(self, field: FieldSpec, df: pd.DataFrame) -> np.ndarray:
        if field.name in self._extra.by_field:
            return self._extra.encode(field, df, self.vocabs)
        if field.name in ID_FIELDS:  # a missing id is an unknown id, not padding
            ids = self.vocabs[CATEGORICAL[field.name][1]].lookup(column_strings(df, field.name))
            return np.where(ids == PAD, UNK, ids)
        if field.kind == "categorical":
            column, vocab = CATEGORICAL[field.name]
            return self.vocabs[vocab].lookup(category_values(df, column))
        if field.kind == "multi":
            lists = split_lists(column_strings(df, "skills"))
            columns = self._text_columns if field.side == "job" else self._extra.text_columns["users"]
            if self._matcher is not None and columns:
                found = self._matcher.find_all(self._texts(df, columns))
                lists = [list(dict.fromkeys(a + b)) for a, b in zip(lists, found)]
            return self.vocabs["skill"].lookup_lists(lists, self.max_skills)
        if field.name == "salary":
            return salary_features(df, self._salary)
        return self._text.transform(self._texts(df, self._text_columns))

    @staticmethod
    def _texts(df: pd.DataFrame, columns: Sequence[str]) -> list[str]:
        """Each row's text ``columns`` (a job's title, description and extra text columns, or a user's extra text
        columns; an extra one matched to a service's ``extra`` key case and punctuation aside) joined."""
        return joined_text(df, [c if c in FREE_TEXT_COLUMNS else matching_column(df, c) for c in columns])


def load_extractor(path: str | Path) -> "JobFeatureExtractor | TableFeatureExtractor":
    """Load a saved extractor of either kind (the kind is recorded in its JSON)."""
    meta, arrays, source = read_artifact(path)
    classes = {JobFeatureExtractor.kind: JobFeatureExtractor, TableFeatureExtractor.kind: TableFeatureExtractor}
    if meta.get("kind") not in classes:
        raise ArtifactError(f"{source}: unknown extractor kind {meta.get('kind')!r}; known: {sorted(classes)}")
    return classes[meta["kind"]].from_artifact(meta, arrays, source)
