"""Column cleaning, skill matching in free text, and TF-IDF + SVD text embeddings.

Everything here is deterministic and rebuilt exactly from plain arrays (no fitted sklearn object is kept),
so a saved extractor transforms bit-for-bit like the one that was fitted. sklearn is imported inside the
methods that use it: it costs ~2 s per process, and every Ray Train controller and worker imports this module
(through ``convfm``) without fitting or transforming any text.
"""
from __future__ import annotations

import html
import re
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import pandas as pd

# sklearn's default word pattern; recorded in extractor.json so a change of default cannot go unnoticed.
TFIDF_TOKEN_PATTERN = r"(?u)\b\w\w+\b"
# Skill tokens keep '+' and '#' ("c++", "c#"); any other non-word character separates tokens, so
# "node.js", "node js" and "Node-JS" are the same skill and matches are always whole words.
_SKILL_TOKEN = re.compile(r"[\w+#]+")


def column_strings(df: Optional[pd.DataFrame], column: str) -> np.ndarray:
    """``df[column]`` as an object array of stripped str; a missing column or value is ``""``.

    Ids go through here too, so ``12`` and ``"12"`` are the same id.
    """
    if df is None or column not in df.columns:
        return np.full(0 if df is None else len(df), "", dtype=object)
    series = df[column]
    if pd.api.types.is_float_dtype(series) and np.all(np.mod(series.dropna(), 1) == 0):
        series = series.astype("Int64")  # ids that went through a NaN-holding float column: 12.0 -> "12"
    return series.astype("string").fillna("").str.strip().to_numpy(dtype=object)


def clean_value(value: str) -> str:
    """Category/skill normal form: lower case, single spaces, no surrounding whitespace."""
    return " ".join(value.lower().split())


def category_values(df: Optional[pd.DataFrame], column: str) -> list[str]:
    return [clean_value(v) for v in column_strings(df, column)]


def split_lists(values: Iterable[str], separator: str = ";", lower: bool = True) -> list[list[str]]:
    """``"Python; SQL;;"`` -> ``["python", "sql"]``: split, clean, drop empties and repeats (order kept)."""
    clean = clean_value if lower else str.strip
    return [list(dict.fromkeys(t for t in map(clean, v.split(separator)) if t)) for v in values]


_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>]{0,200})?/?>")  # <p>, <li class="x">, </ul>, <br/>; not "<3"
_ENTITY = re.compile(r"&(?:#\d{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")  # &amp; &#39; &nbsp;


def plain_text(text: str) -> str:
    """Job text as a reader sees it: HTML tags dropped and entities decoded (job boards export descriptions as
    HTML: ``nbsp``, ``li`` and ``amp`` would be words of every job); text without them is left as it is."""
    if "<" not in text and "&" not in text:
        return text
    return _ENTITY.sub(lambda m: html.unescape(m.group(0)), _TAG.sub(" ", text))


def joined_text(df: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    """The given text columns joined with a space per row (missing columns/values are empty), as plain text."""
    parts = [column_strings(df, c) for c in columns]
    if not parts:
        return [""] * len(df)
    return [plain_text(" ".join(row)) for row in zip(*parts)]


class SkillMatcher:
    """Finds known skills in free text by token n-gram lookup (whole words, case-insensitive).

    A skill is the sequence of its tokens, so "machine learning" matches "Machine-Learning" and
    "machine\\nlearning". Cost is O(tokens x distinct skill lengths) per text, independent of vocabulary size.
    """

    def __init__(self, skills: Iterable[str]) -> None:
        self._skills: dict[str, str] = {}  # token key -> canonical skill
        for skill in skills:
            key = " ".join(_SKILL_TOKEN.findall(skill.lower()))
            if key:
                self._skills.setdefault(key, skill)
        keys = [k.split(" ") for k in self._skills]
        self._starts = {k[0] for k in keys if len(k) > 1}
        self._lengths = sorted({len(k) for k in keys if len(k) > 1})

    def find(self, text: str) -> list[str]:
        """Known skills in ``text``, in order of first appearance."""
        tokens = _SKILL_TOKEN.findall(text.lower())
        skills = self._skills
        hits = [(i, skills[t]) for i, t in enumerate(tokens) if t in skills]
        for i, token in enumerate(tokens):
            if token in self._starts:
                for n in self._lengths:
                    skill = skills.get(" ".join(tokens[i : i + n]))
                    if skill is not None:
                        hits.append((i, skill))
        hits.sort(key=lambda hit: hit[0])
        return list(dict.fromkeys(skill for _, skill in hits))

    def find_all(self, texts: Iterable[str]) -> list[list[str]]:
        if not self._skills:
            return [[] for _ in texts]
        return [self.find(t) for t in texts]


class TextEncoder:
    """TF-IDF (l2-normalised, sklearn's defaults) projected by truncated SVD -> dense (N, width) float32.

    Held as three arrays (terms, idf, components) so the saved encoder is exactly the fitted one.
    """

    def __init__(self, terms: Sequence[str], idf: np.ndarray, components: np.ndarray) -> None:
        self.terms = np.asarray(terms, dtype=str)
        self.idf = np.asarray(idf, dtype=np.float64)
        self.components = np.asarray(components, dtype=np.float64)  # (width, terms)
        if self.idf.shape != (len(self.terms),) or self.components.shape[1:] != (len(self.terms),):
            raise ValueError(
                f"text encoder arrays disagree: {len(self.terms)} terms, idf {self.idf.shape}, "
                f"components {self.components.shape}"
            )
        self._counter: Any = None  # a CountVectorizer over ``terms``, built on the first transform

    @property
    def width(self) -> int:
        return self.components.shape[0]

    @classmethod
    def fit(cls, texts: Sequence[str], width: int, max_features: int, seed: int) -> Optional["TextEncoder"]:
        """Fit on ``texts``; ``None`` when the corpus has fewer than two terms (nothing to project).

        The width is ``min(width, documents, terms)``: a small corpus gets fewer components.
        """
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer

        vectorizer = TfidfVectorizer(max_features=max_features, token_pattern=TFIDF_TOKEN_PATTERN, dtype=np.float64)
        try:
            tfidf = vectorizer.fit_transform(texts)
        except ValueError:  # empty vocabulary: no text has a single term
            return None
        width = min(width, tfidf.shape[0], tfidf.shape[1])
        if width < 1 or tfidf.shape[1] < 2:
            return None
        svd = TruncatedSVD(n_components=width, random_state=seed).fit(tfidf)
        return cls(vectorizer.get_feature_names_out(), vectorizer.idf_, svd.components_)

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        """(N,) texts -> (N, width) float32. Unknown words are ignored; an empty text maps to zeros."""
        if len(texts) == 0:
            return np.zeros((0, self.width), dtype=np.float32)
        from sklearn.feature_extraction.text import CountVectorizer
        from sklearn.preprocessing import normalize

        if self._counter is None:
            self._counter = CountVectorizer(
                vocabulary={t: i for i, t in enumerate(self.terms.tolist())},
                token_pattern=TFIDF_TOKEN_PATTERN, lowercase=True, dtype=np.float64,
            )
        counts = self._counter.transform(texts).tocsr()
        counts.data *= self.idf[counts.indices]
        tfidf = normalize(counts, norm="l2", copy=False)
        return np.asarray(tfidf @ self.components.T, dtype=np.float32)

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}.terms": self.terms, f"{prefix}.idf": self.idf, f"{prefix}.components": self.components}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str) -> "TextEncoder":
        return cls(arrays[f"{prefix}.terms"], arrays[f"{prefix}.idf"], arrays[f"{prefix}.components"])
