"""``JobFeatureExtractor``'s artifact: JSON (config, vocabularies, feature map, text and salary settings) and
NPZ (the encoded catalogs, their ids, the users' recent history, the jobs' windows and last window of positives,
the TF-IDF weights), written and read back through ``convfm.features.base``; nothing is unpickled."""
from __future__ import annotations

from pathlib import Path
from typing import Self

import numpy as np

from convfm.data.liveness import JobWindows
from convfm.errors import ArtifactError
from convfm.features.base import check_table, read_artifact, table_arrays, table_from_arrays, write_artifact
from convfm.features.context import UserHistory
from convfm.features.fields import FeatureMap, Vocabulary
from convfm.features.text import TFIDF_TOKEN_PATTERN, SkillMatcher, TextEncoder


class JobArtifact:
    """``save``/``load`` for ``JobFeatureExtractor`` (its base class): the fitted state that encoding needs."""

    def save(self, path: str | Path) -> Path:
        """Write ``extractor.json``/``.npz`` into a directory, or ``<stem>.json``/``.npz`` for a file path."""
        meta = {
            "kind": self.kind, "config": self.get_config(),
            "vocabularies": {name: v.values for name, v in self.vocabs.items()},
            "text_columns": list(self._text_columns), "salary": self._salary,
            "text": None if self._text is None else {"width": self._text.width, "token_pattern": TFIDF_TOKEN_PATTERN},
            "feature_map": self.feature_map.to_dict(),
            "expiry": self._recency is not None and self._recency.expiry,
            "extra_stats": self._extra.stats,
        }
        arrays = {**table_arrays(self.job_catalog, "job_catalog"), **table_arrays(self.user_catalog, "user_catalog"),
                  "job_ids": np.array(self.job_ids, dtype=str), "user_ids": np.array(self.user_ids, dtype=str)}
        if self._history is not None:
            arrays.update(self.history.latest(self.history_length).arrays("history"))
        if self._recency is not None:
            arrays.update({"job_posted": self._recency.posted, "job_expires": self._recency.expires})
        if self.popularity is not None:  # the last window of positives: what serving after the data's end counts
            rows, times = self.popularity.recent(self.popularity.end)
            arrays.update({"popularity.rows": rows, "popularity.times": times})
        if self._text is not None:
            arrays.update(self._text.arrays("text"))
        return write_artifact(path, meta, arrays)

    @classmethod
    def load(cls, path: str | Path) -> Self:
        """Rebuild from ``save``'s files (a directory or the same file path); ArtifactError when unusable."""
        return cls.from_artifact(*read_artifact(path, kind=cls.kind))

    @classmethod
    def from_artifact(cls, meta: dict, arrays: dict[str, np.ndarray], source: Path) -> Self:
        try:
            self = cls(**meta["config"])
            self.vocabs = {name: Vocabulary(values) for name, values in meta["vocabularies"].items()}
            self._text_columns = tuple(meta["text_columns"])
            self._extra.stats = {name: [float(v) for v in pair] for name, pair in meta.get("extra_stats", {}).items()}
            salary = meta["salary"]
            if salary is not None:
                salary = {key: [float(salary[key][0]), float(salary[key][1])] for key in ("mean", "std")}
            self._salary = salary
            if meta["text"] is not None:
                if meta["text"]["token_pattern"] != TFIDF_TOKEN_PATTERN:
                    raise ArtifactError(f"{source}: saved with another TF-IDF token pattern")
                self._text = TextEncoder.from_arrays(arrays, "text")
            self._feature_map = FeatureMap.from_dict(meta["feature_map"], source=str(source))
            unscaled = [f.name for f in self._feature_map.fields if f.kind == "dense" and f.name in
                        self._extra.by_field and f.name not in self._extra.stats]
            if unscaled:
                raise ArtifactError(f"{source}: no statistics for number field(s) {unscaled}")
            names = {f.name for f in self._feature_map.fields}
            job = [self._spec(n) for n in self._field_names("job") if n in names]
            windows = None
            if "job_posted" in arrays:
                windows = JobWindows(np.zeros(len(arrays["job_posted"]) - 1), arrays["job_posted"][1:],
                                     arrays["job_expires"][1:])
            self._set_context(job, windows, bool(meta["expiry"]))
            if self._history is not None:
                self.history = UserHistory.from_arrays(arrays, "history")
            if self.popularity is not None:
                self.popularity.set(arrays["popularity.rows"], arrays["popularity.times"])
            expected = ([self._spec(n) for n in self._field_names("user") if n in names] + self._history_fields() + job
                        + self._recency_fields())
            if self._feature_map != FeatureMap(tuple(expected)):
                raise ArtifactError(f"{source}: feature map disagrees with the saved vocabularies/config")
            if "skill" in self.vocabs and self.skills_from_text \
                    and (self._text_columns or self._extra.text_columns["users"]):
                self._matcher = SkillMatcher(self.vocabs["skill"].values)
            self.job_catalog = table_from_arrays(arrays, "job_catalog")
            self.user_catalog = table_from_arrays(arrays, "user_catalog")
            check_table(self.job_catalog, self._static_fields("job"), "job_catalog")
            check_table(self.user_catalog, self._static_fields("user"), "user_catalog")
            self.job_ids, self.user_ids = arrays["job_ids"].tolist(), arrays["user_ids"].tolist()
            if (len(self.job_ids), len(self.user_ids)) != (len(self.job_catalog), len(self.user_catalog)):
                raise ArtifactError(f"{source}: catalog ids and rows disagree")
        except ArtifactError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise ArtifactError(f"{source}: invalid extractor ({type(exc).__name__}: {exc})") from None
        self._index_catalogs()
        return self
