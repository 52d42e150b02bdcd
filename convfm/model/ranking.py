"""Fast full-catalog ranking: everything that does not depend on the user is computed once per model load.

Notation as in ``convfm.model.network``: U users, N jobs, F = Fu + Fj fields (user fields first).

``ConvFM.split(Fu)`` cuts the logit exactly into a user side, a job side and a cheap combination (each model
part says how it splits: linear and FM terms per side plus <sum_u, sum_j>, conv positions that see one side,
the first MLP layer per input block). The job sides of the whole catalog are computed here once; a request
costs one user-side pass plus, per job, the ~kernel - 1 conv positions around the cut and the MLP from the
conv columns on, instead of the whole network.
"""
from __future__ import annotations

import functools
from typing import Any, Iterable, Iterator, Optional

import numpy as np
import torch

from convfm.data.batching import FieldBatch, join_batches, table_tensors, used_list_length
from convfm.features.base import with_room
from convfm.features.context import now_micros
from convfm.features.fields import PAD, EncodedTable, FeatureMap
from convfm.model import job_clock
from convfm.model.explanations import Explainer
from convfm.model.catalog_match import CatalogMatchTerms
from convfm.model.network import ConvFM, Side
from convfm.model.open_rows import RowView
from convfm.model.sides import leaves, map_side, zip_map
from convfm.model.top_k import best_first

# Floats per intermediate (U, chunk, width) tensor of several users: ~1 MB, so a combine step stays in cache while
# it reuses each job row for every user. Measured with the default model on 10k jobs (2 cores): 0.59-0.82 us per
# pair at 1 << 18 against 1.11-1.15 at 1 << 22 for 50-400 users; 1 << 17 and 1 << 19 were slower.
ELEMENT_BUDGET = 1 << 18
# One user's scan (its side broadcast over the jobs' rows in 2-D) reuses no job row: with the default model (64
# floats per job piece) a step of 16,384 jobs (2^20 elements) keeps the 100k scan as fast as 4,096 (17.1 against
# 17.7 ms with 2 threads, 32.1 both with 1; 65,536: 17.9 and 38.1) and scans 10k jobs in one step (2.79 against
# 2.89 ms, 1 thread; 1.54 against 1.70, 2 threads; without the pair-match terms, medians of 60 users, 2026-12-06).
ONE_USER_ELEMENTS = 1 << 20
JOBS_PER_PASS = 8192  # job rows per side pass (catalog precompute, time moves)
MOVE_ELEMENTS = 1 << 23  # a pass plans moves while their clock states (two (N,) arrays each) stay within this
# Job-side changes ``changed_since`` can replay (older readers rescore everything): the last CHANGES_KEPT, and no
# more rows in all than the catalog has (past that a full scan costs less than replaying them).
CHANGES_KEPT = 256


def _zeros_side(feature_map: FeatureMap, rows: int, device: torch.device) -> FieldBatch:
    """Inputs for one side with every field padding/zero: (rows, Fc), (rows, Fm, 1), (rows, W); lists of
    length 1, which ``join_batches`` pads to the other side's."""
    multi = feature_map.of_kind("multi")
    return FieldBatch(
        torch.full((rows, len(feature_map.of_kind("categorical"))), PAD, dtype=torch.int64, device=device),
        torch.full((rows, len(multi), 1), PAD, dtype=torch.int64, device=device),
        torch.zeros((rows, feature_map.dense_width), dtype=torch.float32, device=device),
    )


class CatalogRanker(CatalogMatchTerms):
    """Scores users against a whole job catalog with the job side precomputed (see the module docstring).

    ``model`` must be a ConvFM in eval mode (it is switched to eval); ``extractor`` a fitted
    JobFeatureExtractor. ``jobs`` overrides the catalog with every job-side field encoded (default
    ``extractor.job_catalog`` with its recency fields; row 0 is the unknown job and is never recommended). A
    model whose parts cannot be split exactly is refused here (ValueError from ``ConvFM.split``).

    Recency fields make the job side depend on time, but only through day buckets: the precomputed sides are
    those at ``time`` (default now), ``at(t)`` recomputes just the jobs whose bucket differs at t, and scoring
    users at their own times corrects the few (user, job) pairs whose bucket differs from the precomputed one.
    Every score stays the model's exact logit at the user's time.

    ``version`` counts the changes to the precomputed job sides (time moves, ``put_jobs``); ``changed_since``
    names the rows a change touched, so scores kept from an earlier version are brought up to date exactly by
    rescoring those rows alone (``convfm.model.score_cache``).
    """

    def __init__(self, model: ConvFM, extractor: Any, jobs: Optional[EncodedTable] = None,
                 time: Optional[int] = None) -> None:
        self.model, self.extractor = model.eval(), extractor
        fmap = model.feature_map
        self.user_map, self.job_map = fmap.of_side("user"), fmap.of_side("job")
        self.fu, self.fj = len(self.user_map.fields), len(self.job_map.fields)
        if self.fu + self.fj != len(fmap.fields):
            raise ValueError("CatalogRanker needs a feature map of user and job fields only")
        self.device = next(model.parameters()).device
        self.split = model.split(self.fu)
        self.recency = getattr(extractor, "recency_encoder", None) if jobs is None else None
        self.jobs = extractor.job_catalog if jobs is None else jobs
        self.n_jobs = len(self.jobs)
        self._time = now_micros() if time is None else int(time)  # the clock's, with recency fields
        self._clock = None if self.recency is None else job_clock.read_all(self.recency, self.n_jobs, self._time)
        with torch.inference_mode():
            self.job_side = self._job_sides(np.arange(self.n_jobs))
        self.job_width = max(t.shape[1:].numel() for t in leaves(self.job_side))
        self._own_jobs = jobs is not None
        self._room = self.job_side  # job_side is a view of these buffers (put_jobs grows them)
        # _changes: (version, rows it changed, whether their lists changed too: put_jobs), the last CHANGES_KEPT
        self.version, self._changes = 0, []
        self._view: Optional[RowView] = None  # the rows last scanned with ``kept`` (the jobs open now)

    @property
    def time(self) -> int:
        """The time the precomputed job sides are at."""
        return self._time if self._clock is None else self._clock.time

    @property
    def buckets(self) -> Optional[np.ndarray]:
        """(N,) every job's recency-table row at ``time``; None without recency fields."""
        return None if self._clock is None else self._clock.buckets

    # ---------------------------------------------------------------------------------------- changes
    def _changed(self, rows: np.ndarray, lists: bool = False) -> None:
        self.version += 1
        changes = (self._changes + [(self.version, np.asarray(rows, dtype=np.int64), lists)])[-CHANGES_KEPT:]
        total = sum(len(r) for _, r, _ in changes)
        while len(changes) > 1 and total > self.n_jobs:
            total -= len(changes.pop(0)[1])
        self._changes = changes

    def changed_since(self, version: int, lists: bool = False) -> Optional[np.ndarray]:
        """Catalog rows whose job side changed after ``version`` (sorted, unique; rows appended since are among
        them), or None when that is too long ago to replay; with ``lists``, only the rows whose list fields may
        have changed too (``put_jobs``; time moving changes ages and popularity, not lists)."""
        if version == self.version:
            return np.zeros(0, dtype=np.int64)
        if not self._changes or self._changes[0][0] > version + 1:
            return None
        return np.unique(np.concatenate([np.zeros(0, dtype=np.int64)] + [
            rows for v, rows, relisted in self._changes if v > version and (relisted or not lists)]))

    # ------------------------------------------------------------------------------------------ time
    def job_table(self, rows: np.ndarray, buckets: Optional[np.ndarray] = None) -> EncodedTable:
        """Every job-side field of catalog ``rows``, recency in ``buckets`` (default: the precomputed ones)."""
        if self.recency is None:
            return self.jobs.take(rows)
        buckets = self.buckets[rows] if buckets is None else buckets
        return self.jobs.take(rows).join(self.recency.table.take(buckets))

    def at(self, time: int) -> np.ndarray:
        """Move the precomputed job sides to ``time`` -> the rows recomputed: only jobs whose recency bucket
        changed, found without a pass over the catalog (``convfm.model.job_clock``)."""
        if self.recency is None:
            return np.zeros(0, dtype=np.int64)
        changed, state = job_clock.step(self.recency, self._clock, int(time))
        if len(changed):  # job sides to recompute, as for a batch of times
            return next(self._advance(np.array([int(time)], dtype=np.int64), planned=(changed, state)))
        self._clock = state  # most moves: the clock's alone
        return changed

    def _job_sides(self, rows: np.ndarray, buckets: Optional[np.ndarray] = None) -> Side:
        """Job sides (n, ...) of catalog ``rows`` (recency in ``buckets``), in passes of JOBS_PER_PASS rows."""
        return zip_map(torch.cat, [
            self._side(self.job_table(rows[a : a + JOBS_PER_PASS],
                                      None if buckets is None else buckets[a : a + JOBS_PER_PASS]), "job")
            for a in range(0, len(rows), JOBS_PER_PASS)])

    def _write_rows(self, rows: np.ndarray, side: Side) -> None:
        """Overwrite the precomputed job sides of catalog ``rows`` (n,) with ``side`` (n, ...)."""
        index = torch.as_tensor(rows, device=self.device)
        for old, new in zip(leaves(self.job_side), leaves(side)):
            old[index] = new

    def _advance(self, times: np.ndarray, planned: Optional[tuple[np.ndarray, Any]] = None) -> Iterator[np.ndarray]:
        """Move the precomputed job sides to each of ``times`` (ascending) in turn, yielding the rows recomputed
        at each, as ``at`` does; the jobs whose bucket changes over a run of times (up to JOBS_PER_PASS of them)
        are computed in one pass, not one small pass per time (the fixed cost of a pass dominates a few rows).
        ``planned``: the first time's ``job_clock.step``, already taken."""
        position, clock = 0, self._clock
        while position < len(times):
            moves, pending = [], 0  # moves: (changed rows, clock state after)
            while position < len(times) and (pending < JOBS_PER_PASS and len(moves) * self.n_jobs < MOVE_ELEMENTS
                                              or not moves):
                if planned is None:
                    changed, clock = job_clock.step(self.recency, clock, int(times[position]))
                else:
                    (changed, clock), planned = planned, None
                moves.append((changed, clock))
                pending, position = pending + len(changed), position + 1
            with torch.inference_mode():
                sides = self._job_sides(np.concatenate([m[0] for m in moves]),
                                        np.concatenate([m[1].buckets[m[0]] for m in moves])) if pending else None
            offset = 0
            for changed, state in moves:
                if len(changed):
                    with torch.inference_mode():
                        self._write_rows(changed, map_side(lambda t: t[offset : offset + len(changed)], sides))
                    self._changed(changed)
                offset += len(changed)
                self._clock = state
                yield changed

    def put_jobs(self, rows: np.ndarray) -> None:
        """Take the extractor's catalog rows ``rows`` (n,) written by ``JobFeatureExtractor.put_jobs``
        (replaced in place or appended) and compute the job sides of those rows only, at the precomputed time;
        the side buffers double when full. Scores stay the model's exact logits over the grown catalog."""
        if self._own_jobs:
            raise ValueError("put_jobs: this ranker scores a catalog given at construction, not the extractor's")
        rows = np.asarray(rows, dtype=np.int64)
        self.jobs, n = self.extractor.job_catalog, len(self.extractor.job_catalog)
        if self.recency is not None:
            self._clock = job_clock.put_rows(self.recency, self._clock, rows, n)
        with torch.inference_mode():
            side = self._side(self.job_table(rows), "job")
            self._room = zip_map(lambda tensors: with_room(tensors[0], n), [self._room])
            self.n_jobs, self.job_side = n, map_side(lambda t: t[:n], self._room)
            self._write_rows(rows, side)
        self._changed(rows, lists=True)
        self.__dict__.pop("explainer", None)  # its view of the catalog (constant fields): recomputed when next used
        indexes = self.__dict__.pop("_match_index", None)  # the pair-match terms' inverted indexes: rows now stale
        if indexes is not None:
            stale = torch.unique(torch.cat([indexes[1], torch.as_tensor(rows, device=self.device)]))
            if len(stale) <= self.n_jobs // 8:  # past that, rebuilt when next used
                self._match_index = (indexes[0], stale)

    # ------------------------------------------------------------------------------------- side passes
    def side_batch(self, table: EncodedTable, side: str) -> FieldBatch:
        """Model inputs of ``table``'s rows with the other side's fields padding."""
        cat, multi, dense = table_tensors(table)
        # Lists cut to the longest list in these rows (as training batches are): the padding past it would cost
        # embedding lookups and changes nothing (``used_list_length``).
        own = FieldBatch(cat, multi[:, :, :used_list_length(table.multi)], dense).to(self.device)
        other = _zeros_side(self.job_map if side == "user" else self.user_map, len(table), self.device)
        return join_batches([own, other] if side == "user" else [other, own])

    def _side(self, table: EncodedTable, side: str) -> Side:
        """Everything of ``side`` ("user": once per request; "job": once per catalog) for ``table``'s rows. Job
        sides keep no lists: the pair-match terms read the catalog's (``add_match_terms``)."""
        own = self.split.side(*self.side_batch(table, side), left=side == "user")
        return own if side == "user" else own._replace(lists=None)

    def _chunk(self, users: int) -> int:
        """Jobs per combine step: the widest per-job piece (H1, C or D floats) times U within the budget
        (``ONE_USER_ELEMENTS`` for one user)."""
        budget = ONE_USER_ELEMENTS if users == 1 else ELEMENT_BUDGET
        return max(1, budget // max(1, users * self.job_width))

    def score_all(self, users: EncodedTable, job_rows: Optional[np.ndarray] = None,
                  times: Optional[np.ndarray] = None, kept: bool = False) -> torch.Tensor:
        """Logits (U, N) of every user against every catalog job (or against ``job_rows``), at the precomputed
        time or, with recency fields, at each user's ``times`` (U,) int64 order keys. ``kept``: ``job_rows``
        are asked for again and again (the jobs open now): their job sides are scanned from a contiguous copy
        kept between calls (``convfm.model.open_rows``). Users are scored in time order, the precomputed job
        sides moved forward to each distinct time (``_advance``): only the jobs whose bucket changes between
        consecutive times are recomputed, in a few large passes. (Scoring a group of users at its first time and
        correcting each user's changed pairs cost 7x more on 300 events spread over weeks.)"""
        if self.recency is None or times is None:
            return self._score_all(users, job_rows, kept=kept)
        times = np.asarray(times, dtype=np.int64)
        order = np.argsort(times, kind="stable")
        distinct, starts = np.unique(times[order], return_index=True)
        if not len(distinct):
            return self._score_all(users, job_rows, kept=kept)
        with torch.inference_mode():
            user_side = self._side(users, "user")  # one pass: a user's side does not depend on the jobs' time
        out: Optional[torch.Tensor] = None
        for group, _ in zip(np.split(order, starts[1:]), self._advance(distinct)):
            index = torch.as_tensor(group, device=self.device)
            scores = self._score_all(map_side(lambda t: t[index], user_side), job_rows, kept=kept)
            if out is None:
                out = scores.new_empty((len(times), scores.shape[1]))
            out[index.to(out.device)] = scores
        return out

    def _score_all(self, users: EncodedTable | Side, job_rows: Optional[np.ndarray],
                   pair_terms: bool = True, kept: bool = False) -> torch.Tensor:
        """Logits (U, N or len(job_rows)) of ``users`` (a table, or their user sides) at the precomputed time;
        without the pair-match terms when not ``pair_terms`` (the retrieval fit); ``kept`` as in ``score_all``."""
        with torch.inference_mode():
            side = self._side(users, "user") if isinstance(users, EncodedTable) else users
            # One user's side (1, ...) broadcasts over the jobs' (n, ...) rows as it is; several users' (U, 1, ...)
            # over (1, n, ...). (One user as (1, 1, ...) against (1, n, ...) made the 10k scan ~1 ms slower.)
            n_users = len(side.linear)
            one = n_users == 1
            u = side._replace(lists=None) if one else map_side(lambda t: t[:, None], side._replace(lists=None))
            rows = None if job_rows is None else torch.as_tensor(job_rows, dtype=torch.int64, device=self.device)
            source, gather, view, total = self.job_side, rows, None, self.n_jobs if rows is None else len(rows)
            if kept and rows is not None:  # the view's rows are contiguous: no gather
                view, wanted = self._kept_view(np.asarray(job_rows, dtype=np.int64))
                source, gather, total = view.job_side, None, len(view.rows)
            step, out = self._chunk(n_users), []
            for start in range(0, total, step):
                index = slice(start, start + step) if gather is None else gather[start : start + step]
                jobs = map_side(lambda t: t[index] if one else t[index][None], source)
                scores = self.split.combine(u, jobs)  # (n,) for one user, else (U, n)
                out.append(scores.view(n_users, scores.shape[-1]))
            logits = torch.cat(out, dim=1) if out else torch.zeros((n_users, 0), device=self.device)
            if view is not None:  # the view's rows, then those asked for
                logits = self.add_match_terms(logits, side, view=view) if pair_terms and total else logits
                return logits[:, wanted]
            return self.add_match_terms(logits, side, rows) if pair_terms and total else logits

    def _kept_view(self, rows: np.ndarray) -> tuple[RowView, np.ndarray | slice]:
        """The view kept since the last call, brought up to date and holding catalog ``rows`` (else one gathered
        anew), and where those rows are in it."""
        view = self._view
        wanted = view.cover(self, rows) if view is not None and view.catch_up(self) else None
        if wanted is None:
            view, wanted = RowView(self, rows), slice(None)
            self._view = view
        return view, wanted

    def score_pairs(self, users: EncodedTable, user_index: np.ndarray, job_rows: np.ndarray) -> torch.Tensor:
        """Logits (P,) of pairs (users row ``user_index[p]``, catalog row ``job_rows[p]``): one pass for all."""
        with torch.inference_mode():
            u = self._side(users, "user")
            ui = torch.as_tensor(user_index, dtype=torch.int64, device=self.device)
            ji = torch.as_tensor(job_rows, dtype=torch.int64, device=self.device)
            logits = self.split.combine(map_side(lambda t: t[ui], u._replace(lists=None)),
                                        map_side(lambda t: t[ji], self.job_side))
            for (match, p), a in zip(self._match_pairs, u.lists or ()):
                logits += match.term(p, a[ui], self._job_lists(match.pairs[p].job, np.asarray(job_rows)))
            return logits

    def top_k(
        self,
        user: EncodedTable,
        k: int,
        exclude: Iterable[int] = (),
        candidate_mask: Optional[np.ndarray] = None,
        scores: Optional[torch.Tensor] = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Best ``k`` catalog rows for one user -> (rows, logits), best first. Row 0 (unknown job), rows in
        ``exclude`` and rows where ``candidate_mask`` (N,) is False are never returned. ``scores`` (N,)
        reuses logits already computed by ``score_all``."""
        logits = (self.score_all(user)[0] if scores is None else scores).clone()
        blocked = torch.zeros(self.n_jobs, dtype=torch.bool, device=logits.device)
        blocked[0] = True
        excluded = np.fromiter(exclude, dtype=np.int64)
        if len(excluded):
            blocked[torch.as_tensor(excluded, device=logits.device)] = True
        if candidate_mask is not None:
            blocked |= ~torch.as_tensor(np.asarray(candidate_mask, dtype=bool), device=logits.device)
        available = int((~blocked).sum())
        logits[blocked] = -torch.inf
        if torch.isnan(logits).any():  # ``scores`` of some rows only (a scan of the open jobs) and a wider mask
            raise ValueError("top_k: the scores given leave out rows the candidate mask allows")
        return best_first(logits, min(k, available))

    # ---------------------------------------------------------------------------------------- reference
    def full_scores(self, users: EncodedTable, job_rows: Optional[np.ndarray] = None,
                    chunk: int = 8192) -> torch.Tensor:
        """Reference: the model's own forward over every (user, job) pair -> (U, N). Slow; for tests/benchmarks."""
        rows = np.arange(self.n_jobs) if job_rows is None else np.asarray(job_rows)
        user_tensors = table_tensors(users).to(self.device)
        out = torch.empty((len(users), len(rows)), device=self.device)
        with torch.inference_mode():
            for start in range(0, len(rows), chunk):
                jobs = table_tensors(self.job_table(rows[start : start + chunk])).to(self.device)
                for i in range(len(users)):
                    user = FieldBatch(*(t[i : i + 1].expand(len(jobs.cat), *t.shape[1:]) for t in user_tensors))
                    out[i, start : start + len(jobs.cat)] = self.model(*join_batches([user, jobs]))
        return out

    @functools.cached_property
    def explainer(self) -> "Explainer":
        """Explanations of this ranker's scores (``convfm.model.explanations``); made anew after ``put_jobs``."""
        return Explainer(self)
