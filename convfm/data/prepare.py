"""From a DataConfig to fitted extractor + train/valid/test ExampleSets (the same for every trainer)."""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Mapping, Optional

import numpy as np
import pandas as pd

from convfm.data.batching import ExampleSet
from convfm.config import DataConfig
from convfm.errors import ConfigError
from convfm.data.liveness import JobWindows, job_windows
from convfm.data.splitting import split_periods
from convfm.data.loading import (
    build_examples, interacted_pairs, load_job_market, require_extra_columns, split_examples,
)
from convfm.data.labelled import load_table
from convfm.features.extra_fields import check_warm_start_columns
from convfm.features.jobs import JobFeatureExtractor, TableFeatureExtractor
from convfm.evaluation.metrics import PopularityBaseline
from convfm.store.serving_data import display_jobs
from convfm.data.synth import load_oracle, load_truth

log = logging.getLogger(__name__)
SPLITS = ("train", "valid", "test")


@dataclasses.dataclass
class PreparedData:
    """Fitted extractor, ExampleSets per split, and the frames that ranking evaluation needs."""

    config: DataConfig
    extractor: Any
    sets: dict[str, ExampleSet]
    frames: dict[str, pd.DataFrame]
    catalog: Optional[np.ndarray]  # job ids rankable for evaluation (kind "jobs")
    truth: Optional[pd.DataFrame]  # (user_id, job_id, p_positive) of synthetic data
    # (user_id, job_id) pairs that ranking must not offer: kind "jobs", the interacted pairs of any split
    # (``interacted_pairs``, never sampled negatives), those of one split's users after for_split(); None means
    # "derive from frames" (tables: all their rows).
    seen: Optional[pd.DataFrame] = None
    popularity: Optional[PopularityBaseline] = None  # fitted on the training split
    # The catalog's display columns (kind "jobs"; serving.json's titles), kept so exporting a model need not
    # re-read the market. None for table data and in for_split() copies (workers never need it).
    jobs: Optional[pd.DataFrame] = None
    # Live windows of ``catalog``'s jobs, in its order (kind "jobs"); kept by for_split(). None when the
    # interaction timestamps are plain numbers or row order: there is no calendar to check liveness against.
    windows: Optional[JobWindows] = None
    # Split "global_time": where valid and test start (T1, T2), int64 order keys (microseconds since the epoch
    # with a calendar); kept by for_split().
    split_starts: Optional[tuple[int, int]] = None
    # The live catalog applied to the jobs table (``JobMarket.live_catalog``); None without one.
    live_catalog: Optional[dict[str, Any]] = None
    # The event log read as interactions (``JobMarket.event_log``: path, last segment, segment count); None without.
    event_log: Optional[dict[str, Any]] = None
    # Synthetic data's exact oracle: ``score(user_ids (U,), job_ids (U, W), times (U,) int64 us) -> (U, W)``
    # true probabilities (``convfm.data.synth.load_oracle``); None for real data. Kept by for_split().
    oracle: Optional[Any] = None
    # (job_id, timestamp) of every split's positives, for recent popularity at an event's time. Set by
    # for_split() (its copy keeps one frame); None means "derive from frames".
    positives: Optional[pd.DataFrame] = None
    # Evaluation results that do not depend on the model (baselines, the oracle), by split and settings, so that
    # validating every epoch computes them once (``convfm.evaluation.report``). Never copied or compared.
    memo: dict[tuple, Any] = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)

    def summary(self) -> dict[str, int]:
        return {name: len(s) for name, s in self.sets.items()}

    @property
    def split_periods(self) -> Optional[dict[str, Any]]:
        """Split "global_time": its periods (``convfm.data.splitting.split_periods``); None for the other splits."""
        if self.split_starts is None:
            return None
        counts = self.summary()
        return split_periods(self.split_starts, [counts.get(s, 0) for s in ("train", "valid", "test")],
                             calendar=self.windows is not None)

    def for_split(self, split: str) -> "PreparedData":
        """Only what evaluating ``split`` needs: its examples and frame, the popularity baseline fitted on
        train, the seen pairs of that split's users and their ground truth. This is what a Ray worker that
        validates receives instead of the whole dataset."""
        frame = self.frames[split]
        seen = popularity = truth = positives = None
        if "user_id" in frame and "job_id" in frame:
            users = frame["user_id"].unique()
            pairs = [self.seen] if self.seen is not None else [f[["user_id", "job_id"]] for f in self.frames.values()]
            seen = pd.concat([f[f["user_id"].isin(users)] for f in pairs], ignore_index=True).drop_duplicates()
            popularity = self.popularity
            if popularity is None:
                popularity = PopularityBaseline().fit(self.frames["train"])
            positives = all_positives(self)
            if self.truth is not None:
                truth = self.truth.merge(frame[["user_id", "job_id"]].drop_duplicates(), on=["user_id", "job_id"])
        return PreparedData(self.config, self.extractor, {split: self.sets[split]}, {split: frame},
                            catalog=self.catalog, truth=truth, seen=seen, popularity=popularity,
                            windows=self.windows, split_starts=self.split_starts, oracle=self.oracle,
                            positives=positives)


def all_positives(data: PreparedData) -> pd.DataFrame:
    """(job_id, timestamp) of the positives (label > 0) of every split: ``data.positives`` when set."""
    if data.positives is not None:
        return data.positives
    frames = [f.loc[f["label"] > 0, ["job_id", "timestamp"]] for f in data.frames.values()]
    return pd.concat(frames, ignore_index=True)


def data_reads(data: Any) -> dict[str, Any]:
    """What preparing ``data`` read beside ``config.events`` (the event log's record and the live catalog's), for a
    run's record: a resume passes it back (``first_reads``) to read the same."""
    return {"event_log": getattr(data, "event_log", None), "live_catalog": getattr(data, "live_catalog", None)}


def first_reads(record: Mapping[str, Any], config: DataConfig, what: str) -> Optional[dict[str, Any]]:
    """``read_before`` for a resumed ``what`` (a run, a search) whose ``record`` (run.json, experiment.json) kept
    ``data_reads`` at its first start; None (read everything) without ``config.events``, or, with a warning, for a
    record written before they were kept."""
    if not config.events:
        return None
    if "event_log" not in record:
        log.warning("%s was started before its reads of the event log were recorded: the resume reads the whole log "
                    "and live catalog again, so its model's mark may name events its checkpoints never saw", what)
        return None
    return {key: record.get(key) for key in ("event_log", "live_catalog")}


def prepare_data(
    config: DataConfig, extractor: Any = None, extractor_options: Optional[dict[str, Any]] = None,
    base: Any = None, read_before: Optional[Mapping[str, Any]] = None,
) -> PreparedData:
    """Load, label, split and encode. Without ``extractor`` one is fitted on the training split only;
    with one (a saved model's), it is used as is, so evaluation encodes exactly as training did. ``base``, a
    published model's extractor (a warm start), fits the new one with its config, starting from its
    vocabularies and statistics (``JobFeatureExtractor.fit``). ``read_before``: a resumed run's record of the
    event log and live catalog its first start read (``load_job_market``)."""
    options = dict(extractor_options or {})
    if base is not None and (base.kind != config.kind or options):
        raise ConfigError(f"warm start: the published extractor is of kind {base.kind!r} with its own options; "
                          f"got data of kind {config.kind!r} and extractor options {sorted(options)}")
    if config.kind == "table":
        if extractor is not None:
            _check_table_fields(config, extractor)
        splits = load_table(config)
        frames = {name: getattr(splits, name) for name in SPLITS}
        if extractor is None and base is not None:
            extractor = TableFeatureExtractor(**base.get_config()).fit(frames["train"], base)
        elif extractor is None:
            extractor = TableFeatureExtractor(
                categorical=list(config.categorical), multi_valued=list(config.multi_valued),
                numeric=list(config.numeric), separator=config.separator, **options,
            ).fit(frames["train"])
        sets = {name: extractor.example_set(frame) for name, frame in frames.items()}
        return PreparedData(config, extractor, sets, frames, catalog=None, truth=None)

    market = load_job_market(config, read_before=read_before)
    fitted = extractor if extractor is not None else base
    if base is not None:
        check_warm_start_columns(config.extra_columns, base.extra_columns)
    if fitted is not None:
        require_extra_columns(market, getattr(fitted, "extra_columns", {}), "the model")
    splits = split_examples(build_examples(market, config), config, calendar=market.calendar)
    popularity = None
    if splits.train_only is not None:  # the extra negatives were never shown: the baseline does not count them
        popularity = PopularityBaseline().fit(splits.train[~splits.train_only])
    frames = {name: getattr(splits, name) for name in SPLITS}
    windows = job_windows(market.jobs, config.job_lifetime_days) if market.calendar else None
    if extractor is None:
        options = {"history_length": config.history_length, "recency": config.recency,
                   "popularity_days": config.popularity_days, "extra_columns": config.extra_columns, **options}
        options = options if base is None else base.get_config()
        extractor = JobFeatureExtractor(**options).fit(market.jobs, frames["train"], market.users, windows, base)
    # History and popularity features read every split's positives before each example's time (never its own
    # label).
    extractor.set_positives(
        pd.concat([f.loc[f["label"] > 0, ["user_id", "job_id", "timestamp"]] for f in frames.values()]))
    sets = {name: extractor.example_set(frame) for name, frame in frames.items()}
    log.info("prepared %s", {name: len(s) for name, s in sets.items()})
    catalog = market.jobs["job_id"].to_numpy()
    jobs = display_jobs(market.jobs)
    if windows is None:
        log.info("%s: interaction timestamps are numbers or row order, not date/times: job liveness is not "
                 "checked (windows=None)", market.source.get("interactions", config.path))
    oracle, truth = _ground_truth(config.path, catalog, frames)
    return PreparedData(config, extractor, sets, frames, catalog=catalog, truth=truth, jobs=jobs, windows=windows,
                        split_starts=splits.starts, oracle=oracle, seen=interacted_pairs(market, config),
                        popularity=popularity,
                        live_catalog=None if market.live_catalog is None else dict(market.live_catalog),
                        event_log=None if market.event_log is None else dict(market.event_log))


def _ground_truth(path: str, catalog: np.ndarray, frames: dict[str, pd.DataFrame]) -> tuple[Optional[Any], Any]:
    """A synthetic market's (oracle, truth.csv) when the oracle knows every catalog job and every user of the
    examples, else (None, None) with a warning: a market grown past what was generated (the service's event log,
    jobs posted live) has no ground truth for the new ones, and an oracle column over part of it would mislead.
    Real data: (None, None)."""
    oracle = load_oracle(path)
    if oracle is None:
        return None, load_truth(path)
    users = pd.unique(pd.concat([f["user_id"] for f in frames.values()]))
    new_jobs = int((~pd.Index(catalog.astype(str)).isin(oracle.job_ids.astype(str))).sum())
    new_users = int((~pd.Index(users.astype(str)).isin(oracle.user_ids.astype(str))).sum())
    if new_jobs or new_users:
        log.warning("%s/oracle.npz: no oracle column: the data holds %d job(s) and %d user(s) the synthetic market "
                    "did not generate (an event log's, jobs posted live), which it has no truth for", path,
                    new_jobs, new_users)
        return None, None
    return oracle, load_truth(path)


def _check_table_fields(config: DataConfig, extractor: Any) -> None:
    """A table read for a fitted extractor must list the fields it was fitted on, each of its kind: an omitted
    field would be encoded as missing in every row, and the model would score nonsense without a word."""
    if getattr(extractor, "kind", None) != "table":
        raise ConfigError(f"the model's extractor is of kind {getattr(extractor, 'kind', None)!r}; the data is a "
                          "table")
    for kind, fitted in (("categorical", extractor.categorical), ("multi_valued", extractor.multi_valued),
                         ("numeric", extractor.numeric)):
        listed = list(getattr(config, kind))
        if sorted(listed) != sorted(fitted):
            missing, extra = sorted(set(fitted) - set(listed)), sorted(set(listed) - set(fitted))
            raise ConfigError(f"{kind}: the model was trained on {kind} fields {list(fitted)}; the table spec lists "
                              f"{listed} (missing {missing}, not in the model {extra})", field=kind)
