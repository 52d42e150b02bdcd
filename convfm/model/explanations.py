"""Why a ranker ranked a job for a user: the user x job field pairs with the largest FM interactions, the values
the two share, and the user's most similar past job. Computed only when a request asks (``explain: true``).

A field whose value is missing for this user or job, or that is constant over the catalog, is never credited:
it cannot tell one pair from another.
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np
import torch
from torch import nn

from convfm.features.context import is_history_field
from convfm.features.fields import UNK, EncodedTable, FieldSpec, field_columns

if TYPE_CHECKING:
    from convfm.model.ranking import CatalogRanker


class Explainer:
    """Explanations of ``ranker``'s scores, reading its model, extractor and catalog. Its view of the catalog
    (which job fields are constant) is cached: ``CatalogRanker.put_jobs`` drops the explainer."""

    def __init__(self, ranker: "CatalogRanker") -> None:
        self.ranker = ranker

    def explain(self, user: EncodedTable, job_rows: Sequence[int], top: int = 3,
                history_rows: Sequence[int] = ()) -> list[dict[str, Any]]:
        """Per job: the user x job field pairs with the largest FM interaction <e_i, e_j> (at most ``top``),
        the shared values (skills, location, ...) of the user's fields and the job's that share a vocabulary,
        ``skill_match``: the skill-match term's part of the logit when the two share a skill (else None),
        ``history_match``: the history-match terms' part when the job shares a skill, company or location with the
        user's recent jobs (else None), ``profile_match``: the profile-match terms' part when the job is in the
        user's location or at their experience level (else None), and
        ``similar_to``: of the user's past jobs (catalog ``history_rows``), the one whose summed job-side
        embeddings are closest in cosine, or None. ``user`` is one row.

        Only informative fields are credited (no pair left: no interactions). A field whose value is missing
        for this user or job says nothing about the pair (``_present``): no value or an unknown one (PAD/UNK:
        a missing or unseen category, an id outside the vocabulary, no posting date), a list without a known
        value (no skills, no history), a dense value equal to the side's encoding of nothing (no salary, no
        text, the activity of a user without history). Nor is a job field with one value over the whole
        catalog: it cannot tell this job from another."""
        rows = np.asarray(job_rows, dtype=np.int64)
        if not len(rows):
            return []
        jobs = self.ranker.job_table(rows)
        with torch.inference_mode():
            e_user = self.ranker.split.group(*self.ranker.side_batch(user, "user"), left=True)[0]  # (1, Fu, D)
            e_jobs = self.ranker.split.group(*self.ranker.side_batch(jobs, "job"), left=False)[0]  # (m, Fj, D)
            pairs = self.ranker.model.fm.pairs(e_user, e_jobs).flatten(1).cpu().numpy()  # (m, Fu*Fj)
            similar = self._similar(e_jobs, np.asarray(history_rows, dtype=np.int64))
            constant = self.constant_job_fields()  # (Fj,)
            skill_terms, history_terms, profile_terms = self._pair_terms(user, rows, constant)  # (m,) each, or None
        usable = self._informative(user, jobs, constant).reshape(len(rows), -1)  # (m, Fu*Fj)
        names_u = [f.name for f in self.ranker.user_map.fields]
        names_j = [f.name for f in self.ranker.job_map.fields]
        user_values = self._known_values(user, 0, "user")
        vocabs, out = self.ranker.extractor.vocabs, []
        for m in range(len(rows)):
            candidates = np.flatnonzero(usable[m])
            order = candidates[np.argsort(-pairs[m, candidates], kind="stable")[:top]]
            chosen = [i for i in order if pairs[m, i] > 0] or list(order[:1])
            interactions = [{"user_field": names_u[i // self.ranker.fj], "job_field": names_j[i % self.ranker.fj],
                             "value": float(pairs[m, i])} for i in chosen]
            job_values = self._known_values(jobs, m, "job")
            shared = {vocab: [vocabs[vocab].decode(v) for v in ids if v in job_values.get(vocab, ())]
                      for vocab, ids in user_values.items()}
            skills = shared.pop("skill", [])
            out.append({"interactions": interactions, "matching_skills": skills,
                        "skill_match": float(skill_terms[m]) if skill_terms is not None and skills else None,
                        "history_match": _nonzero(history_terms, m), "profile_match": _nonzero(profile_terms, m),
                        "matching": {vocab: v for vocab, v in shared.items() if v}, "similar_to": similar[m]})
        return out

    def _pair_terms(self, user: EncodedTable, rows: np.ndarray,
                    constant: np.ndarray) -> tuple[Optional[np.ndarray], ...]:
        """The skill-, history- and profile-match terms of the logit (``ModelConfig.skill_match``,
        ``history_match``, ``profile_match``) of one user against catalog ``rows`` (m,) -> (m,) each, None for a
        term the model lacks; pairs whose job field is ``constant`` over the catalog (Fj,) left out (they tell no
        job from another)."""
        model = self.ranker.model
        if not model.pair_matches():
            return None, None, None
        lists = self.ranker._side(user, "user").lists  # every pair's (1, L)
        fixed = {f.name for f, c in zip(self.ranker.job_map.fields, constant) if c}
        out = []
        for term in (model.skill_match, model.history_match, model.profile_match):
            keep = lambda match, pair, term=term: match is term and pair.job not in fixed  # noqa: E731
            out.append(None if term is None else
                       self.ranker.pair_terms(lists, torch.as_tensor(rows), keep=keep)[0].cpu().numpy())
        return tuple(out)

    def _informative(self, user: EncodedTable, jobs: EncodedTable, constant: np.ndarray) -> np.ndarray:
        """(m, Fu, Fj) bool: pairs of a field present for the user and one present for each of the m ``jobs``
        that varies over the catalog (not ``constant`` (Fj,); see ``explain``)."""
        (user_columns, empty_user), (job_columns, empty_job) = self._layout["user"], self._layout["job"]
        user_ok = _present(user, self.ranker.user_map.fields, user_columns, empty_user)  # (1, Fu)
        job_ok = _present(jobs, self.ranker.job_map.fields, job_columns, empty_job) & ~constant
        return user_ok[:, :, None] & job_ok[:, None, :]

    @functools.cached_property
    def _layout(self) -> dict[str, tuple[dict[str, tuple[str, int | slice]], EncodedTable]]:
        """Per side: where each field sits in its tables, and how the side encodes nothing (one row: the
        unknown user without history; the unknown job, catalog row 0)."""
        extractor = self.ranker.extractor
        empty_user = extractor.user_side(extractor.user_catalog.take([0]), np.array([""], dtype=object))
        return {"user": (field_columns(self.ranker.user_map.fields), empty_user),
                "job": (field_columns(self.ranker.job_map.fields), self.ranker.job_table(np.array([0])))}

    @functools.cached_property
    def _constant_static(self) -> np.ndarray:
        """(Fs,) bool per static job field (the first Fs, those of the ranker's ``jobs``): one value over rows
        1..N-1. Cached with the explainer, which ``put_jobs`` drops."""
        ranker = self.ranker
        recency_fields = 0 if ranker.recency is None else ranker.recency.table.cat.shape[1]
        fields = ranker.job_map.fields[: ranker.fj - recency_fields]
        catalog = EncodedTable(ranker.jobs.cat[1:], ranker.jobs.multi[1:], ranker.jobs.dense[1:])  # views, no copy
        return np.array([(v == v[:1]).all() for v in _per_field(catalog, fields, self._layout["job"][0])],
                        dtype=bool)

    def constant_job_fields(self) -> np.ndarray:
        """(Fj,) bool: job fields with one encoded value over the whole catalog (row 0, the unknown job, aside).
        Static fields are checked once per explainer (per catalog); recency fields (the last ones, categorical)
        at the current time, over the few bucket combinations the jobs are in (marking them costs ~N writes, no
        sort)."""
        if self.ranker.recency is None:
            return self._constant_static
        used = np.zeros(len(self.ranker.recency.table), dtype=bool)
        used[self.ranker.buckets[1:]] = True
        recency = self.ranker.recency.table.cat[used]  # (combinations in use, Fr)
        return np.concatenate([self._constant_static, (recency == recency[:1]).all(0)])

    @functools.cached_property
    def _compared(self) -> dict[str, list[tuple[str, int, str]]]:
        """Per side: (kind, column, vocabulary) of the fields whose values explanations compare: categories and
        lists in a vocabulary the extractor holds, ids and history aside; for jobs, only fields that vary over
        the catalog (one value everywhere is no reason for this job)."""
        vocabs, out = self.ranker.extractor.vocabs, {}
        for side, fmap in (("user", self.ranker.user_map), ("job", self.ranker.job_map)):
            keep = np.ones(len(fmap.fields), dtype=bool)
            if side == "job":
                keep[: len(self._constant_static)] = ~self._constant_static  # recency: not in vocabs anyway
            columns = self._layout[side][0]
            out[side] = [(*columns[f.name], f.vocab) for f, kept in zip(fmap.fields, keep)
                         if kept and f.kind != "dense" and f.vocab not in ("user", "job") and f.vocab in vocabs
                         and not is_history_field(f.name)]
        return out

    def _known_values(self, table: EncodedTable, row: int, side: str) -> dict[str, list[int]]:
        """Known value ids (above UNK) of one encoded row of ``side`` in its compared fields, per vocabulary, in
        first-seen order."""
        out: dict[str, list[int]] = {}
        for kind, column, vocab in self._compared[side]:
            ids = table.cat[row, column : column + 1] if kind == "categorical" else table.multi[row, column]
            out.setdefault(vocab, []).extend(ids[ids > UNK].tolist())
        return {vocab: list(dict.fromkeys(ids)) for vocab, ids in out.items()}

    def _similar(self, e_jobs: torch.Tensor, history_rows: np.ndarray) -> list[Optional[dict[str, Any]]]:
        """Per job of e_jobs (m, Fj, D): the history job (catalog row > 0) most similar to it, or None."""
        history_rows = history_rows[history_rows > 0]
        if not len(history_rows):
            return [None] * len(e_jobs)
        past = self.ranker.side_batch(self.ranker.job_table(history_rows), "job")
        e_past = self.ranker.split.group(*past, left=False)[0]  # (h, Fj, D)
        cosine = nn.functional.normalize(e_jobs.sum(1), dim=1) @ nn.functional.normalize(e_past.sum(1), dim=1).T
        best = cosine.argmax(1).cpu().numpy()  # (m,)
        return [{"job_id": self.ranker.extractor.job_ids[int(history_rows[b])], "similarity": float(cosine[m, b])}
                for m, b in enumerate(best)]


def _nonzero(terms: Optional[np.ndarray], row: int) -> Optional[float]:
    """``terms[row]`` as a float, or None without terms or where it is 0 (nothing shared)."""
    return None if terms is None or terms[row] == 0 else float(terms[row])


def _per_field(table: EncodedTable, fields: Sequence[FieldSpec],
               columns: dict[str, tuple[str, int | slice]]) -> list[np.ndarray]:
    """Each of ``fields``' encoded values in ``table`` (laid out by ``columns``, from ``field_columns``):
    (n, 1) categorical, (n, L) multi, (n, width) dense."""
    groups = table.arrays()
    out = []
    for field in fields:
        kind, column = columns[field.name]
        values = groups[{"categorical": "cat", "multi": "multi", "dense": "dense"}[kind]][:, column]
        out.append(values[:, None] if kind == "categorical" else values)
    return out


def _present(table: EncodedTable, fields: Sequence[FieldSpec], columns: dict[str, tuple[str, int | slice]],
             empty: EncodedTable) -> np.ndarray:
    """(n, F) bool: the field holds a value in that row of ``table``. Categories and lists need a known value
    (above UNK); a dense field needs a value other than ``empty``'s (the side's encoding of nothing, one row)."""
    out = []
    for field, values, nothing in zip(fields, _per_field(table, fields, columns), _per_field(empty, fields, columns)):
        out.append((values != nothing).any(1) if field.kind == "dense" else (values > UNK).any(1))
    return np.stack(out, axis=1) if out else np.zeros((len(table), 0), dtype=bool)
