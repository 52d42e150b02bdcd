"""The live catalog: jobs added, changed and expired while a model serves, kept as numbered immutable deltas.

``<live_store>/catalog/000001.json``, ``000002.json``, ...: catalog version N is deltas 1..N applied in order,
on top of the serving model's own catalog (``convfm.store.registry.live_location`` says where the live store
is). A delta upserts jobs (every content field, an optional posting time and expiry) and expires ids. It is
written once and never changed: locally through a temp file hard-linked into place, on an object store with one
PUT (``storage.write_new_text``), so a reader never sees half a delta and a replica that lags reads the deltas
it misses.

One writer: the service's single ``Api`` replica. It serialises its writes with a lock and reads the latest
number before each one, so concurrent ``POST /jobs`` calls never lose an update. A second writer (another
process) that raced it for a number fails with ``CatalogConflict`` instead of overwriting: atomically on a
local disk, by a check and a read-back on object stores (see ``write_new_text`` for what that cannot catch).

Readers: every service replica (``serve.live_catalog``) and every batch run (``convfm.model.batch_ranking``,
pinned to the version at the run's start) apply the deltas through ``LiveJobs.apply``, one way for both. No
Ray; the model's parts are passed in.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import re
import threading
import uuid
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

import numpy as np
import pandas as pd

from convfm.config import DataConfig
from convfm.data.liveness import ALWAYS, NEVER, lifetime_ends, to_micros
from convfm.data.schema import JOBS
from convfm.errors import ArtifactError, StorageError
from convfm.features.context import now_micros
from convfm.features.extra_fields import slug
from convfm.jsonfile import parse_json
from convfm.store import storage
from convfm.store.serving_data import SALARY_COLUMNS

log = logging.getLogger(__name__)

CATALOG = "catalog"  # <live_store>/catalog/
FORMAT_VERSION = 2  # 2: an upsert's posted_at may be null (not given); version 1 deltas read the same
READ_VERSIONS = (1, 2)
_DELTA = re.compile(r"^(\d{6,})\.json$")
# What a job carries besides its id and times: the jobs table's content columns (convfm.data.schema.JOBS).
CONTENT_FIELDS = ("title", "description", "skills", "location", "company", "salary_min", "salary_max", "job_type",
                  "experience_level")


class CatalogConflict(StorageError):
    """Another writer wrote the catalog version this one was about to write; nothing of this change was kept."""


@dataclasses.dataclass(frozen=True)
class Delta:
    """One accepted change. ``upsert``: job records (``job_id``, ``CONTENT_FIELDS``, ``posted_at`` and
    ``expires_at`` as int64 microseconds or None: no posting time given (the job keeps the one it has, a new one
    is posted at ``written_at``), no expiry given (an update of a job's posting keeps its expiry, else
    ``job_lifetime_days`` after the posting: ``UpsertedJobs.dated_at``, ``LiveJobs.apply``); ``extra``, when
    given: the values of extra columns by name, ``DataConfig.extra_columns``); ``expire``: job id ->
    microseconds."""

    version: int
    written_at: int
    upsert: tuple[dict[str, Any], ...] = ()
    expire: Mapping[str, int] = dataclasses.field(default_factory=dict)

    def to_text(self, writer: str) -> str:
        return json.dumps({"format_version": FORMAT_VERSION, "version": self.version, "writer": writer,
                           "written_at": self.written_at, "upsert": list(self.upsert),
                           "expire": dict(self.expire)}, indent=1) + "\n"

    @classmethod
    def from_text(cls, text: str, source: str | Path) -> "Delta":
        """Parse one delta file; ArtifactError naming the file and the field when it is not one."""
        doc = parse_json(text, source, "live catalog delta", ArtifactError)
        if doc.get("format_version") not in READ_VERSIONS:
            raise ArtifactError(f"{source}: format_version {doc.get('format_version')!r}, this convfm reads "
                                f"{', '.join(map(str, READ_VERSIONS))}")
        upsert, expire = doc.get("upsert"), doc.get("expire")
        if not isinstance(doc.get("version"), int) or not isinstance(doc.get("written_at"), int):
            raise ArtifactError(f"{source}: version and written_at must be integers")
        if not isinstance(upsert, list) or not all(isinstance(j, dict) and isinstance(j.get("job_id"), str)
                                                   and isinstance(j.get("posted_at"), (int, type(None)))
                                                   for j in upsert):
            raise ArtifactError(f"{source}: upsert must be a list of jobs with a job_id and a posted_at (an "
                                "integer, or null)")
        if not all(isinstance(j.get("extra", {}), dict) for j in upsert):
            raise ArtifactError(f"{source}: a job's extra must map column names to values")
        if not isinstance(expire, dict) or not all(isinstance(t, int) for t in expire.values()):
            raise ArtifactError(f"{source}: expire must map job ids to times (integers)")
        return cls(doc["version"], doc["written_at"], tuple(upsert), expire)


class UpsertedJobs(NamedTuple):
    """A delta's upserts as ``JobFeatureExtractor.put_jobs`` takes them."""

    frame: pd.DataFrame  # job_id and CONTENT_FIELDS (skills ";"-joined, salaries numeric, missing text "")
    posted: np.ndarray  # (n,) int64 microseconds (where not dated: a placeholder)
    expires: np.ndarray  # (n,) int64 microseconds, NEVER for none
    dated: np.ndarray  # (n,) bool: whether the upsert gave its posting time

    def dated_at(self, held: Mapping[str, tuple[int, int]], written_at: int) -> "UpsertedJobs":
        """These jobs with the times their upserts left out. An upsert of a job the catalog holds (``held``: job
        id -> its (posting, expiry) in microseconds, ``ALWAYS``/``NEVER`` for none) without a posting time, or
        with the one it has, updates that posting: it keeps the posting time and, unless it gives one, the expiry
        (a daily re-sync of a board's file leaves a job closed by ``expire`` closed). A new job without a posting
        time is posted at ``written_at`` (has none when it closed before then). ``NEVER`` is left where an expiry
        is still to come from the job's lifetime."""
        posted, expires = self.posted.copy(), self.expires.copy()
        for i, job_id in enumerate(self.frame["job_id"]):
            if job_id in held and (not self.dated[i] or posted[i] == held[job_id][0]):
                posted[i] = held[job_id][0]
                expires[i] = held[job_id][1] if expires[i] == NEVER else expires[i]
            elif not self.dated[i]:
                posted[i] = written_at if expires[i] > written_at else ALWAYS
        return self._replace(posted=posted, expires=expires, dated=np.ones(len(posted), dtype=bool))


def upserted_jobs(upsert: Sequence[Mapping[str, Any]], version: Optional[int] = None) -> UpsertedJobs:
    """Delta job records -> the jobs table the extractor encodes (the shape of the training jobs file; extra
    values one column per name, case and punctuation aside, named as first written, lists ``;``-joined, ""
    where a job has none). Jobs with a blank id, written before the service refused them, are left out (row 0
    is no job's); of an id upserted twice (a hand-written delta: the service refuses it) the last is read, by
    serving and training alike (ids as the service writes them: text, outer spaces cut)."""
    kept = [j for j in upsert if str(j["job_id"]).strip()]
    if len(kept) < len(upsert):
        log.warning("live catalog v%s: %d job(s) with a blank id left out", version, len(upsert) - len(kept))
    last = {str(j["job_id"]).strip(): i for i, j in enumerate(kept)}
    if len(last) < len(kept):
        log.warning("live catalog v%s: %d repeated upsert(s) of a job id: the last of each read", version,
                    len(kept) - len(last))
    upsert = [kept[i] for i in sorted(last.values())]
    names: dict[str, str] = {}  # slug -> the column, as the first job named it
    for job in upsert:
        for name in job.get("extra", {}):
            names.setdefault(slug(name), name)
    frame = pd.DataFrame({"job_id": [str(j["job_id"]).strip() for j in upsert], **{
        f: [";".join(j.get(f) or ()) if f == "skills" else j.get(f) for j in upsert] for f in CONTENT_FIELDS}})
    for key, column in names.items():
        values = [next((v for n, v in j.get("extra", {}).items() if slug(n) == key), None) for j in upsert]
        frame[column] = [";".join(v) if isinstance(v, list) else (v or "") for v in values]
    for column in SALARY_COLUMNS:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    text = [c for c in CONTENT_FIELDS if c not in SALARY_COLUMNS]
    frame[text] = frame[text].fillna("")
    dated = np.array([j.get("posted_at") is not None for j in upsert], dtype=bool)
    posted = np.array([j["posted_at"] if d else ALWAYS for j, d in zip(upsert, dated)], dtype=np.int64)
    expires = np.array([NEVER if j.get("expires_at") is None else j["expires_at"] for j in upsert], dtype=np.int64)
    return UpsertedJobs(frame, posted, expires, dated)


def jobs_after(jobs: pd.DataFrame, deltas: Sequence[Delta],
               lifetime_days: Optional[float] = None) -> tuple[pd.DataFrame, dict[str, int]]:
    """A loaded jobs table (canonical columns, ``posted_at``/``expires_at`` datetimes) as ``deltas`` left it,
    in order: an upsert replaces the job of its id or is appended, an expiry sets ``expires_at`` unless the job
    closed sooner (its own, or ``lifetime_days`` after its posting: as served). Training on the service's event
    log reads it, so the jobs posted live carry their fields, not the unknown job's. Returns the table and counts
    of distinct jobs: added (not in ``jobs``), replaced (in ``jobs``, upserted again) and expired (once or more)."""
    table = jobs.set_index("job_id", drop=False)
    before = set(table.index)
    upserted: set[str] = set()
    expired: set[str] = set()
    for delta in deltas:
        new = upserted_jobs(delta.upsert, delta.version)
        held = [j for j in new.frame["job_id"] if j in table.index]
        times = [to_micros(table.loc[held, c]) if c in table else np.full(len(held), ALWAYS)
                 for c in ("posted_at", "expires_at")]
        new = new.dated_at({j: (p, NEVER if e == ALWAYS else e) for j, p, e in zip(held, *times)},
                           delta.written_at)
        if len(new.frame):
            columns = {slug(c): c for c in table.columns if c not in JOBS.names}  # extra keys, case aside
            new = new._replace(frame=new.frame.rename(columns=lambda c: c if c in JOBS.names
                                                      else columns.get(slug(c), c)))
            frame = new.frame.assign(posted_at=_datetimes(new.posted), expires_at=_datetimes(new.expires))
            frame = frame.set_index("job_id", drop=False).reindex(columns=table.columns)
            known = frame.index.isin(table.index)
            upserted.update(frame.index)
            table = pd.concat([table.drop(index=frame.index[known]), frame])
        hit = [j for j in delta.expire if j in table.index]
        if hit and "expires_at" in table.columns:  # closed then, unless it closed sooner (as served)
            given = to_micros(table.loc[hit, "expires_at"])
            posted = to_micros(table.loc[hit, "posted_at"]) if "posted_at" in table else np.full(len(hit), ALWAYS)
            ends = np.where(given == ALWAYS, lifetime_ends(posted, lifetime_days), given)
            closes = np.minimum(ends, np.array([delta.expire[j] for j in hit], dtype=np.int64))
            table.loc[hit, "expires_at"] = _datetimes(closes).to_numpy()
            expired.update(hit)
    counts = {"added": len(upserted - before), "replaced": len(upserted & before), "expired": len(expired)}
    return table.reset_index(drop=True), counts


def _datetimes(micros: np.ndarray) -> pd.Series:
    """int64 microseconds -> naive UTC datetimes; ``NEVER`` (no expiry) and ``ALWAYS`` (no posting time) -> NaT."""
    values = np.asarray(micros, dtype=np.int64)
    return pd.Series(np.where((values == NEVER) | (values == ALWAYS), np.datetime64("NaT"),
                              values.astype("datetime64[us]")))


def grown(values: np.ndarray, n: int, fill: Any) -> np.ndarray:
    """``values`` (M,) extended to n rows with ``fill`` (a copy: readers may hold the old array)."""
    return np.concatenate([values, np.full(n - len(values), fill, dtype=values.dtype)])


class LiveJobs:
    """The live catalog's state over one model's catalog (a service's Scorer, a batch run's ranker): applied
    ``version``, ``posted``/``expires`` (N,) int64 microseconds per catalog row (``ALWAYS``/``NEVER`` unless the
    live catalog set them) and ``lock`` (apply vs. reads). A job posted without ``expires_at`` closes
    ``lifetime_days`` after its posting, as the model's training data read such a job (its data config's
    ``job_lifetime_days``; None: never)."""

    def __init__(self, n_jobs: int, lifetime_days: Optional[float] = None) -> None:
        self.version, self.lifetime_days = 0, lifetime_days
        self.posted = np.full(n_jobs, ALWAYS, dtype=np.int64)
        self.last_posted = ALWAYS  # at least the latest of ``posted``: no row is scheduled once the clock passes it
        self.expires = np.full(n_jobs, NEVER, dtype=np.int64)
        self.lock = threading.RLock()

    @classmethod
    def of_model(cls, n_jobs: int, data_config: Mapping[str, Any]) -> "LiveJobs":
        """Over a model's catalog of ``n_jobs`` rows, live jobs closing as its ``data_config`` (its saved
        ``data_config.json``; empty: the defaults) read the jobs it trained on."""
        return cls(n_jobs, data_config.get("job_lifetime_days", DataConfig().job_lifetime_days))

    def open_at(self, mask: Optional[np.ndarray], now: Optional[int] = None) -> Optional[np.ndarray]:
        """``mask`` (N,) bool (None: every row) and-ed with "posted and not expired at ``now``"; None when every
        row is. A job upserted with a ``posted_at`` ahead (the service takes up to a day) opens then: it was
        recommended from its upsert on."""
        now = now_micros() if now is None else now
        if (self.expires == NEVER).all() and self.last_posted <= now:  # not a second pass over the rows
            return mask
        alive = (self.expires > now) & (self.posted <= now)
        return alive if mask is None else mask & alive

    def _times(self, recency: Any, row: int) -> tuple[int, int]:
        """A catalog row's (posting, expiry) as served: the calendar's (the model's data, or the live catalog's
        upserts), closed sooner by an ``expire``."""
        if recency is None:
            return int(self.posted[row]), int(self.expires[row])
        return int(recency.posted[row]), min(int(recency.expires[row]), int(self.expires[row]))

    def apply(self, delta: Delta, extractor: Any,
              put_rows: Callable[[np.ndarray], None]) -> tuple[np.ndarray, pd.DataFrame]:
        """One delta, upserts first: their rows written into ``extractor``'s catalog (``put_jobs``: an id it
        holds is replaced, a new one appended), ``put_rows(rows)`` computing the model's side of them (ranker,
        index), their times recorded; then the expirations of ids the catalog holds. Returns the upserted rows
        (n,) and their jobs frame, for what the caller keeps per row (display columns, popularity)."""
        jobs = upserted_jobs(delta.upsert, delta.version)
        recency = getattr(extractor, "recency_encoder", None)
        rows = extractor.job_rows
        held = {j: self._times(recency, rows[j]) for j in jobs.frame["job_id"] if j in rows}
        jobs = jobs.dated_at(held, delta.written_at)
        jobs = jobs._replace(expires=np.where(jobs.expires == NEVER, lifetime_ends(jobs.posted, self.lifetime_days),
                                              jobs.expires))
        with self.lock:
            rows = np.zeros(0, dtype=np.int64)
            if len(jobs.frame):
                rows = extractor.put_jobs(jobs.frame, jobs.posted, jobs.expires)
                put_rows(rows)
                n = len(extractor.job_ids)
                self.posted, self.expires = grown(self.posted, n, ALWAYS), grown(self.expires, n, NEVER)
                self.posted[rows], self.expires[rows] = jobs.posted, jobs.expires
                self.last_posted = max(self.last_posted, int(jobs.posted.max()))
            known = extractor.job_rows
            expired = [(known[j], t) for j, t in delta.expire.items() if j in known]
            if expired:
                self.expires[[r for r, _ in expired]] = [t for _, t in expired]
            if len(expired) < len(delta.expire):
                log.info("live catalog v%d expires %d id(s) this catalog does not hold", delta.version,
                         len(delta.expire) - len(expired))
            self.version = delta.version
        return rows, jobs.frame


def delta_name(version: int) -> str:
    return f"{version:06d}.json"


class CatalogStore:
    """The deltas under ``<live_store>/catalog/`` (a local path or a storage URI): read by every replica,
    appended to by the one writer (see the module docstring)."""

    def __init__(self, live_store: str | Path) -> None:
        self.root = storage.join(live_store, CATALOG)
        self.writer = uuid.uuid4().hex  # recorded in each delta: who wrote it (and the read-back's proof)
        self._lock = threading.Lock()

    def latest(self) -> int:
        """The newest catalog version on the store (0: no delta yet)."""
        numbers = [int(m[1]) for m in map(_DELTA.match, storage.list_files(self.root)) if m]
        return max(numbers, default=0)

    def read(self, after: int = 0, upto: Optional[int] = None) -> list[Delta]:
        """Deltas ``after + 1 .. upto`` (default: the latest), in order; ArtifactError for a missing or
        invalid one (a replica must never skip a change)."""
        upto = self.latest() if upto is None else upto
        out = []
        for version in range(after + 1, upto + 1):
            path = storage.join(self.root, delta_name(version))
            try:
                text = storage.read_text(path)
            except FileNotFoundError:
                raise ArtifactError(f"{path}: live catalog version {version} is missing") from None
            delta = Delta.from_text(text, path)
            if delta.version != version:
                raise ArtifactError(f"{path}: holds version {delta.version}, expected {version}")
            out.append(delta)
        return out

    def append(self, upsert: Sequence[dict[str, Any]] = (), expire: Sequence[str] = (),
               now: Optional[int] = None) -> Delta:
        """Write the next version: ``upsert`` job records (``posted_at`` None: the job's own, or now for a
        new job: ``UpsertedJobs.dated_at``), ``expire`` ids (expired now). Returns the delta written;
        CatalogConflict when another writer took its number."""
        now = now_micros() if now is None else int(now)
        if any(not str(job["job_id"]).strip() for job in upsert) or any(not str(j).strip() for j in expire):
            raise ValueError("a live catalog job id must not be blank")
        jobs = tuple({**job, "posted_at": None if job.get("posted_at") is None else int(job["posted_at"])}
                     for job in upsert)
        try:  # read as every replica will apply it: a delta they cannot read is never written
            upserted_jobs(jobs)
        except (ValueError, TypeError) as exc:  # UnicodeEncodeError (a lone surrogate) is a ValueError
            raise ValueError(f"these jobs cannot be read back as a catalog: {type(exc).__name__}: {exc}") from None
        with self._lock:
            delta = Delta(self.latest() + 1, now, jobs, {str(job_id): now for job_id in expire})
            path = storage.join(self.root, delta_name(delta.version))
            try:
                storage.write_new_text(path, delta.to_text(self.writer))
            except FileExistsError:
                raise CatalogConflict(f"{path}: another writer wrote live catalog version {delta.version} "
                                      "first; this change was not kept (run one writer: one Api replica)") from None
        return delta
