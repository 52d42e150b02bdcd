"""A job board's own columns beyond the canonical schema (``DataConfig.extra_columns``): an industry, a career
level, a discipline, tags. Each declared column becomes a field of its side, ``job_<slug>`` or ``user_<slug>``
(``slug("Career Level")`` is ``career_level``), over its own vocabulary ``extra_<slug>``. A column declared for
both users and jobs (one slug) shares one vocabulary (the two sides' embeddings of a value are one row) and,
with ``model.profile_match``, gets a pair-match term on whether the two values agree (``shared_pairs``), as
location and level do. A job category or list is also gathered over each user's recent jobs (``history_<slug>``,
``convfm.features.context``), with a history-match term (``history_pairs``).

Kinds: ``category`` (one value per row, normalised as the canonical categories are), ``list`` (``;``-separated
values), ``number``: a dense field of two values, the number standardised by the training table's mean and
spread (clipped to +-5 spreads) and a missing flag (no vocabulary, so no pair-match term), and ``text``: free
text, no field of its own. A job's (requirements, benefits) is read with its title and description: the TF-IDF
text field and the skills found in text. A user's (a headline, a resume) gives the skills found in it, which
join the user's ``skills`` (and the skill-match term): boards with resumes seldom have a skills column.
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Optional

import numpy as np
import pandas as pd

from convfm.data.schema import JOBS, USERS
from convfm.errors import ConfigError
from convfm.features.context import HISTORY_FIELDS, HISTORY_PREFIX, RECENCY_FIELDS, history_field_of
from convfm.features.fields import EXTRA_VOCAB, UNK, EncodedTable, FeatureMap, FieldSpec, Vocabulary, field_columns
from convfm.features.job_fields import JOB_FIELDS, USER_FIELDS
from convfm.features.text import category_values, column_strings, split_lists

KINDS = ("category", "list", "number", "text")
CLIP = 5.0  # standardised numbers are clipped to +-CLIP: one outlier row must not dominate its field
SIDES = {"jobs": "job", "users": "user"}  # table -> field side


def slug(column: str) -> str:
    """A column name as a field name part: ``"Career Level"`` -> ``career_level``."""
    return re.sub(r"[^0-9a-z]+", "_", column.lower()).strip("_")


def check_extra_columns(value: Any, mapping: Optional[Mapping[str, Mapping[str, str]]] = None,
                        field: str = "extra_columns") -> dict[str, dict[str, str]]:
    """``{jobs: {column: kind}, users: {column: kind}}`` checked -> the same as plain dicts (tables in
    ``SIDES``, kinds in ``KINDS``, no column the table reads as a canonical one (by name or through
    ``mapping``, ``DataConfig.columns``), no field name ``<side>_<slug>`` that another field has); ConfigError
    naming the entry otherwise."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{field}: must map a table (jobs, users) to {{column: kind}}, got {value!r}", field=field)
    canonical = {table: {*schema.names, *(str(v) for v in ((mapping or {}).get(table) or {}).values())}
                 for table, schema in (("jobs", JOBS), ("users", USERS))}
    reserved = {*USER_FIELDS, *JOB_FIELDS, *HISTORY_FIELDS, *RECENCY_FIELDS,  # and job_<x> of each history_<x>:
                *(f"job_{h.removeprefix(HISTORY_PREFIX)}" for h in HISTORY_FIELDS if h.startswith(HISTORY_PREFIX))}
    taken: dict[str, str] = {}
    out: dict[str, dict[str, str]] = {}
    for table, columns in value.items():
        where = f"{field}.{table}"
        if table not in SIDES:
            raise ConfigError(f"{where}: unknown table {table!r}; allowed: {list(SIDES)}", field=where)
        if not isinstance(columns, Mapping):
            raise ConfigError(f"{where}: must map column -> kind ({', '.join(KINDS)}), got {columns!r}", field=where)
        for column, kind in columns.items():
            entry = f"{where}.{column}"
            if not isinstance(column, str) or not slug(column) or len(column) > 200:
                raise ConfigError(f"{entry}: a column name needs a letter or digit (at most 200 characters)",
                                  field=entry)
            if kind not in KINDS:
                raise ConfigError(f"{entry}: kind must be one of {list(KINDS)}, got {kind!r}", field=entry)
            if column in canonical[table]:
                raise ConfigError(f"{entry}: {column!r} is read as a canonical {table} column; list only the "
                                  "other columns", field=entry)
            name = f"{SIDES[table]}_{slug(column)}"
            if (name in reserved and kind != "text") or name in taken:  # (text has no field: only one slug each)
                owner = "a built-in field" if name in reserved else f"column {taken[name]!r}"
                raise ConfigError(f"{entry}: its field name {name} is {owner}'s; rename the column in the file",
                                  field=entry)
            taken[name] = column
        out[table] = {str(c): str(k) for c, k in columns.items()}
    kinds: dict[str, tuple[str, str]] = {}
    for table, columns in out.items():
        for column, kind in ((c, k) for c, k in columns.items() if k != "text"):  # text has no vocabulary
            other = kinds.setdefault(slug(column), (column, kind))
            if other[1] != kind:
                raise ConfigError(f"{field}: {other[0]!r} ({other[1]}) and {column!r} ({kind}) share one "
                                  "vocabulary, users' and jobs' alike, so they must be of one kind", field=field)
    return out


def check_warm_start_columns(declared: Mapping[str, Any], published: Mapping[str, Any]) -> None:
    """A warm start keeps the published model's fields: a data config that declares other extra columns is
    refused (declaring none takes the published ones)."""
    if declared and dict(declared) != dict(published):
        raise ConfigError(f"warm start: extra_columns {dict(declared)} differ from the published model's "
                          f"{dict(published)}", field="extra_columns")


class ExtraFields:
    """The declared extra columns of one extractor (``check_extra_columns``' output): their field specs,
    vocabularies and encoding."""

    def __init__(self, columns: Mapping[str, Mapping[str, str]], max_len: int) -> None:
        self.columns, self.max_len = {t: dict(c) for t, c in columns.items()}, max_len
        self.stats: dict[str, list[float]] = {}  # number field -> [mean, spread] of its training values
        self.by_field = {f"{SIDES[table]}_{slug(column)}": (table, column, kind)
                         for table, declared in self.columns.items() for column, kind in declared.items()
                         if kind != "text"}
        # columns read as text (a job's beside its title and description, a user's for skills): no field of their own
        self.text_columns = {table: tuple(c for c, kind in self.columns.get(table, {}).items() if kind == "text")
                             for table in SIDES}

    def names(self, side: str) -> list[str]:
        """Field names of ``side`` ("user" or "job"), in declaration order."""
        return [name for name, (table, _, _) in self.by_field.items() if SIDES[table] == side]

    def spec(self, name: str, vocabs: Mapping[str, Vocabulary]) -> FieldSpec:
        table, column, kind = self.by_field[name]
        side, vocab = SIDES[table], EXTRA_VOCAB + slug(column)
        if kind == "category":
            return FieldSpec(name, "categorical", side, vocab, len(vocabs[vocab]))
        if kind == "number":
            return FieldSpec(name, "dense", side, width=2)
        return FieldSpec(name, "multi", side, vocab, len(vocabs[vocab]), max_len=self.max_len)

    def present(self, frames: Mapping[str, Optional[pd.DataFrame]]) -> dict[str, bool]:
        """Field name -> whether its table was given (a declared column must be in its file: loading checks)."""
        return {name: frames.get(table) is not None and column in frames[table].columns
                for name, (table, column, _) in self.by_field.items()}

    def fit_vocabularies(self, frames: Mapping[str, Optional[pd.DataFrame]], min_freq: int) -> dict[str, Vocabulary]:
        """``extra_<column>`` over the training tables' values (both sides' for a shared column)."""
        values: dict[str, list[str]] = {}
        for table, column, kind in self.by_field.values():
            frame = frames.get(table)
            if frame is None or column not in frame.columns or kind == "number":
                continue
            found = values.setdefault(EXTRA_VOCAB + slug(column), [])
            if kind == "category":
                found.extend(category_values(frame, column))
            else:
                found.extend(v for row in split_lists(column_strings(frame, column)) for v in row)
        return {vocab: Vocabulary.build(v, min_freq) for vocab, v in values.items()}

    def fit_stats(self, frames: Mapping[str, Optional[pd.DataFrame]]) -> None:
        """Each number field's mean and spread over its training table's values (0 and 1 without any)."""
        for name, (table, column, kind) in self.by_field.items():
            if kind == "number":
                values = _numbers(frames.get(table), column)
                values = values[np.isfinite(values)]
                spread = float(values.std()) if len(values) > 1 else 0.0
                self.stats[name] = [float(values.mean()) if len(values) else 0.0, spread if spread > 0 else 1.0]

    def encode(self, field: FieldSpec, df: pd.DataFrame, vocabs: Mapping[str, Vocabulary]) -> np.ndarray:
        """Codes of ``field`` for ``df``'s rows: (n,) for a category, (n, max_len) for a list, (n, 2) floats for a
        number; a missing column or value is padding (a number: 0 and the missing flag), an unseen value
        unknown."""
        _, column, kind = self.by_field[field.name]
        column = matching_column(df, column)
        if kind == "number":
            values = _numbers(df, column)
            missing = ~np.isfinite(values)
            mean, spread = self.stats[field.name]
            scaled = np.where(missing, 0.0, np.clip((np.nan_to_num(values) - mean) / spread, -CLIP, CLIP))
            return np.stack([scaled, missing], axis=1).astype(np.float32)
        if kind == "category":
            return vocabs[field.vocab].lookup(category_values(df, column))
        return vocabs[field.vocab].lookup_lists(split_lists(column_strings(df, column)), self.max_len)

    def decode(self, fields: tuple[FieldSpec, ...], table: EncodedTable, row: int,
               vocabs: Mapping[str, Vocabulary]) -> dict[str, Any]:
        """What a model reads of one encoded row's extra columns (``fields``: its side's fields, ``table``'s
        layout), by column name: a category's normalised value, a list's values, a number (clipped at 5
        spreads); None where missing or unknown to the vocabulary (a list leaves those out). Text columns have
        no field: they are not kept."""
        where = field_columns(fields)
        out: dict[str, Any] = {}
        for field in fields:
            if field.name not in self.by_field:
                continue
            _, column, kind = self.by_field[field.name]
            at = where[field.name][1]
            if kind == "number":
                scaled, missing = table.dense[row, at].tolist()
                mean, spread = self.stats[field.name]
                out[column] = None if missing else round(scaled * spread + mean, 6)
            elif kind == "category":
                out[column] = vocabs[field.vocab].decode(int(table.cat[row, at]))
            else:
                out[column] = [vocabs[field.vocab].decode(int(i)) for i in table.multi[row, at] if i > UNK]
        return out

    def summary(self, sides: Mapping[str, tuple[tuple[FieldSpec, ...], EncodedTable]],
                vocabs: Mapping[str, Vocabulary]) -> dict[str, dict[str, Any]]:
        """What fitted catalogs hold of each declared column, by ``<table>.<column>`` (``sides``: each side's static
        fields and catalog): its kind, its vocabulary's values (a category or list) and the share of rows with no
        known value (missing, or unseen in training). A text column has no field: where one is declared, the
        share of that side's rows with a skill stands for it (``<table>.skills``), text included."""
        out: dict[str, dict[str, Any]] = {}
        for side, (fields, table) in sides.items():
            where, rows = field_columns(fields), slice(1, None)  # catalog row 0 is the unknown row
            texts = [c for t, cs in self.text_columns.items() if SIDES[t] == side for c in cs]
            for field in fields:
                at = where[field.name][1]
                if field.name == f"{side}_skills" and texts:
                    key, entry = f"{side}s.skills", {"kind": f"skills, text {texts} included"}
                    empty = (table.multi[rows, at] <= UNK).all(axis=1)
                elif field.name in self.by_field:
                    table_name, column, kind = self.by_field[field.name]
                    key, entry = f"{table_name}.{column}", {"kind": kind}
                    if kind == "number":
                        empty = table.dense[rows, at][:, 1] > 0  # the missing flag
                    else:
                        entry["values"] = len(vocabs[field.vocab].values)
                        empty = table.cat[rows, at] <= UNK if kind == "category" else \
                            (table.multi[rows, at] <= UNK).all(axis=1)
                else:
                    continue
                out[key] = {**entry, "without_value": round(float(empty.mean()), 4) if len(empty) else 0.0}
        return out


def describe_summary(summary: Mapping[str, Mapping[str, Any]]) -> str:
    """``ExtraFields.summary`` as one line for people: ``convfm train`` prints it, so that a column that holds
    nothing (a skills vocabulary text finds no word of, a category missing everywhere) shows."""
    parts = [f"{key} ({entry['kind']}" + (f", {entry['values']:,} values" if "values" in entry else "")
             + f"): {entry['without_value']:.0%} of rows without a value" for key, entry in summary.items()]
    return "columns read: " + "; ".join(parts)


def is_extra_number(field: FieldSpec) -> bool:
    """Whether ``field`` is an extra column of kind number (the only dense fields named ``<side>_<slug>``)."""
    return field.kind == "dense" and field.side in SIDES.values() and field.name.startswith(f"{field.side}_")


def matching_column(df: pd.DataFrame, column: str) -> str:
    """``column``, or the column of ``df`` of the same slug (a service's ``extra`` keys: "state" for "State"),
    never a canonical one (an extra "Company" is not the built-in company)."""
    if column in df.columns:
        return column
    canonical = {*JOBS.names, *USERS.names}
    return next((c for c in df.columns if isinstance(c, str) and c not in canonical and slug(c) == slug(column)),
                column)


def _numbers(df: Optional[pd.DataFrame], column: str) -> np.ndarray:
    """``df[column]`` as float64, NaN where missing or not a number (serving gives numbers as text)."""
    if df is None or column not in df.columns:
        return np.full(0 if df is None else len(df), np.nan)
    return pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def history_pairs(feature_map: FeatureMap) -> tuple[tuple[str, str], ...]:
    """(history field, job field) of every extra job column the user's recent jobs are gathered over: the
    history-match pairs beyond skills, companies and locations (``convfm.model.pair_match``)."""
    names = {f.name for f in feature_map.fields}
    return tuple((history_field_of(f.name), f.name) for f in feature_map.of_side("job").fields
                 if f.vocab.startswith(EXTRA_VOCAB) and history_field_of(f.name) in names)


def shared_pairs(feature_map: FeatureMap) -> tuple[tuple[str, str], ...]:
    """(user field, job field) of every extra column declared for both sides: the profile-match pairs beyond
    location and level (``convfm.model.pair_match``)."""
    def extra(field: FieldSpec) -> bool:  # user_<slug> or job_<slug> over extra_<slug> (not history_<slug>)
        side, _, rest = field.name.partition("_")
        return side == field.side and field.vocab == EXTRA_VOCAB + rest

    job = {f.vocab: f.name for f in feature_map.of_side("job").fields if extra(f)}
    return tuple((f.name, job[f.vocab]) for f in feature_map.of_side("user").fields if extra(f) and f.vocab in job)
