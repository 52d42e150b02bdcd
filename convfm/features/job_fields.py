"""The job market's fields: which columns feed which field and vocabulary, and how vocabularies and salary
statistics are fitted (training data only)."""
from __future__ import annotations

from itertools import chain
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from convfm.errors import ConfigError
from convfm.features.fields import Vocabulary
from convfm.features.text import category_values, column_strings, split_lists

FREE_TEXT_COLUMNS = ("title", "description")  # embedded by TF-IDF + SVD, searched for skills
SALARY_COLUMNS = ("salary_min", "salary_max")
USER_FIELDS = ("user_id", "user_skills", "user_location", "user_experience")
JOB_FIELDS = ("job_id", "job_skills", "job_location", "company", "job_type", "job_experience", "salary", "text")
# categorical field -> (source column, vocabulary); fields sharing a vocabulary share embeddings
CATEGORICAL = {
    "user_id": ("user_id", "user"),
    "user_location": ("location", "location"),
    "user_experience": ("experience_level", "experience_level"),
    "job_id": ("job_id", "job"),
    "job_location": ("location", "location"),
    "company": ("company", "company"),
    "job_type": ("job_type", "job_type"),
    "job_experience": ("experience_level", "experience_level"),
}
ID_FIELDS = ("user_id", "job_id")


def log_salary(df: pd.DataFrame, column: str) -> np.ndarray:
    """log1p of a salary column, NaN where missing or not a number."""
    if column not in df.columns:
        return np.full(len(df), np.nan)
    values = pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    with np.errstate(invalid="ignore"):
        logs = np.log1p(np.clip(values, 0.0, None))
    return np.where(np.isfinite(logs), logs, np.nan)


def salary_stats(jobs_df: pd.DataFrame) -> Optional[dict[str, list[float]]]:
    """{"mean": [min, max], "std": [min, max]} of log1p salaries; None when the jobs have no salary column."""
    if not any(c in jobs_df.columns for c in SALARY_COLUMNS):
        return None
    logs = np.stack([log_salary(jobs_df, c) for c in SALARY_COLUMNS], axis=1)
    seen = np.isfinite(logs)
    mean = [float(logs[seen[:, i], i].mean()) if seen[:, i].any() else 0.0 for i in range(2)]
    std = [float(logs[seen[:, i], i].std()) if seen[:, i].sum() > 1 else 0.0 for i in range(2)]
    return {"mean": mean, "std": [s if s > 0 else 1.0 for s in std]}


def salary_features(df: pd.DataFrame, stats: dict[str, list[float]]) -> np.ndarray:
    """(N, 3): standardised log1p(salary_min), log1p(salary_max) (missing -> 0), any-missing flag."""
    logs = np.stack([log_salary(df, c) for c in SALARY_COLUMNS], axis=1)
    missing = np.isnan(logs)
    scaled = (logs - np.array(stats["mean"])) / np.array(stats["std"])
    scaled[missing] = 0.0
    return np.concatenate([scaled, missing.any(axis=1, keepdims=True)], axis=1).astype(np.float32)


def names_skills(df: Optional[pd.DataFrame]) -> bool:
    """Whether ``df`` has a ``skills`` column naming at least one skill."""
    return df is not None and "skills" in df.columns and bool((column_strings(df, "skills") != "").any())


def text_skill_sides(skills_from_text: bool, job_texts: Sequence[str], user_texts: Sequence[str],
                     skills_named: bool) -> tuple[bool, bool]:
    """(find skills in jobs' text?, in users' text?). Text is searched for the skills the files' ``skills``
    columns name (their vocabulary; ``skills_named``: some cell names one): without any there is nothing to find,
    and ``job_skills`` and ``user_skills`` would be fields of padding alone. A user text column is read for
    nothing else, so declaring one that can find none is a ConfigError naming it and the way out."""
    searched = skills_from_text and skills_named
    if user_texts and not searched:
        why = "skills_from_text is off" if not skills_from_text else "no skills column of the jobs or users " \
            "file names a skill, and text is searched for those"
        raise ConfigError(f"extra_columns.users: text column(s) {list(user_texts)} give the skills found in them, "
                          f"but {why}: add a ';'-separated skills column to the jobs or users file, or drop them "
                          "from data.extra_columns.users", field="extra_columns")
    return searched and bool(job_texts), searched and bool(user_texts)


def _trained(ids: Iterable[str], interactions_df: Optional[pd.DataFrame], column: str) -> Iterable[str]:
    """``ids`` that occur in ``interactions_df[column]``; all of them without interactions."""
    if interactions_df is None:
        return ids
    seen = set(column_strings(interactions_df, column).tolist())
    return (i for i in ids if i in seen)


def fit_vocabularies(
    jobs_df: pd.DataFrame, interactions_df: Optional[pd.DataFrame], users_df: Optional[pd.DataFrame],
    text_skills: bool, min_freq: int, base: Optional[Mapping[str, Vocabulary]] = None,
    extra: Mapping[str, Vocabulary] = {},
) -> dict[str, Vocabulary]:
    """Every vocabulary of the job market's fields (see ``JobFeatureExtractor``), from training data.

    With ``interactions_df``, the id vocabularies hold only the ids that have a training example: any other
    id's row would never be trained, so it reads the unknown row, which ``ModelConfig.id_dropout`` trains.
    With ``base`` (a published extractor's vocabularies: a warm start) each vocabulary is the published one
    extended by the values these rules admit from this data (``min_freq`` counted in this data alone).
    ``extra``: the extra columns' vocabularies (``convfm.features.extra_fields``), extended the same way."""
    users = users_df if users_df is not None else pd.DataFrame()
    vocabs = {
        "user": Vocabulary.build(_trained(chain(column_strings(users_df, "user_id"),
                                                column_strings(interactions_df, "user_id")),
                                          interactions_df, "user_id")),
        "job": Vocabulary.build(_trained(column_strings(jobs_df, "job_id"), interactions_df, "job_id")),
    }
    if "skills" in jobs_df.columns or "skills" in users.columns or text_skills:
        lists = split_lists(chain(column_strings(jobs_df, "skills"), column_strings(users_df, "skills")))
        vocabs["skill"] = Vocabulary.build(chain.from_iterable(lists), min_freq)
    values: dict[str, list[str]] = {}
    for field in ("job_location", "company", "job_type", "job_experience", "user_location", "user_experience"):
        column, vocab = CATEGORICAL[field]
        frame = users if field.startswith("user_") else jobs_df
        if column in frame.columns:
            values.setdefault(vocab, []).extend(category_values(frame, column))
    vocabs.update({vocab: Vocabulary.build(v, min_freq) for vocab, v in values.items()}, **extra)
    if base is None:
        return vocabs
    return {name: base[name].extended(v.values) if name in base else v for name, v in vocabs.items()}
